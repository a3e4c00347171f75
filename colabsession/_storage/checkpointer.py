"""Atomic, checksummed, non-blocking, deadline-aware checkpoints with a loss history.

A run's folder (the *location*, and its local mirror when the location is Drive or a bucket)::

    ckpt-000000001200.3f9a1c2b7d4e.ckpt   one file per checkpoint, committed by its trailer
    history.jsonl / history.000003.jsonl  the loss history (local file / revisions at the location;
                                          each checkpoint carries the records they lack)
    lease.json                            which notebook writes this run

The pieces, one concern each: :mod:`._layout` (the file format and its commit), :mod:`._store`
(one store interface over fsspec, for the local mirror and the location alike, every operation
bounded), :mod:`._retention` (which checkpoints to keep), :mod:`._lineage` (which belong to the
run as it goes on now), :mod:`._replicate` (copying to the location in a thread of its own),
:mod:`._save_policy` (when to save), :mod:`._async_writer` (writing in the background, and the
thread-safety contract), :mod:`._interrupt` (signals), :mod:`._history` and :mod:`._lease`. The
:class:`Checkpointer` here ties them together.

The local commit never waits for Drive: a save is written to the local disk, and the replicator
copies it to the location when the location answers.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

from colabsession._core.deprecation import renamed_arguments, warn_renamed
from colabsession._core.errors import CheckpointError, ColabSessionError, ConfigError, LeaseError
from colabsession._core.files import reason
from colabsession._core.hooks import final_save
from colabsession._core.progress import ProgressFactory, transfer
from colabsession._core.units import Duration, format_duration, parse_bytes, parse_duration
from colabsession._drive.location import Location
from colabsession._runtime.clock import SessionClock
from colabsession._runtime.interrupt import StopOnSigterm
from colabsession._runtime.runtime import run_again
from colabsession._storage import layout as _layout
from colabsession._storage.async_writer import AsyncWriter
from colabsession._storage.frameworks import (
    check_device,
    fill,
    into,
    mapped_span,
    to_frameworks,
    unmapped,
)
from colabsession._storage.history import HistoryLog, check_metric_names, make_record
from colabsession._storage.layout import Damaged, Lineage, Part
from colabsession._storage.lease import Lease
from colabsession._storage.lineage import branch_of, split_live
from colabsession._storage.replicate import STATES, Replicator, drive_states
from colabsession._storage.retention import AnyOf, BestN, EveryInterval, LatestN, Policy, split
from colabsession._storage.runs import run_location, run_stores
from colabsession._storage.save_policy import SavePolicy
from colabsession._storage.serialize import flatten, host_arrays
from colabsession._storage.store import Entry

logger = logging.getLogger(__name__)

LEASE_TIMEOUT = 10.0  # the first save waits at most this long for the location's lease


RunLike = str | os.PathLike[str] | Location
"""A run, as every API takes it: a run name (``drive:checkpoints/<name>``) or a location."""


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: ``state`` as saved, ``metrics`` given with it, and ``where`` it
    was read from (the same value as :attr:`CheckpointInfo.where`).

    >>> restored = ckpt.restore()                        # doctest: +SKIP
    >>> restored.step, restored.where                    # doctest: +SKIP
    (1200, '/content/checkpoints/my-run/ckpt-000000001200.3f9a1c2b7d4e.ckpt')
    """

    step: int
    state: Any
    metrics: dict[str, Any]
    created: datetime
    session: str
    where: str

    @property
    def source(self) -> str:
        """Deprecated: the old name of :attr:`where`."""
        warn_renamed("Checkpoint.source", "Checkpoint.where (the name CheckpointInfo uses too)")
        return self.where

    def __repr__(self) -> str:
        return (
            f"Checkpoint(step={self.step}, metrics={self.metrics}, "
            f"created={self.created:%Y-%m-%d %H:%M:%S}, where={self.where!r})"
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint as listed by :meth:`Checkpointer.checkpoints` (not loaded): its
    step, where it is, when and what.

    >>> [(c.step, c.metrics["loss"]) for c in ckpt.checkpoints()]  # doctest: +SKIP
    [(1000, 0.31), (1200, 0.29)]
    """

    step: int
    where: str
    created: datetime
    metrics: dict[str, Any]
    session: str


class CheckpointStatus(NamedTuple):
    """One checkpoint file as :meth:`Checkpointer.verify` found it: ``problem`` is None when it
    is whole, else why not. A tuple still, so ``for step, where, problem in ckpt.verify()``
    reads it as before.

    >>> [c.where for c in ckpt.verify() if not c.ok]     # doctest: +SKIP
    []
    """

    step: int
    where: str
    problem: str | None

    @property
    def ok(self) -> bool:
        """Whether the file is whole (its checksums match)."""
        return self.problem is None


def session_id(clock: SessionClock | None = None) -> str:
    """Which runtime wrote a record: the host and the session's start, stable across kernel
    restarts in one Colab runtime."""
    started = (clock or SessionClock()).started
    return f"{socket.gethostname()}-{datetime.fromtimestamp(started, timezone.utc):%Y%m%dT%H%M%S}"


class Checkpointer:
    """Save and restore a training run's state, safely and without stalling training.

    Its methods may be called from several threads (a ``sync()`` from a watchdog thread while
    the loop saves, say): saves are serialised, and no checkpoint mixes two steps.

    >>> ckpt = cs.Checkpointer("my-run", every="10min", keep_last=3)  # drive:checkpoints/my-run
    >>> restored = ckpt.restore()            # None, or the newest valid Checkpoint
    >>> start = restored.step + 1 if restored else 0
    >>> with ckpt:                           # a normal exit saves the last state given
    ...     for step in range(start, total):
    ...         loss = train_step()
    ...         saved = ckpt.maybe_save(step, {"w": w}, metrics={"loss": loss})
    ...         if ckpt.should_stop:
    ...             break

    Args:
        run: the run: a name (stored at ``drive:checkpoints/<name>``) or a location
            (``drive:...``, an fsspec URL, a ``Path``, or a path that starts with ``/``, ``./``,
            ``../`` or ``~``). Every API that takes a run takes it so: ``cs.fit(run=...)``,
            ``cs.hf.train``, ``SessionCheckpoint``, ``cs.history``, ``colabsession ckpt``.
        every: save this often (a duration) once the run is under way; None for step-based
            saving only. The first ``maybe_save`` of a run with nothing saved or restored saves
            at once, and while the run is young the wait is shorter (30 s, 30 s, 1 min, 2 min,
            ... up to *every*), so that a short run is never started over from nothing.
        every_steps: also save every this many steps.
        keep_last: keep this many newest checkpoints.
        keep_every: also keep one checkpoint per this interval (a duration).
        keep_best: also keep this many best checkpoints by *monitor* (NaN is never best).
        monitor: the metric that ranks checkpoints for *keep_best*.
        mode: ``"min"`` or ``"max"``: which *monitor* values are best.
        async_save: write in a background thread; ``save`` blocks only to copy the state.
        memory_budget: the most host memory an async save's copy of the state may take (bytes,
            or a size such as ``"2GiB"``); None: 80% of the RAM available when the save
            starts. A state within it is copied at once and its copy kept for the next save
            while it stays within it; a larger one is copied as the background writer makes
            room (``save`` then blocks for about the time to write what exceeds the budget),
            still one step's values.
        clock: the session clock that sets the deadline; default ``cs.clock()``.
        local_dir: the local mirror; default under colabsession's home.
        lease_ttl: a writer's lease, renewed every third of this, expires after this long
            without renewal; a new writer waits that long for a silent holder.
        takeover: take the run over from another writer whose lease has not expired.
        margin_floor: the least time before the deadline at which the final save starts.
        save_on_interrupt: inside ``with``, save the state last given to ``maybe_save`` when a
            KeyboardInterrupt stops the loop.
        timeout: the longest any one operation on the location may take (longer for large
            transfers); past it the operation counts as failed and is retried later.
        close_timeout: how long ``close()`` waits for the location to receive what is local.

    The wrappers (``cs.fit``, ``cs.keras.SessionCheckpoint``, ``cs.hf.train``) take these same
    keyword arguments, with these defaults, or a Checkpointer made beforehand as their run.
    """

    @renamed_arguments("cs.Checkpointer", location="run", monotonic="_monotonic")
    def __init__(
        self,
        run: RunLike,
        *,
        every: Duration | None = "10min",
        every_steps: int | None = None,
        keep_last: int = 3,
        keep_every: Duration | None = None,
        keep_best: int | None = None,
        monitor: str = "loss",
        mode: Literal["min", "max"] = "min",
        async_save: bool = True,
        memory_budget: int | str | None = None,
        clock: SessionClock | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        lease_ttl: Duration = "2min",
        takeover: bool = False,
        margin_floor: Duration = "60s",
        save_on_interrupt: bool = True,
        timeout: Duration = "60s",
        close_timeout: Duration = "2min",
        _monotonic: Callable[[], float] = time.monotonic,  # a test seam: the clock of intervals
        _progress: ProgressFactory = transfer,  # a test seam: the bars of large transfers
    ) -> None:
        if keep_last < 1:
            raise ConfigError("keep_last must be at least 1: the newest checkpoint is always kept")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', not {mode!r}")
        if every_steps is not None and every_steps < 1:
            raise ConfigError("every_steps must be a positive number of steps")
        if keep_best is not None and keep_best < 1:
            raise ConfigError("keep_best must be a positive number of checkpoints, or None")
        self.location = run_location(run)
        self.every = None if every is None else parse_duration(every, name="every")
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.keep_every = (
            None if keep_every is None else parse_duration(keep_every, name="keep_every")
        )
        self.keep_best = keep_best
        self.monitor = monitor
        self.mode = mode
        self.async_save = async_save
        self.memory_budget = (
            None if memory_budget is None else parse_bytes(memory_budget, name="memory_budget")
        )
        self.clock = clock or SessionClock()
        self.lease_ttl = parse_duration(lease_ttl, name="lease_ttl")
        self.takeover = takeover
        self.margin_floor = parse_duration(margin_floor, name="margin_floor")
        self.save_on_interrupt = save_on_interrupt
        self.timeout = parse_duration(timeout, name="timeout")
        self.close_timeout = parse_duration(close_timeout, name="close_timeout")
        self._monotonic = monotonic = _monotonic
        self._progress = _progress

        self.local, self.remote = run_stores(self.location, local_dir, timeout=self.timeout)
        self.local_dir = Path(self.local.root)
        self.session = session_id(self.clock)
        self.attempt = uuid.uuid4().hex[:8]  # tells a resume on the same runtime in the history
        self.policy = self._policy()
        self.history = HistoryLog(self.local, self.remote, session=self.session)
        self._lease = Lease(
            self.remote or self.local,
            timeout=min(self.timeout, LEASE_TIMEOUT) if self.remote is not None else None,
            owner=f"{self.session}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            session=self.session,
            ttl=self.lease_ttl,
            takeover=takeover,
            what=str(self.location),
        )
        self._replicator = (
            Replicator(
                self.local,
                self.remote,
                history=self.history,
                lease=self._lease,
                policy=self.policy,
                head=lambda: self._lineage,
                monotonic=monotonic,
                progress=_progress,
            )
            if self.remote is not None
            else None
        )

        self._stopped = False
        self.save_policy = SavePolicy(
            every=self.every,
            every_steps=every_steps,
            margin_floor=self.margin_floor,
            clock=self.clock,
            monotonic=monotonic,
        )
        self._writer = AsyncWriter(background=async_save, budget=self.memory_budget)
        self._sigterm = StopOnSigterm(self.request_stop)
        self._writing = False
        self._restore_called = False
        self._restored_step: int | None = None
        self._restored_lineage: Lineage | None = None
        self._newer_than_restored = False
        self._lineage: Lineage | None = None  # the branch this writer saves on, once writing
        self._latest_branch = -math.inf  # when the newest branch seen at restore() began
        self._last_call: tuple[int, Any, dict[str, Any] | None] | None = None
        self._closed = False

    def _policy(self) -> Policy:
        policies: list[Policy] = [LatestN(self.keep_last)]
        if self.keep_every:
            policies.append(EveryInterval(self.keep_every))
        if self.keep_best:
            policies.append(BestN(self.keep_best, self.monitor, self.mode))
        return AnyOf(policies)

    # Public state --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran: a closed Checkpointer saves no more."""
        return self._closed

    @property
    def last_saved_step(self) -> int | None:
        """The step of the last save of this Checkpointer (or of the restored checkpoint)."""
        return self.save_policy.last_saved_step

    # Saving ------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: dict[str, Any] | None = None,
        _later: Callable[[], tuple[Any, list[Part]]] | None = None,
    ) -> None:
        """Save *state* as *step* now. With ``async_save`` this returns once the state is copied
        to host memory; the write to the local disk goes on in the background (one at a time),
        and the copy to the location after it, in a thread of its own.

        ``_later`` (a seam for the distributed path): it returns the state and the part files
        (:class:`~.layout.Part`, written and fsynced in the local mirror's folder) that the
        checkpoint commits, called in the writer's thread when the write starts; the state is
        written without a copy; *state* is then ignored. The save counts as made now."""
        step = _check_step(step)
        with self._writer.lock:  # one save at a time, whichever threads call
            self._check_open()
            self.wait()  # at most one save in flight; surfaces the previous save's failure
            clean = _clean_metrics(metrics)
            self._begin_writing()
            # A synchronous save writes the caller's own arrays: the caller waits meanwhile.
            tree, leaves = self._writer.stage(state) if _later is None else (None, [])
            if clean:
                self.history.append(make_record(step, self.session, clean, self.attempt))
            started = self._monotonic()
            self.save_policy.saved(step, started)
            lineage = self._lineage

            def job() -> None:
                if _later is None:
                    self._commit(step, tree, self._writer.arrays(leaves), clean, lineage)
                else:  # not staged: written as they are (files others finished meanwhile)
                    later, parts = _later()
                    tree_later, leaves_later = flatten(later, copy=False)
                    self._commit(step, tree_later, host_arrays(leaves_later), clean, lineage, parts)
                self.save_policy.took(self._monotonic() - started)

            self._writer.submit(job)
            if not self.async_save:
                self._raise_pending_error(self._writer.wait())

    def maybe_save(self, step: int, state: Any, *, metrics: dict[str, Any] | None = None) -> bool:
        """Save if a save is due: at the run's first step, then when the interval (``every``,
        shorter while the run is young, or ``every_steps``) has passed; or if the session
        deadline is near (or a stop was asked for): then the save is waited for and
        :attr:`should_stop` turns True. Returns whether it saved.

        *state* may be a function that returns the state: it is called only when a save is
        due, which spares gathering a large state at every step."""
        step = _check_step(step)
        with self._writer.lock:
            self._check_open()
            now = self._monotonic()
            self.save_policy.step_seen(now)
            self._last_call = (step, state, metrics)
            if self._stopped:
                return False
            if self.save_policy.final_due():
                why = (
                    self.save_policy.stop_reason
                    if self.save_policy.stop_asked
                    else f"{format_duration(self.clock.remaining)} left in this session"
                )
                logger.warning("colabsession: %s: saving step %d and stopping", why, step)
                final_save()  # e.g. cs.cache.keep saves what it keeps now, in its own thread
                self.save(step, _gather(state), metrics=metrics)
                self.wait()
                self._stopped = True
                return True
            if self.save_policy.interval_due(step, now):
                self.save(step, _gather(state), metrics=metrics)
                return True
            if metrics:
                self.log(step, **metrics)
            return False

    def prepare(self) -> None:
        """Take the run's lease and check that it can be written, now rather than at the first
        save: call it after :meth:`restore` and before training, so that a location you cannot
        write to fails in seconds, not after the first epoch."""
        with self._writer.lock:
            self._check_open()
            self._begin_writing()

    @property
    def should_stop(self) -> bool:
        """Whether the loop should end now: :meth:`maybe_save` has made the final save, because
        the session deadline is near, SIGTERM came, or :meth:`request_stop` asked for it. The
        one word a loop reads (with ``maybe_save``); :meth:`request_stop` is the one that asks.
        """
        return self._stopped

    @property
    def stop_due(self) -> bool:
        """Deprecated: ``ckpt.due(step) == "final"`` says the same."""
        warn_renamed("Checkpointer.stop_due", 'Checkpointer.due(step) == "final"')
        return not self._stopped and not self._closed and self.save_policy.final_due()

    def due(self, step: int) -> Literal["save", "final"] | None:
        """What ``maybe_save(step, ...)`` would do now: ``"final"``, save and stop (the session
        deadline is near, SIGTERM came, or :meth:`request_stop` was called); ``"save"``, save
        (the interval has passed); None, nothing. For code that saves by itself (the Trainer's
        callback) or gathers what only a save needs (metrics for the checkpoint list); a plain
        loop needs only ``maybe_save`` and :attr:`should_stop`.

        >>> if ckpt.due(step):  # doctest: +SKIP
        ...     ckpt.maybe_save(step, state, metrics=expensive_metrics())
        """
        if self._stopped or self._closed:
            return None
        policy = self.save_policy
        if policy.final_due():
            return "final"
        return "save" if policy.interval_due(step, self._monotonic()) else None

    def restart(self) -> None:
        """Start the run over instead of resuming it. At the first save every checkpoint of
        the run is set aside (renamed ``parked-...``) and its history so far moved to a
        ``parked-history...`` file: nothing is deleted.

        >>> ckpt = cs.Checkpointer("my-run"); ckpt.restart()
        """
        with self._writer.lock:
            self.wait()
            self._restore_called = True
            self._writing = False
            self._restored_step = None
            self._restored_lineage = None
            self._newer_than_restored = True
            self.save_policy.restored(None)

    @property
    def margin(self) -> float:
        """Seconds before the deadline at which the final save starts: the floor, or the
        slowest recent save times a safety factor plus two steps, whichever is more."""
        return self.save_policy.margin

    def log(self, step: int, /, **metrics: Any) -> None:
        """Add metrics for *step* to the run's history without saving a checkpoint."""
        step = _check_step(step)
        with self._writer.lock:
            self._check_open()
            clean = _clean_metrics(metrics)
            self._begin_writing()
            if clean:
                self.history.append(make_record(step, self.session, clean, self.attempt))

    def wait(self) -> None:
        """Block until the save in flight is committed to the local disk (not the location:
        see :meth:`close`)."""
        with self._writer.lock:
            self._raise_pending_error(self._writer.wait())

    def close(self) -> None:
        """Wait for the save in flight, give the location up to ``close_timeout`` to receive
        what is still only local (saying what stays local), and release the lease. Always
        releases, even when the last save failed (which it then raises)."""
        with self._writer.lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.wait()
            except LeaseError as exc:  # said at the save or log that met it
                logger.warning("colabsession: %s", exc)
            finally:
                try:
                    self._final_sync()
                finally:
                    if self._replicator is not None:
                        self._replicator.stop()
                    self._lease.release()
                    self._writer.shutdown()

    def sync(self, timeout: Duration | None = None) -> list[int]:
        """Copy what is only local to the location now, waiting up to *timeout* (default
        ``close_timeout``); return the steps that are still not there (empty: all are). On the
        Colab mount, where Drive can be asked through its API, a step is there once Drive
        confirms it: this waits a bounded while for the mount's uploads, then sends what Drive
        lacks through the API (see :meth:`drive_states`).

        >>> ckpt.sync("30s")  # before something that may end the runtime  # doctest: +SKIP
        []
        """
        self.wait()  # the waiting for the location is outside the lock: saves go on meanwhile
        if self._replicator is None or not self._writing:
            return []
        limit = self.close_timeout if timeout is None else parse_duration(timeout, name="timeout")
        return self._replicator.flush(limit)

    def _final_sync(self) -> None:
        if not self._writing or self._lease.lost or self._replicator is None:
            return
        left = self._replicator.flush(self.close_timeout, history=True)
        states = self._replicator.states()
        on_mount = [s for s in left if states.get(s) == "mount"]
        left = [s for s in left if s not in on_mount]
        if left:
            logger.warning(
                "colabsession: checkpoint steps %s are saved locally in %s but NOT on %s (%s): "
                "they are lost if this runtime ends. To copy them, %s later (or "
                "cs.drive.ensure() first)",
                left,
                self.local_dir,
                self.location,
                self._replicator.last_error or "it did not answer in time",
                run_again(),
            )
        if on_mount:
            logger.warning(
                "colabsession: checkpoint steps %s are written to the Drive mount but NOT on "
                "Drive: Drive has not confirmed them (they wait in the mount's cache) and they "
                "could not be sent through the Drive API. They are lost if this runtime ends "
                "first: run cs.drive.flush_and_unmount() in a cell, or keep the runtime until "
                "they show on drive.google.com (saved locally in %s)",
                on_mount,
                self.local_dir,
            )
        unchecked = sorted(s for s, state in states.items() if state == "unchecked")
        if unchecked:
            logger.info(
                "colabsession: checkpoint steps %s are written to the mount (Drive not "
                "checked: the mount uploads them in the background; run "
                "google.colab.auth.authenticate_user() before training to have Drive confirm "
                "them)",
                unchecked,
            )

    def __enter__(self) -> Checkpointer:
        self._sigterm.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._save_last("the loop ended")
            elif issubclass(exc_type, KeyboardInterrupt) and self.save_on_interrupt:
                self._save_last("interrupted")
        finally:
            self._sigterm.uninstall()
            self.close()

    def request_stop(self, why: str = "a stop was asked for") -> None:
        """Save at the next :meth:`maybe_save` and then stop (:attr:`should_stop`), as for
        SIGTERM: safe to call from a signal handler (a Ctrl-C that should end the loop at a
        step boundary, say)."""
        self.save_policy.request_stop(why)

    def _save_last(self, why: str) -> None:
        """Save the state last given to maybe_save if it is newer than the last checkpoint."""
        if self._last_call is None or self._closed or self._lease.lost:
            return
        step, state, metrics = self._last_call
        last = self.save_policy.last_saved_step
        if last is not None and step <= last:
            return
        logger.info("colabsession: %s: saving step %d", why, step)
        try:
            self.save(step, _gather(state), metrics=metrics)
            self.wait()
        except ColabSessionError:
            logger.exception("colabsession: the save when %s failed", why)

    def revoke_lease(self) -> str | None:
        """Take the run from a writer that is gone (a notebook whose runtime ended without
        releasing it), so that the next writer starts at once; a writer still alive stops at
        its next save. Returns who held it, or None if nobody did.

        >>> cs.Checkpointer("my-run").revoke_lease()  # doctest: +SKIP
        'host 2f1c9e0a, pid 412, heard of 45s ago'
        """
        try:
            lease = self._lease.revoke()
        except (OSError, TimeoutError) as exc:
            raise CheckpointError(
                f"cannot take {self.location} over ({reason(exc)}): try again when it answers",
                path=str(self.location),
            ) from None
        if lease is None:
            return None
        age = format_duration(max(0.0, time.time() - lease.heartbeat))
        return f"host {lease.host}, pid {lease.pid}, heard of {age} ago"

    # Restoring ---------------------------------------------------------------------------

    def restore(
        self,
        step: int | None = None,
        *,
        device: Any = None,
        like: Any = None,
        lazy: bool = False,
        _own: Callable[[tuple[Any, ...]], bool] | None = None,
    ) -> Checkpoint | None:
        """The newest valid checkpoint (or the one for *step*) from the local mirror or the
        location, whichever has it; None when there is none. A damaged checkpoint is skipped
        with a warning, never loaded. A location that does not answer leaves the local copy.

        PyTorch tensors and JAX arrays come back as such, with their dtype. *device*: None puts
        tensors on the CPU (JAX arrays on JAX's default device); ``"saved"`` each on the device
        it was saved from, where this runtime has it; or any device (``"cuda"``, a JAX device).
        *like* rebuilds the state in the structure of a template (optax's named tuples, flax
        structs), checks each array's shape and dtype and puts it where the template's lies::

            restored = ckpt.restore(like={"params": params, "opt": opt_state})

        The template's PyTorch tensors that fit (same shape and dtype, on any device) receive
        their values in place, as ``torch.distributed.checkpoint.load`` does, and stand in the
        restored state for them: no memory is allocated for them. The whole state is checked
        against *like* first, and a local file is verified whole before any value is copied:
        a state that does not fit, or a damaged file, leaves the template as it was.

        *lazy*: where the checkpoint is a local file, its arrays come back as views into a
        private memory map of it (tensors on the CPU, numpy arrays), verified whole first: the
        page cache holds them, not the process, until they are copied (``load_state_dict``
        does) or written to. Keep only copies: the mapping lives as long as any view does.
        Elsewhere (the Drive mount or its API) it is the same as ``lazy=False``.

        Saving after restoring an older step than the newest abandons the newer ones: each
        checkpoint records the one it continues from, so they are never restored again, on this
        runtime or another, however late the location hears of it; they are set aside (renamed
        ``parked-...``), as the history drops its records past the restored step. A run with a
        history but no checkpoint says so before it starts over."""
        if step is not None:
            step = _check_step(step)
        check_device(device)
        with self._writer.lock:
            self.wait()
            return self._restore(step, device, like, lazy, _own)

    def _restore(
        self,
        step: int | None,
        device: Any,
        like: Any,
        lazy: bool = False,
        own: Callable[[tuple[Any, ...]], bool] | None = None,
    ) -> Checkpoint | None:
        listed, abandoned = split_live(self._entries())
        self._latest_branch = max(
            (e.manifest.lineage.started for e in [*listed, *abandoned] if e.manifest.lineage),
            default=-math.inf,
        )
        entries = listed
        newest_step = max((e.step for e in listed), default=None)
        if step is not None:
            entries = [e for e in listed if e.step == step]
            if not entries:
                available = sorted({e.step for e in listed})
                left = sorted({e.step for e in abandoned if e.step == step})
                raise CheckpointError(
                    f"no checkpoint of step {step} in {self.location}; available: "
                    f"{available or 'none'}"
                    + (" (a checkpoint of that step is on an abandoned branch)" if left else ""),
                    path=str(self.location),
                )
        self._restore_called = True
        self._writing = False  # the next write takes up from the restored step afresh
        for entry in entries:
            try:
                with self._progress(entry.manifest.size, f"restoring step {entry.step}") as bar:
                    # With a template, the file is mapped and verified whole, then its values
                    # are copied straight into the template's tensors (see restore).
                    # *own* (TrainingState's): the arrays it keeps rather than copies out,
                    # copied as the file is verified, in the same pass over their bytes.
                    state = entry.store.load(
                        entry, progress=bar.update, lazy=lazy or like is not None, own=own
                    )
            except (Damaged, OSError, TimeoutError) as exc:
                logger.warning(
                    "colabsession: skipping checkpoint step %d in %s: %s",
                    entry.step,
                    entry.where,
                    exc if isinstance(exc, Damaged) else reason(exc),
                )
                continue
            self._restored_step = entry.step
            self._restored_lineage = entry.manifest.lineage
            self._newer_than_restored = newest_step is not None and newest_step > entry.step
            self.save_policy.restored(entry.step)
            manifest = entry.manifest
            span = None if lazy else mapped_span(state)
            state = to_frameworks(unmapped(state, span), device)
            if like is not None:
                into(like, state, place=False)  # refuses before any tensor of like changes
                state = into(like, fill(like, state, span))
            return Checkpoint(
                step=entry.step,
                state=state,
                metrics=dict(manifest.metrics),
                created=manifest.created,
                session=manifest.session,
                where=entry.where,
            )
        if step is not None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.location} is damaged everywhere",
                path=str(self.location),
            )
        self._restored_step = None
        self._restored_lineage = None
        self._newer_than_restored = newest_step is not None
        self.save_policy.restored(None)
        self._warn_if_history_without_checkpoint()
        return None

    def _warn_if_history_without_checkpoint(self) -> None:
        try:
            records = self.history.newest()
        except (OSError, TimeoutError):  # said by newest(); nothing more to tell
            return
        if records:
            last = max(r["step"] for r in records)
            logger.warning(
                "colabsession: %s has a history of %d logged steps (up to step %d) but no "
                "checkpoint to resume from: training starts over from the beginning, and that "
                "history is set aside (parked-history...) at the first save",
                self.location,
                len(records),
                last,
            )

    def latest_step(self) -> int | None:
        """The newest committed step (without verifying its arrays)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def steps(self) -> list[int]:
        """All committed steps of the run as it goes on now (not those of a branch abandoned
        by restoring an older step), local or remote, oldest first."""
        return sorted({e.step for e in split_live(self._entries())[0]})

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every committed checkpoint of the run as it goes on now, local and at the location,
        oldest first."""
        return [
            CheckpointInfo(
                e.step, e.where, e.manifest.created, dict(e.manifest.metrics), e.manifest.session
            )
            for e in sorted(
                split_live(self._entries())[0], key=lambda e: (e.step, e.store is not self.local)
            )
        ]

    def drive_states(self) -> dict[int, str]:
        """Where each checkpoint of the run as it goes on now stands with its location, by
        step, in words: "saved locally only, not yet on Drive", "written to the mount, not yet
        confirmed by Drive", "written to the mount (Drive not checked)", "on Drive (confirmed
        by Drive)" (asked of Drive through its API now, where the location is the Colab mount
        and credentials need no prompt), or "written to the location". Empty for a location
        written directly (a local folder).

        >>> ckpt.drive_states()  # doctest: +SKIP
        {1200: 'on Drive (confirmed by Drive)', 1400: 'saved locally only, not yet on Drive'}
        """
        if self.remote is None:
            return {}
        live = split_live(self._entries())[0]
        try:
            remote = self.remote.entries(warn=False)
        except (OSError, TimeoutError):
            remote = []
        wanted = {e.name for e in live}
        at_location = [e for e in remote if e.name in wanted]
        names = {e.name for e in at_location}
        entries = [*at_location, *(e for e in live if e.name not in names)]
        states = drive_states(self.local, self.remote, entries)
        return {e.step: STATES[states[e.name]] for e in entries if e.name in states}

    def verify(self) -> list[CheckpointStatus]:
        """Check every checkpoint file, local and at the location, by step: a
        :class:`CheckpointStatus` each, whose ``problem`` says why a damaged one is."""
        results: list[CheckpointStatus] = []
        for entry in self._entries():
            try:
                entry.store.load(entry)
                results.append(CheckpointStatus(entry.step, entry.where, None))
            except (Damaged, OSError, TimeoutError) as exc:
                results.append(CheckpointStatus(entry.step, entry.where, str(exc)))
        for store in (self.local, self.remote):
            for name, why in store.damaged() if store is not None else []:
                step = _layout.parse_name(name)
                if step is not None:
                    results.append(CheckpointStatus(step, f"{store}/{name}", why))
        return sorted(results, key=lambda r: (r.step, r.where))

    def _entries(self) -> list[Entry]:
        """Committed checkpoints, newest first; of one file in both places, the local one."""
        entries = self.local.entries()
        if self.remote is not None:
            try:
                local_names = {e.name for e in entries}
                entries += [e for e in self.remote.entries() if e.name not in local_names]
            except (OSError, TimeoutError) as exc:
                logger.warning(
                    "colabsession: cannot list %s (%s): using the local copy only",
                    self.remote,
                    reason(exc),
                )
        return sorted(entries, key=lambda e: (-e.step, -e.manifest.time, e.store is not self.local))

    # Writing -------------------------------------------------------------------------------

    def _begin_writing(self) -> None:
        """The first write of this session: take the lease (or leave it to the replicator
        when the location does not answer), bring the history up to date (dropping records
        past a restored step), and set aside checkpoints newer than a restored one."""
        if self._writing:
            if self.remote is None and self._lease.held:
                self._lease.verify()  # a direct folder: one stat on the local disk
            return
        _refuse_other_ranks()
        try:
            self.local.makedirs()
        except OSError as exc:
            raise CheckpointError(
                f"cannot write to {self.local_dir} ({reason(exc)}): pass a location (or "
                "local_dir=) in a folder you can write to",
                path=str(self.local_dir),
            ) from None
        try:
            self._lease.acquire()
        except (OSError, TimeoutError) as exc:
            if self.remote is None:
                raise CheckpointError(
                    f"cannot write the lease of {self.location} ({reason(exc)}): free disk "
                    "space or choose another location",
                    path=str(self.location),
                ) from None
            logger.warning(
                "colabsession: %s does not answer (%s): saving locally in %s; copying to it "
                "resumes when it answers",
                self.location,
                reason(exc),
                self.local_dir,
            )
        self._lineage = self._new_branch()
        try:
            self.history.start(self._restored_step, truncate=self._restore_called)
            if self._restore_called and self._newer_than_restored:
                self._park_newer(self._restored_step)
        except OSError as exc:
            self._lease.release()
            raise CheckpointError(
                f"cannot write the history in {self.local_dir} ({reason(exc)}): free disk space "
                "(!df -h) or pass local_dir= elsewhere",
                path=str(self.local_dir),
            ) from None
        self._writing = True

    def _new_branch(self) -> Lineage:
        """The lineage of the saves this writer begins: after a restore, a branch that
        continues from the restored checkpoint (or from nothing, when none was); without one,
        a branch that follows whatever came before it."""
        # Begun after every branch restore() saw, even where this runtime's clock lags.
        branch, now = uuid.uuid4().hex[:12], max(time.time(), self._latest_branch + 0.001)
        if not self._restore_called:
            return Lineage(branch, now, follows=True)
        if self._restored_step is None:
            return Lineage(branch, now)
        fork = branch_of(self._restored_lineage) or None
        return Lineage(branch, now, fork_branch=fork, fork_step=self._restored_step)

    def _park_newer(self, step: int | None) -> None:
        parked = [e.step for e in self._park_abandoned()[1]]
        logger.warning(
            "colabsession: %s, so the %scheckpoints%s are set aside (renamed parked-...) in %s",
            "the run starts over" if step is None else f"training continues from step {step}",
            "" if step is None else "newer ",
            f" {parked}" if parked else "",
            self.location,
        )

    def _park_abandoned(self) -> tuple[list[Entry], list[Entry]]:
        """Set aside the local checkpoints the live lineage leaves out (the replicator does so
        at the location); return (live, set aside), from one listing."""
        live, abandoned = split_live(self.local.entries(warn=False), self._lineage)
        for entry in abandoned:
            self.local.park(entry)
        return live, abandoned

    def _commit(
        self,
        step: int,
        tree: Any,
        arrays: Iterable[Any],
        metrics: dict[str, Any],
        lineage: Lineage | None,
        parts: list[Part] | None = None,
    ) -> None:
        """The background part of a save: write the host *arrays* (the writer's, each freed
        once written over the budget) locally (committing *parts*, files already beside it),
        apply retention there, and hand the file to the replicator."""
        fields = {
            "step": step,
            "time": time.time(),
            "session": self.session,
            "metrics": {k: _json_metric(v) for k, v in metrics.items()},
            "tree": tree,
            "lineage": lineage,
            # The records the location's history file lacks: they reach it with this file.
            "history": self.history.tail(),
        }
        if parts:
            fields["parts"] = parts
        self.local.commit(_layout.file_name(step), lambda f: _layout.write(f, arrays, **fields))
        self._retain_local()
        if self._replicator is not None:
            self._replicator.notify()

    def _retain_local(self) -> None:
        live = self._park_abandoned()[0]
        for entry in split(live, self.policy)[1]:
            self.local.delete(entry)
        for name in self.local.leftovers():  # temporary files of saves cut short
            path = Path(self.local.path(name))
            try:
                if time.time() - path.stat().st_mtime > 3600:
                    path.unlink()
            except OSError:
                pass

    def _raise_pending_error(self, error: BaseException | None) -> None:
        """Raise *error* (the last write's, if any) as a CheckpointError, or a lost lease."""
        if error is not None:
            if isinstance(error, ColabSessionError):
                raise error
            raise CheckpointError(
                f"saving to the local folder {self.local_dir} failed ({reason(error)}). Training "
                "state is not protected: free disk space (!df -h) or pass local_dir= elsewhere",
                path=str(self.local_dir),
            ) from error
        if self._lease.lost:
            raise self._lease.error()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed: create a new one to save again")
        if self._lease.lost:
            raise self._lease.error()

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.location)!r}, every={self.every}, "
            f"keep_last={self.keep_last}, local_dir={str(self.local_dir)!r})"
        )


# The wrappers' one way to configure a run ---------------------------------------------------

OPTIONS = frozenset(
    {
        "every",
        "every_steps",
        "keep_last",
        "keep_every",
        "keep_best",
        "monitor",
        "mode",
        "async_save",
        "memory_budget",
        "clock",
        "local_dir",
        "lease_ttl",
        "takeover",
        "margin_floor",
        "save_on_interrupt",
        "timeout",
        "close_timeout",
        "_monotonic",
        "_progress",
    }
)
"""The keyword arguments of :class:`Checkpointer`, which the wrappers pass on to it."""


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Checkpointer's keyword arguments in *kwargs*, the others): for a wrapper whose other
    keyword arguments go to what it wraps (``model.fit``, ``trainer.train``)."""
    options = {k: v for k, v in kwargs.items() if k in OPTIONS}
    return options, {k: v for k, v in kwargs.items() if k not in OPTIONS}


def checkpointer_for(
    run: RunLike | Checkpointer, options: dict[str, Any], *, who: str
) -> Checkpointer:
    """The Checkpointer a wrapper (*who*) trains with: *run* itself when it is one, else a new
    one for the run with *options* (Checkpointer's keyword arguments, with its defaults). A
    Checkpointer and options both is a ConfigError: the options belong to the Checkpointer."""
    if isinstance(run, Checkpointer):
        if options:
            raise ConfigError(
                f"{who} got a Checkpointer and Checkpointer options too "
                f"({', '.join(sorted(options))}): give those to the Checkpointer"
            )
        return run
    return Checkpointer(run, **options)


# Helpers -------------------------------------------------------------------------------------


def _refuse_other_ranks() -> None:
    """Under torch.distributed, only rank 0 writes a run: every rank writing takes the lease
    from the others, and their saves cross."""
    dist = sys.modules.get("torch.distributed")  # never imported here: only if the user did
    try:
        rank = dist.get_rank() if dist is not None and dist.is_initialized() else 0
    except (AttributeError, RuntimeError):
        rank = 0
    if rank != 0:
        raise ConfigError(
            f"rank {rank} of a torch.distributed job is writing a checkpoint: every rank would "
            "take the run's lease from the others. Use colabsession.torch.JobCheckpointer (one "
            "for the job, made on every rank), or save from rank 0 only"
        )


def _gather(state: Any) -> Any:
    return state() if callable(state) else state


def _check_step(step: Any) -> int:
    """A step is a non-negative integer (numpy integers too); bools and floats are refused."""
    if isinstance(step, (bool, float)):
        raise ConfigError(f"a checkpoint's step must be an integer, not {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise ConfigError(
            f"a checkpoint's step must be an integer, not a {type(step).__name__}"
        ) from None
    if value < 0:
        raise ConfigError(f"a checkpoint's step must not be negative, got {value}")
    return value


def _clean_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()  # numpy or tensor scalars
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise CheckpointError(f"metric {key!r} is a {type(value).__name__}: log numbers")
        clean[str(key)] = value
    check_metric_names(clean)
    return clean


def _json_metric(value: Any) -> Any:
    """Manifests are strict JSON: NaN and infinities are kept as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
