"""Calls that must not block: call_with_timeout, map_bounded, run_command and the one Backoff.

Time is injected where the code takes a clock; where a real timeout must pass it is a fraction of
a second, and every thread left waiting is released at the end of its test."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from colabsession._core.timeout import Backoff, call_with_timeout, map_bounded, run_command


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event that blocked calls wait on; set at the end so no thread outlives its test."""
    event = threading.Event()
    yield event
    event.set()


# call_with_timeout ---------------------------------------------------------------------------


def test_call_with_timeout_returns_the_result() -> None:
    assert call_with_timeout(lambda: 42, 5) == 42


def test_call_with_timeout_raises_the_call_s_own_error() -> None:
    def fails() -> None:
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError, match="gone"):
        call_with_timeout(fails, 5)


def test_call_with_timeout_expires_and_abandons_the_call(gate: threading.Event) -> None:
    finished = threading.Event()

    def hangs() -> None:  # a stat on a dead mount
        gate.wait(60)
        finished.set()

    with pytest.raises(TimeoutError, match=r"stat of x did not finish within 0\.05 s"):
        call_with_timeout(hangs, 0.05, what="stat of x")
    assert not finished.is_set()  # abandoned, still waiting: the caller did not
    (thread,) = [t for t in threading.enumerate() if t.name == "colabsession-stat of x"]
    assert thread.daemon  # never keeps the interpreter from exiting
    gate.set()
    thread.join(5)
    assert finished.is_set()


# map_bounded -----------------------------------------------------------------------------------


def test_map_bounded_yields_in_the_items_order_whatever_finishes_first() -> None:
    done_first = threading.Event()

    def work(item: int) -> int:
        if item == 0:
            done_first.wait(5)  # the first item finishes last
        else:
            done_first.set()
        return item * 10

    assert list(map_bounded(work, range(6), workers=3, timeout=10)) == [0, 10, 20, 30, 40, 50]


def test_map_bounded_of_nothing() -> None:
    assert list(map_bounded(len, [], workers=2, timeout=1)) == []


def test_map_bounded_starts_at_most_a_window_ahead(gate: threading.Event) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        gate.wait(10)
        return item

    results = map_bounded(work, iter(range(100)), workers=2, timeout=10, window=3)
    deadline = time.monotonic() + 10
    while len(started) < 2 and time.monotonic() < deadline:  # the two workers have begun
        time.sleep(0.001)
    gate.set()
    assert next(results) == 0
    # Taking one result submits one more: the window keeps at most 3 in hand, 4 submitted.
    with lock:
        assert len(started) <= 4
    assert list(results) == list(range(1, 100))


def test_map_bounded_raises_timeout_when_the_next_result_is_late(gate: threading.Event) -> None:
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        if item == 1:
            gate.wait(60)  # a read on a dead mount
        return item

    results = map_bounded(work, range(50), workers=1, timeout=0.05, window=2, what="copy")
    assert next(results) == 0
    with pytest.raises(TimeoutError, match=r"copy did not finish within 0\.05 s"):
        next(results)
    # The one worker is stuck on item 1 (or had not begun it): what waited is cancelled.
    assert set(started) <= {0, 1}


def test_map_bounded_passes_an_error_on_and_stops() -> None:
    def work(item: int) -> int:
        if item == 2:
            raise OSError("dropped")
        return item

    results = map_bounded(work, range(10), workers=2, timeout=5)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(OSError, match="dropped"):
        next(results)


# run_command ----------------------------------------------------------------------------------


def test_run_command_captures_the_output_and_the_status() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = run_command([sys.executable, "-c", code], timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.args == [sys.executable, "-c", code]


def test_run_command_never_uses_a_shell_and_gives_no_stdin() -> None:
    code = "import sys; print(sys.argv[1]); print(repr(sys.stdin.read()))"
    result = run_command([sys.executable, "-c", code, "$HOME; echo hi"], timeout=60)
    assert result.stdout == "$HOME; echo hi\n''\n"


def test_run_command_kills_the_child_and_its_children_on_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # A helper that starts a child of its own, which holds the output pipes, then hangs.
    script = f"sleep 120 & echo $! > {pid_file}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        run_command(["/bin/sh", "-c", script], timeout=1)
    # It returned although the grandchild held the pipes: the whole group was killed.
    if pid_file.exists():  # (else the helper was killed before it started its child)
        pid = int(pid_file.read_text())
        # Its pipes close as it exits, a moment before it is gone: wait for the end of that
        # moment (a hang detector: a grandchild that was not killed sleeps for two minutes).
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Backoff --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_each_pause_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=4, monotonic=Clock())
    assert [backoff.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures == 6


def test_backoff_with_another_factor() -> None:
    backoff = Backoff(initial=1, maximum=100, factor=3, monotonic=Clock())
    assert [backoff.failed() for _ in range(5)] == [1, 3, 9, 27, 81]


def test_backoff_is_due_once_the_pause_is_over() -> None:
    clock = Clock()
    backoff = Backoff(initial=5, maximum=60, monotonic=clock)
    assert backoff.due() and backoff.wait == 0.0  # noqa: PT018  (nothing failed yet)
    assert backoff.failed() == 5
    assert not backoff.due()
    assert backoff.wait == 5
    clock.now += 4.5
    assert not backoff.due() and backoff.wait == pytest.approx(0.5)  # noqa: PT018
    clock.now += 0.5
    assert backoff.due() and backoff.wait == 0.0  # noqa: PT018


def test_backoff_resets_on_success() -> None:
    clock = Clock()
    backoff = Backoff(initial=2, maximum=60, monotonic=clock)
    backoff.failed(), backoff.failed(), backoff.failed()
    backoff.succeeded()
    assert backoff.due() and backoff.failures == 0  # noqa: PT018
    assert backoff.failed() == 2  # from the start again


def test_backoff_drives_a_retry_loop_with_an_injected_sleep() -> None:
    """The schedule a caller sleeps through, with time injected: nothing really waits."""
    clock = Clock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    backoff = Backoff(initial=1, maximum=8, monotonic=clock)
    attempts = 0
    while True:
        if not backoff.due():
            sleep(backoff.wait)
            continue
        attempts += 1
        if attempts == 6:  # the sixth try gets through
            backoff.succeeded()
            break
        backoff.failed()
    assert slept == [1, 2, 4, 8, 8]
    assert backoff.failures == 0
