"""Signals as requests to save and stop at the next step boundary: SIGTERM (what Colab, Kaggle
and schedulers send before ending a runtime) while a Checkpointer is used in ``with``, and Ctrl-C
(the notebook's stop button) inside a loop that knows its step boundaries.

A KeyboardInterrupt can land anywhere in a step, between one parameter's update and the next;
a state saved then would not be any step's. So inside a loop that knows its boundaries, the
first interrupt asks the Checkpointer to save at the next boundary and stop there (as SIGTERM
does); a second one stops at once, as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

from colabsession._core.say import say


class Stoppable(Protocol):
    """What can be asked to stop at its next boundary (a Checkpointer)."""

    def request_stop(self, why: str = ...) -> None: ...


@contextlib.contextmanager
def stop_at_boundary(ckpt: Stoppable, on_hard_stop: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first SIGINT calls ``ckpt.request_stop()``; a second one calls
    *on_hard_stop* (which marks any state gathered afterwards as torn) and raises
    KeyboardInterrupt. Outside the main thread, or where signals cannot be set, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = False

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal asked
        if asked:
            on_hard_stop()
            raise KeyboardInterrupt
        asked = True
        ckpt.request_stop("interrupted (Ctrl-C)")
        say("stopping after this step, once it is saved (interrupt again to stop at once)")

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StopOnSigterm:
    """While installed, SIGTERM calls ``request_stop("SIGTERM received")``: cooperative, like
    submitit, the next ``maybe_save`` saves and asks the loop to stop. Installs only in the main
    thread (where Python allows signal handlers); :meth:`uninstall` puts back the previous one.

    >>> sigterm = StopOnSigterm(ckpt.request_stop); sigterm.install()   # doctest: +SKIP
    """

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self._request_stop = request_stop
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):  # not allowed here (some embedded interpreters)
            self._previous = None

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._request_stop("SIGTERM received")
