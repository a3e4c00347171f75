"""The one way colabsession tells the user something in a notebook cell's output."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)
_quiet = 0  # how many quiet() blocks are open, in any thread
_lock = threading.Lock()


def say(text: str) -> None:
    """Print ``colabsession: <text>`` at once (flushed: a cell shows it before a long wait).

    Warnings about something going wrong go to ``logging`` instead; this is for what the user
    asked for and should see: what was restored, staged or saved, and how long it took. Inside
    :func:`quiet` the text goes to the log (INFO) instead.
    """
    if _quiet:
        logger.info("colabsession: %s", text)
        return
    print(f"colabsession: {text}", flush=True)


def is_quiet() -> bool:
    """Whether a :func:`quiet` block is open: progress bars are not shown either."""
    return _quiet > 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """While it lasts, :func:`say` writes to the log and progress bars stay hidden, in every
    thread (``cs.session`` runs its parts in threads of their own and reports them once)."""
    global _quiet
    with _lock:
        _quiet += 1
    try:
        yield
    finally:
        with _lock:
            _quiet -= 1
