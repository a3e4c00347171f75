"""Calls that must not block the caller: a stat on a dead FUSE mount can hang for minutes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future

T = TypeVar("T")
U = TypeVar("U")


def call_with_timeout(func: Callable[[], T], timeout: float, *, what: str = "call") -> T:
    """Return ``func()``, or raise TimeoutError once *timeout* seconds have passed.

    *func* runs in a daemon thread. A thread cannot be interrupted, so after a timeout it is
    abandoned: it ends when its system call returns, and never keeps the interpreter from exiting.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(func())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"colabsession-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout:g} s")
    if failure:
        raise failure[0]
    return outcome[0]


def map_bounded(
    func: Callable[[T], U],
    items: Iterable[T],
    *,
    workers: int,
    timeout: float,
    window: int | None = None,
    what: str = "work",
) -> Bounded[U]:
    """``func(item)`` for each item on *workers* threads, yielded in the items' order, with at
    most *window* (default four per worker) started ahead of the one yielded, so that a slow
    consumer bounds the memory held. The first *window* start at once, before the first result
    is asked for. TimeoutError when the next result takes longer than *timeout* seconds.
    ``close()`` (or an error) cancels what has not started and waits for nothing: a thread stuck
    on a dead mount is abandoned.

    >>> list(map_bounded(len, ["a", "bb"], workers=2, timeout=5))
    [1, 2]
    """
    return Bounded(func, items, workers, timeout, window or 4 * max(1, workers), what)


class Bounded(Generic[U]):
    """The results of :func:`map_bounded`, in order."""

    def __init__(
        self,
        func: Callable[[T], U],
        items: Iterable[T],
        workers: int,
        timeout: float,
        window: int,
        what: str,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=f"colabsession-{what}")
        self._func: Callable[[Any], U] = func
        self._source = iter(items)
        self._timeout, self._what = timeout, what
        self._pending: deque[Future[U]] = deque()
        for item in itertools.islice(self._source, window):
            self._pending.append(self._pool.submit(func, item))

    def __iter__(self) -> Bounded[U]:
        return self

    def __next__(self) -> U:
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        for item in itertools.islice(self._source, 1):
            self._pending.append(self._pool.submit(self._func, item))
        try:
            return _result(future, self._timeout, self._what)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _result(future: Future[U], timeout: float, what: str) -> U:
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        return future.result(timeout)
    except FutureTimeout:
        raise TimeoutError(f"{what} did not finish within {timeout:g} s") from None


def run_command(
    argv: Sequence[str], timeout: float, *, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run *argv* (never through a shell) and capture its output; on timeout kill its whole
    process group, so a hung helper's children cannot hold the pipes open, and raise
    ``subprocess.TimeoutExpired``. *env*: the child's environment (default: this process's).

    >>> run_command(["echo", "hi"], timeout=30).stdout
    'hi\\n'
    """
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else dict(env),
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (AttributeError, ProcessLookupError, PermissionError):  # no killpg on Windows
                process.kill()
            process.communicate()
            raise
    return subprocess.CompletedProcess(list(argv), process.returncode, out, err)


class Backoff:
    """Exponential backoff shared by everything that retries: each failure doubles the pause
    (from *initial* up to *maximum*), a success resets it. *monotonic* is the clock (tests pass a
    fake).

    >>> backoff = Backoff(initial=0.5, maximum=16)
    >>> backoff.failed(), backoff.failed(), backoff.due()
    (0.5, 1.0, False)
    """

    def __init__(
        self,
        initial: float = 5.0,
        maximum: float = 600.0,
        *,
        factor: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.monotonic = monotonic
        self.pause = initial
        self.failures = 0
        self.next_at = 0.0

    def failed(self) -> float:
        """Count a failure; return the pause before the next try."""
        delay = self.pause
        self.failures += 1
        self.next_at = self.monotonic() + delay
        self.pause = min(self.pause * self.factor, self.maximum)
        return delay

    def succeeded(self) -> None:
        self.pause, self.failures, self.next_at = self.initial, 0, 0.0

    def due(self) -> bool:
        """Whether the pause after the last failure is over."""
        return self.monotonic() >= self.next_at

    @property
    def wait(self) -> float:
        """Seconds until the next try is due."""
        return max(0.0, self.next_at - self.monotonic())
