"""Writing saves in the background, one at a time, from staging buffers that the writer owns.

A save copies the caller's arrays into host memory (the *staging* buffers, reused from one save
to the next, so that a large state is not allocated anew each time), then writes them to disk in
a thread of its own while training goes on.

Thread safety: every method may be called from any thread. :attr:`AsyncWriter.lock` (reentrant)
is held by a save from waiting for the previous write, through staging its state, to handing the
write over; :meth:`wait` takes it too. So the buffers are refilled only once the write that read
them is over, a ``wait()`` from another thread never forgets a write still in flight, and no
checkpoint ever holds two steps' arrays.

>>> writer = AsyncWriter(background=True)
>>> with writer.lock:  # doctest: +SKIP
...     error = writer.wait()                 # the previous write is over (or its error)
...     tree, leaves = writer.stage(state)    # copied: the caller may change its arrays now
...     writer.submit(lambda: write(tree, leaves))
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from colabsession._storage.serialize import flatten


class AsyncWriter:
    """One write at a time: in a background thread with *background*, else in the caller's
    (which then writes the caller's own arrays, without copying them)."""

    def __init__(self, *, background: bool, name: str = "colabsession-ckpt") -> None:
        self.background = background
        self.lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None
        self._error: BaseException | None = None
        self._staging: list[Any] = []

    def stage(self, state: Any) -> tuple[Any, list[Any]]:
        """The tree and leaves of *state*, its arrays copied into the staging buffers (with
        *background*). Call with :attr:`lock` held, after :meth:`wait`."""
        assert self._pending is None, "stage() while a write is in flight"
        tree, leaves = flatten(state, reuse=self._staging, copy=self.background)
        if self.background:
            self._staging = leaves  # free again once this write is over: wait() comes first
        return tree, leaves

    def submit(self, job: Callable[[], None]) -> None:
        """Run *job* (the write of the state just staged): in the background, or now."""
        with self.lock:
            if self.background:
                self._pending = self._executor.submit(self._guarded, job)
            else:
                self._guarded(job)

    def wait(self) -> BaseException | None:
        """Block until the write in flight is over; return the error of the last write (once),
        or None."""
        with self.lock:
            pending = self._pending
            if pending is not None:
                pending.result()
                self._pending = None
            error, self._error = self._error, None
            return error

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    def _guarded(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            self._error = exc
