"""Calls that must not block the caller: a stat on a dead FUSE mount can hang for minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


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


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run *argv* (never through a shell) and capture its output; on timeout kill its whole
    process group, so a hung helper's children cannot hold the pipes open, and raise
    ``subprocess.TimeoutExpired``."""
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
