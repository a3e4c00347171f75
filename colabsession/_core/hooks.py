"""What else runs when a Checkpointer makes its final save (the session deadline is near, SIGTERM
came, or a stop was asked for): a background saver (``cs.cache.keep``) asks to hear of it, so that
what it keeps is saved then too, without the checkpoint code knowing of it. A hook must return at
once (start its work in its own thread): the final save must not wait for it.

>>> calls = []
>>> forget = at_final_save(lambda: calls.append("saved"))
>>> final_save()
>>> forget(); final_save(); calls
['saved']
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)
_hooks: list[Callable[[], object]] = []
_lock = threading.Lock()


def at_final_save(hook: Callable[[], object]) -> Callable[[], None]:
    """Call *hook* at each final save; returns the function that stops that."""
    with _lock:
        _hooks.append(hook)

    def forget() -> None:
        with _lock, contextlib.suppress(ValueError):
            _hooks.remove(hook)

    return forget


def final_save() -> None:
    """Tell every hook that a final save is being made (a hook that fails is logged)."""
    with _lock:
        hooks = list(_hooks)
    for hook in hooks:
        try:
            hook()
        except Exception as exc:  # a hook's fault must not stop the final save
            logger.warning("colabsession: a hook of the final save failed: %s", exc)
