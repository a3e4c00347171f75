"""Writing saves in the background, one at a time, from staging buffers within a memory budget.

A save copies the caller's arrays into host memory (the *staging* buffers), then writes them to
disk in a thread of its own while training goes on. The staging buffers never hold more than
the *memory budget* (by default 80% of the RAM available when the save starts, as torchsnapshot
does; ``Checkpointer(memory_budget=...)``). A state within the budget is copied whole and the
caller goes on at once; its buffers are kept for the next save (sparing the allocation and page
faults of hundreds of megabytes each time) while they stay within the budget. A larger state is
copied array by array while the writer writes the arrays before it: the caller waits only until
the writer frees room, and an array larger than the budget is written straight from the
caller's own (GPU memory copied a chunk at a time) while the caller waits. Either way every
array is copied (or written) before ``save`` returns, so a checkpoint holds one step's values,
and the buffers of a state over the budget are freed as soon as they are written.

Thread safety: every method may be called from any thread. :attr:`AsyncWriter.lock` (reentrant)
is held by a save from waiting for the previous write, through staging its state, to handing the
write over; :meth:`wait` takes it too. So the buffers are refilled only once the write that read
them is over, a ``wait()`` from another thread never forgets a write still in flight, and no
checkpoint ever holds two steps' arrays.

>>> writer = AsyncWriter(background=True, budget=512 << 20)
>>> with writer.lock:  # doctest: +SKIP
...     error = writer.wait()                 # the previous write is over (or its error)
...     tree, leaves = writer.stage(state)    # sized against the budget, not copied yet
...     writer.submit(lambda: write(tree, writer.arrays(leaves)))  # copied when this returns
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from colabsession._core.errors import CheckpointError
from colabsession._core.units import format_bytes
from colabsession._storage import frameworks as _frameworks
from colabsession._storage.serialize import flatten, host_arrays

logger = logging.getLogger(__name__)

DEFAULT_SHARE = 0.8  # of the RAM available when a save starts, as torchsnapshot's default
LARGE_SHARE = 0.5  # a save whose staging peak passes this share of the free RAM says so


def available_memory() -> int:
    """The RAM the system can still give without swapping, in bytes."""
    import psutil

    return int(psutil.virtual_memory().available)


class _Slot:
    """One array of a save: its source (the caller's), then its staged copy (or, for an array
    larger than the budget, the source itself, *live*: the caller waits until it is written)."""

    __slots__ = ("done", "leaf", "live", "nbytes", "ready", "source")

    def __init__(self, source: Any, nbytes: int) -> None:
        self.source: Any = source
        self.nbytes = nbytes
        self.leaf: Any = None
        self.ready = False
        self.live = False
        self.done = False


class AsyncWriter:
    """One write at a time: in a background thread with *background*, else in the caller's
    (which then writes the caller's own arrays, without copying them). *budget*: the most bytes
    of staging buffers, None for :data:`DEFAULT_SHARE` of the RAM available at each save;
    *_available*: a test seam, the available RAM."""

    def __init__(
        self,
        *,
        background: bool,
        budget: int | None = None,
        name: str = "colabsession-ckpt",
        _available: Callable[[], int] = available_memory,
    ) -> None:
        self.background = background
        self.budget = budget
        self.lock = threading.RLock()
        self.peak = 0
        """The most bytes the staging buffers held during the last save."""
        self._available = _available
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None
        self._error: BaseException | None = None
        self._spares: list[Any] = []  # the last save's buffers, kept while within the budget
        self._slots: list[_Slot] = []
        self._limit = 0  # the budget of the save being staged
        self._keep = False  # whether its buffers are kept for the next save
        self._cond = threading.Condition()
        self._held = 0  # bytes in staging buffers now (kept spares aside)
        self._over = False  # the write ended (or the staging failed): nobody waits for the other

    @property
    def held(self) -> int:
        """The bytes of staging buffers kept between saves (for the next one)."""
        return sum(_buffer_bytes(s) for s in self._spares)

    def stage(self, state: Any) -> tuple[Any, list[Any]]:
        """The tree and leaves of *state*. With *background* the leaves are slots, sized against
        the budget, that :meth:`submit` fills; without, the caller's arrays as they are. Call
        with :attr:`lock` held, after :meth:`wait`."""
        assert self._pending is None, "stage() while a write is in flight"
        if not self.background:
            return flatten(state, copy=False)
        tree, sources = flatten(state, lazy=True)
        slots = [_Slot(source, _nbytes(source)) for source in sources]
        total = sum(s.nbytes for s in slots)
        kept = self.held
        free = self._available() + kept  # what we keep is ours to reuse
        limit = self.budget if self.budget is not None else int(DEFAULT_SHARE * free)
        self._limit = max(limit, 1)
        self._keep = total <= self._limit
        if not self._keep or len(self._spares) != len(slots):
            self._spares = []  # over the budget (or another state): freed before copying
        self._slots, self._held, self._over, self.peak = slots, 0, False, 0
        peak = min(total, self._limit)
        if peak > LARGE_SHARE * free:
            logger.warning(
                "colabsession: this save stages up to %s of its %s in host memory, with %s "
                "free: set Checkpointer(memory_budget=...) lower if the runtime runs out of RAM",
                format_bytes(peak),
                format_bytes(total),
                format_bytes(free),
            )
        return tree, list(slots)

    def submit(self, job: Callable[[], None]) -> None:
        """Run *job* (the write of the state just staged): in the background, or now. In the
        background this returns once every array is copied (or, over the budget, written)."""
        with self.lock:
            if not self.background:
                self._guarded(job)
                return
            if self._keep:  # all fits: copy first, the writer then has the CPU to itself
                self._fill()
                self._pending = self._executor.submit(self._guarded, job)
                return
            self._pending = self._executor.submit(self._guarded, job)
            self._fill()
            with self._cond:  # arrays written from the caller's own: until they are
                while not self._over and not all(s.done for s in self._slots if s.live):
                    self._cond.wait()

    def arrays(self, leaves: list[Any]) -> Iterator[Any]:
        """The host arrays of *leaves* (of :meth:`stage`), one at a time, each once it is
        copied; its buffer is freed (or kept, within the budget) once the next is asked for,
        that is, once it is written. For the writer's thread."""
        if not self.background:
            for leaf in leaves:
                yield host_arrays([leaf])[0]
            return
        try:
            for slot in leaves:
                with self._cond:
                    while not slot.ready and not self._over:
                        self._cond.wait()
                    if not slot.ready:
                        raise CheckpointError("the save was abandoned while its state was copied")
                if slot.live:
                    yield _live(slot.source)
                else:
                    yield host_arrays([slot.leaf])[0]
                self._release(slot)
        finally:
            self._finish()

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

    def release(self) -> None:
        """Free the staging buffers kept for the next save."""
        with self.lock:
            self.wait()
            self._spares = []

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._spares = []

    # The caller's side -----------------------------------------------------------------------

    def _fill(self) -> None:
        """Copy every slot's source, in order, each once the budget has room for it."""
        spares = self._spares
        try:
            if self._keep:  # all fits and the writer has not started: nobody to wait for
                for index, slot in enumerate(self._slots):
                    slot.leaf = _copy(slot.source, spares[index] if index < len(spares) else None)
                    slot.source, slot.ready = None, True
                    self._held += slot.nbytes
                self.peak = self._held
                return
            for index, slot in enumerate(self._slots):
                if slot.nbytes > self._limit:
                    with self._cond:
                        slot.live = slot.ready = True
                        self._cond.notify_all()
                    continue
                with self._cond:
                    while self._held + slot.nbytes > self._limit and not self._over:
                        self._cond.wait()
                    if self._over:
                        return  # the write failed: its error is the save's
                    self._held += slot.nbytes
                    self.peak = max(self.peak, self._held)
                spare = spares[index] if index < len(spares) else None
                slot.leaf = _copy(slot.source, spare)
                with self._cond:
                    slot.source = None
                    slot.ready = True
                    self._cond.notify_all()
        except BaseException:
            with self._cond:
                self._over = True
                self._cond.notify_all()
            raise
        finally:
            self._spares = []

    # The writer's side -----------------------------------------------------------------------

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            if not slot.live:
                self._held -= slot.nbytes
            if not self._keep:
                slot.leaf = None
            slot.source = None
            slot.done = True
            self._cond.notify_all()

    def _finish(self) -> None:
        with self._cond:
            self._over = True
            if not self._slots:
                return  # finished already (the write, then its guard)
            if self._keep and all(s.done for s in self._slots):
                self._spares = [_frameworks.unwrap(s.leaf) for s in self._slots]
            for slot in self._slots:
                slot.leaf = slot.source = None
            self._slots = []
            self._held = 0
            self._cond.notify_all()

    def _guarded(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            self._error = exc
        finally:
            if self.background:
                self._finish()


def _nbytes(source: Any) -> int:
    torch = _frameworks.loaded_torch()
    if torch is not None and isinstance(source, torch.Tensor):
        return _frameworks.tensor_bytes(source)
    return int(getattr(source, "nbytes", 0))


def _buffer_bytes(leaf: Any) -> int:
    return _nbytes(leaf) if leaf is not None else 0


def _copy(source: Any, spare: Any) -> Any:
    """A host copy of *source* (into *spare* when it fits); TensorFlow's immutable tensors as
    they are."""
    import numpy as np

    torch = _frameworks.loaded_torch()
    if torch is not None and isinstance(source, torch.Tensor):
        leaf, device = _frameworks.copy_tensor(source, _frameworks.unwrap(spare))
        return leaf if device is None else _frameworks.pending(leaf, device)
    if not (_frameworks.is_jax_array(source) or isinstance(source, np.ndarray)):
        return source  # a TensorFlow EagerTensor: nothing changes it
    array = np.asarray(source)
    if isinstance(spare, np.ndarray) and (spare.shape, spare.dtype) == (array.shape, array.dtype):
        np.copyto(spare, array)
        return spare
    return np.array(array, copy=True, order="C")


def _live(source: Any) -> Any:
    """The array of a slot larger than the budget, written from the caller's own memory."""
    torch = _frameworks.loaded_torch()
    if torch is not None and isinstance(source, torch.Tensor) and source.device.type != "cpu":
        return _frameworks.DeviceArray(source)
    return host_arrays([source])[0]
