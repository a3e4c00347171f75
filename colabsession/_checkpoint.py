"""Atomic, checksummed, non-blocking, deadline-aware checkpoints with a loss history.

A run's folder (the *location*, and its local mirror when the location is Drive or a bucket)::

    ckpt-000000001200.3f9a1c2b7d4e.ckpt   one file per checkpoint, committed by its trailer
    history.jsonl / history.000003.jsonl  the loss history (local file / revisions at the location)
    lease.json                            which notebook writes this run

The pieces, one concern each: :mod:`._layout` (the file format and its commit), :mod:`._store`
(one store interface over fsspec, for the local mirror and the location alike, every operation
bounded), :mod:`._retention` (which checkpoints to keep), :mod:`._replicate` (copying to the
location in a thread of its own), :mod:`._history` and :mod:`._lease`. The
:class:`Checkpointer` here schedules saves, writes them in the background and handles signals.

The local commit never waits for Drive: a save is written to the local disk, and the replicator
copies it to the location when the location answers.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from . import _layout
from ._clock import SessionClock
from ._errors import CheckpointError, ColabSessionError, ConfigError, LeaseError
from ._frameworks import check_device, into, to_frameworks
from ._history import HistoryLog, check_metric_names, make_record
from ._layout import Damaged
from ._lease import Lease
from ._replicate import Replicator
from ._retention import AnyOf, BestN, EveryInterval, LatestN, Policy, split
from ._runtime import run_again
from ._serialize import flatten, host_arrays
from ._storage import reason, run_location, run_stores
from ._store import Entry, Store
from ._units import Duration, format_duration, parse_duration
from .drive import Location

logger = logging.getLogger(__name__)

SAFETY = 3.0  # the deadline margin covers this many times the slowest recent save
LEASE_TIMEOUT = 10.0  # the first save waits at most this long for the location's lease


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: ``state`` as saved, ``metrics`` given with it, and where from."""

    step: int
    state: Any
    metrics: dict[str, Any]
    created: datetime
    session: str
    source: str

    def __repr__(self) -> str:
        return (
            f"Checkpoint(step={self.step}, metrics={self.metrics}, "
            f"created={self.created:%Y-%m-%d %H:%M:%S}, source={self.source!r})"
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint as listed (not loaded): its step, where it is, when and what."""

    step: int
    where: str
    created: datetime
    metrics: dict[str, Any]
    session: str


def session_id(clock: SessionClock | None = None) -> str:
    """Which runtime wrote a record: the host and the session's start, stable across kernel
    restarts in one Colab runtime."""
    started = (clock or SessionClock()).started
    return f"{socket.gethostname()}-{datetime.fromtimestamp(started, timezone.utc):%Y%m%dT%H%M%S}"


class Checkpointer:
    """Save and restore a training run's state, safely and without stalling training.

    >>> ckpt = cs.Checkpointer("my-run", every="10min", keep_last=3)  # drive:checkpoints/my-run
    >>> restored = ckpt.restore()            # None, or the newest valid Checkpoint
    >>> start = restored.step + 1 if restored else 0
    >>> with ckpt:                           # a normal exit saves the last state given
    ...     for step in range(start, total):
    ...         loss = train_step()
    ...         ckpt.maybe_save(step, {"w": w}, metrics={"loss": loss})
    ...         if ckpt.should_stop:
    ...             break

    Args:
        location: a run name (stored at ``drive:checkpoints/<name>``) or a location: ``drive:...``,
            an fsspec URL, or a path that starts with ``/``, ``./``, ``../`` or ``~``.
        every: save at most this often (a duration); None for step-based saving only.
        every_steps: also save every this many steps.
        keep_last: keep this many newest checkpoints.
        keep_every: also keep one checkpoint per this interval (a duration).
        keep_best: also keep this many best checkpoints by *monitor* (NaN is never best).
        monitor: the metric that ranks checkpoints for *keep_best*.
        mode: ``"min"`` or ``"max"``: which *monitor* values are best.
        async_save: write in a background thread; ``save`` blocks only to copy the state.
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
        monotonic: the monotonic clock for intervals and retries (tests pass a fake).
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Location,
        *,
        every: Duration | None = "10min",
        every_steps: int | None = None,
        keep_last: int = 3,
        keep_every: Duration | None = None,
        keep_best: int | None = None,
        monitor: str = "loss",
        mode: Literal["min", "max"] = "min",
        async_save: bool = True,
        clock: SessionClock | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        lease_ttl: Duration = "2min",
        takeover: bool = False,
        margin_floor: Duration = "60s",
        save_on_interrupt: bool = True,
        timeout: Duration = "60s",
        close_timeout: Duration = "2min",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if keep_last < 1:
            raise ConfigError("keep_last must be at least 1: the newest checkpoint is always kept")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', not {mode!r}")
        if every_steps is not None and every_steps < 1:
            raise ConfigError("every_steps must be a positive number of steps")
        if keep_best is not None and keep_best < 1:
            raise ConfigError("keep_best must be a positive number of checkpoints, or None")
        self.location = run_location(location)
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
        self.clock = clock or SessionClock()
        self.lease_ttl = parse_duration(lease_ttl, name="lease_ttl")
        self.takeover = takeover
        self.margin_floor = parse_duration(margin_floor, name="margin_floor")
        self.save_on_interrupt = save_on_interrupt
        self.timeout = parse_duration(timeout, name="timeout")
        self.close_timeout = parse_duration(close_timeout, name="close_timeout")
        self._monotonic = monotonic

        self.local, self.remote = run_stores(self.location, local_dir, timeout=self.timeout)
        self.local_dir = Path(self.local.root)
        self.session = session_id(self.clock)
        self.attempt = uuid.uuid4().hex[:8]  # tells a resume on the same runtime in the history
        self.policy = self._policy()
        self.history = HistoryLog(self.local, self.remote, session=self.session)
        lease_where = self.remote or self.local
        self._lease = Lease(
            Store(lease_where.location, timeout=min(self.timeout, LEASE_TIMEOUT), durable=True)
            if self.remote is not None
            else self.local,
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
                monotonic=monotonic,
            )
            if self.remote is not None
            else None
        )

        self.should_stop = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="colabsession-ckpt")
        self._pending: Future[None] | None = None
        self._error: BaseException | None = None
        self._writing = False
        self._restore_called = False
        self._restored_step: int | None = None
        self._newer_than_restored = False
        self._last_saved_step: int | None = None
        self._last_save_at = monotonic()
        self._save_seconds: list[float] = []
        self._last_call: tuple[int, Any, dict[str, Any] | None] | None = None
        self._last_call_at: float | None = None
        self._step_seconds = 0.0
        self._interrupted = False
        self._stop_reason = "SIGTERM received"
        self._previous_sigterm: Any = None
        self._closed = False
        self._staging: list[Any] = []

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
        return self._last_saved_step

    # Saving ------------------------------------------------------------------------------

    def save(self, step: int, state: Any, *, metrics: dict[str, Any] | None = None) -> None:
        """Save *state* as *step* now. With ``async_save`` this returns once the state is copied
        to host memory; the write to the local disk goes on in the background (one at a time),
        and the copy to the location after it, in a thread of its own."""
        step = _check_step(step)
        self._check_open()
        self.wait()  # at most one save in flight; surfaces the previous save's failure
        clean = _clean_metrics(metrics)
        self._begin_writing()
        # A synchronous save writes the caller's own arrays: the caller waits meanwhile.
        tree, leaves = flatten(state, reuse=self._staging, copy=self.async_save)
        if self.async_save:
            self._staging = leaves  # free again once this save is written: wait() comes first
        if clean:
            self.history.append(make_record(step, self.session, clean, self.attempt))
        started = self._monotonic()
        self._last_saved_step = step
        self._last_save_at = started

        def job() -> None:
            self._commit(step, tree, leaves, clean)
            self._save_seconds.append(self._monotonic() - started)

        if self.async_save:
            self._pending = self._executor.submit(self._guarded, job)
        else:
            self._guarded(job)
            self._raise_pending_error()

    def maybe_save(self, step: int, state: Any, *, metrics: dict[str, Any] | None = None) -> bool:
        """Save if the interval (``every`` or ``every_steps``) has passed, or if the session
        deadline is near: then the save is waited for and :attr:`should_stop` turns True.
        Returns whether it saved.

        *state* may be a function that returns the state: it is called only when a save is
        due, which spares gathering a large state at every step."""
        step = _check_step(step)
        self._check_open()
        now = self._monotonic()
        if self._last_call_at is not None:
            self._step_seconds = 0.8 * self._step_seconds + 0.2 * (now - self._last_call_at)
        self._last_call_at = now
        self._last_call = (step, state, metrics)
        if self.should_stop:
            return False
        if self._final_save_due():
            why = (
                self._stop_reason
                if self._interrupted
                else f"{format_duration(self.clock.remaining)} left in this session"
            )
            logger.warning("colabsession: %s: saving step %d and stopping", why, step)
            self.save(step, _gather(state), metrics=metrics)
            self.wait()
            self.should_stop = True
            return True
        if self._interval_due(step, now):
            self.save(step, _gather(state), metrics=metrics)
            return True
        if metrics:
            self.log(step, **metrics)
        return False

    def prepare(self) -> None:
        """Take the run's lease and check that it can be written, now rather than at the first
        save: call it after :meth:`restore` and before training, so that a location you cannot
        write to fails in seconds, not after the first epoch."""
        self._check_open()
        self._begin_writing()

    @property
    def stop_due(self) -> bool:
        """Whether the next :meth:`maybe_save` saves and stops: the session deadline is near,
        SIGTERM came, or :meth:`request_stop` was called."""
        return not self.should_stop and not self._closed and self._final_save_due()

    def due(self, step: int) -> bool:
        """Whether ``maybe_save(step, ...)`` would save now: the interval has passed, the
        session deadline is near, or SIGTERM came. Lets a caller gather what only a save needs
        (metrics for the checkpoint list, say) only then."""
        if self.should_stop or self._closed:
            return False
        return self._final_save_due() or self._interval_due(step, self._monotonic())

    def _final_save_due(self) -> bool:
        return self._interrupted or self.clock.remaining <= self.margin

    def _interval_due(self, step: int, now: float) -> bool:
        last = self._last_saved_step if self._last_saved_step is not None else -1
        return (self.every is not None and now - self._last_save_at >= self.every) or (
            self.every_steps is not None and step - last >= self.every_steps
        )

    def restart(self) -> None:
        """Start the run over instead of resuming it. At the first save every checkpoint of
        the run is set aside (renamed ``parked-...``) and its history so far moved to a
        ``parked-history...`` file: nothing is deleted.

        >>> ckpt = cs.Checkpointer("my-run"); ckpt.restart()  # doctest: +SKIP
        """
        self.wait()
        self._restore_called = True
        self._writing = False
        self._restored_step = None
        self._newer_than_restored = True
        self._last_saved_step = None

    @property
    def margin(self) -> float:
        """Seconds before the deadline at which the final save starts: the floor, or the
        slowest recent save times a safety factor plus two steps, whichever is more."""
        slowest = max(self._save_seconds[-5:], default=0.0)
        return max(self.margin_floor, SAFETY * slowest + 2 * self._step_seconds)

    def log(self, step: int, /, **metrics: Any) -> None:
        """Add metrics for *step* to the run's history without saving a checkpoint."""
        step = _check_step(step)
        self._check_open()
        clean = _clean_metrics(metrics)
        self._begin_writing()
        if clean:
            self.history.append(make_record(step, self.session, clean, self.attempt))

    def wait(self) -> None:
        """Block until the save in flight is committed to the local disk (not the location:
        see :meth:`close`)."""
        pending = self._pending
        if pending is not None:
            pending.result()
            self._pending = None
        self._raise_pending_error()

    def close(self) -> None:
        """Wait for the save in flight, give the location up to ``close_timeout`` to receive
        what is still only local (saying what stays local), and release the lease. Always
        releases, even when the last save failed (which it then raises)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        except LeaseError as exc:  # said at the save or log that met it; nothing to wait for
            logger.warning("colabsession: %s", exc)
        finally:
            try:
                self._final_sync()
            finally:
                if self._replicator is not None:
                    self._replicator.stop()
                self._lease.release()
                self._executor.shutdown(wait=True)

    def sync(self, timeout: Duration | None = None) -> list[int]:
        """Copy what is only local to the location now, waiting up to *timeout* (default
        ``close_timeout``); return the steps that are still not there (empty: all are).

        >>> ckpt.sync("30s")  # before something that may end the runtime  # doctest: +SKIP
        []
        """
        self.wait()
        if self._replicator is None or not self._writing:
            return []
        limit = self.close_timeout if timeout is None else parse_duration(timeout, name="timeout")
        return self._replicator.flush(limit)

    def _final_sync(self) -> None:
        if not self._writing or self._lease.lost or self._replicator is None:
            return
        left = self._replicator.flush(self.close_timeout)
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

    def __enter__(self) -> Checkpointer:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
            except (ValueError, OSError):  # not allowed here (some embedded interpreters)
                self._previous_sigterm = None
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
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None
            self.close()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Cooperative, like submitit: the next maybe_save() saves and asks the loop to stop.
        self.request_stop("SIGTERM received")

    def request_stop(self, why: str = "a stop was asked for") -> None:
        """Save at the next :meth:`maybe_save` and then stop (:attr:`should_stop`), as for
        SIGTERM: safe to call from a signal handler (a Ctrl-C that should end the loop at a
        step boundary, say)."""
        self._stop_reason = why
        self._interrupted = True

    def _save_last(self, why: str) -> None:
        """Save the state last given to maybe_save if it is newer than the last checkpoint."""
        if self._last_call is None or self._closed or self._lease.lost:
            return
        step, state, metrics = self._last_call
        if self._last_saved_step is not None and step <= self._last_saved_step:
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
                f"cannot take {self.location} over ({reason(exc)}): try again when it answers"
            ) from None
        if lease is None:
            return None
        age = format_duration(max(0.0, time.time() - lease.heartbeat))
        return f"host {lease.host}, pid {lease.pid}, heard of {age} ago"

    # Restoring ---------------------------------------------------------------------------

    def restore(
        self, step: int | None = None, *, device: Any = None, like: Any = None
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

        Saving after restoring an older step than the newest abandons the newer ones: at the
        first save they are set aside (renamed ``parked-...``), as the history drops its
        records past the restored step."""
        if step is not None:
            step = _check_step(step)
        check_device(device)
        self.wait()
        entries = listed = self._entries()
        newest_step = max((e.step for e in entries), default=None)
        if step is not None:
            entries = [e for e in entries if e.step == step]
            if not entries:
                available = sorted({e.step for e in listed})
                raise CheckpointError(
                    f"no checkpoint of step {step} in {self.location}; available: "
                    f"{available or 'none'}"
                )
        self._restore_called = True
        self._writing = False  # the next write takes up from the restored step afresh
        for entry in entries:
            try:
                state = entry.store.load(entry)
            except (Damaged, OSError, TimeoutError) as exc:
                logger.warning(
                    "colabsession: skipping checkpoint step %d in %s: %s",
                    entry.step,
                    entry.where,
                    exc if isinstance(exc, Damaged) else reason(exc),
                )
                continue
            self._restored_step = entry.step
            self._newer_than_restored = newest_step is not None and newest_step > entry.step
            self._last_saved_step = entry.step
            manifest = entry.manifest
            state = to_frameworks(state, device)
            return Checkpoint(
                step=entry.step,
                state=state if like is None else into(like, state),
                metrics=dict(manifest.metrics),
                created=manifest.created,
                session=manifest.session,
                source=entry.where,
            )
        if step is not None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.location} is damaged everywhere"
            )
        self._restored_step = None
        self._newer_than_restored = newest_step is not None
        return None

    def latest_step(self) -> int | None:
        """The newest committed step (without verifying its arrays)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def steps(self) -> list[int]:
        """All committed steps, local or remote, oldest first."""
        return sorted({e.step for e in self._entries()})

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every committed checkpoint, local and at the location, oldest first."""
        return [
            CheckpointInfo(
                e.step, e.where, e.manifest.created, dict(e.manifest.metrics), e.manifest.session
            )
            for e in sorted(self._entries(), key=lambda e: (e.step, e.store is not self.local))
        ]

    def verify(self) -> list[tuple[int, str, str | None]]:
        """Check every checkpoint file: (step, where, None if valid else why not)."""
        results: list[tuple[int, str, str | None]] = []
        for entry in self._entries():
            try:
                entry.store.load(entry)
                results.append((entry.step, entry.where, None))
            except (Damaged, OSError, TimeoutError) as exc:
                results.append((entry.step, entry.where, str(exc)))
        for store in (self.local, self.remote):
            for name, why in store.damaged() if store is not None else []:
                step = _layout.parse_name(name)
                if step is not None:
                    results.append((step, f"{store}/{name}", why))
        return sorted(results)

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
        try:
            self.local.makedirs()
        except OSError as exc:
            raise CheckpointError(
                f"cannot write to {self.local_dir} ({reason(exc)}): pass a location (or "
                "local_dir=) in a folder you can write to"
            ) from None
        try:
            self._lease.acquire()
        except (OSError, TimeoutError) as exc:
            if self.remote is None:
                raise CheckpointError(
                    f"cannot write the lease of {self.location} ({reason(exc)}): free disk "
                    "space or choose another location"
                ) from None
            logger.warning(
                "colabsession: %s does not answer (%s): saving locally in %s; copying to it "
                "resumes when it answers",
                self.location,
                reason(exc),
                self.local_dir,
            )
        try:
            self.history.start(self._restored_step, truncate=self._restore_called)
            if self._restore_called and self._newer_than_restored:
                self._park_newer(self._restored_step)
        except OSError as exc:
            self._lease.release()
            raise CheckpointError(
                f"cannot write the history in {self.local_dir} ({reason(exc)}): free disk space "
                "(!df -h) or pass local_dir= elsewhere"
            ) from None
        self._writing = True

    def _park_newer(self, step: int | None) -> None:
        limit = -1 if step is None else step
        parked = []
        for entry in self.local.entries(warn=False):
            if entry.step > limit:
                self.local.park(entry)
                parked.append(entry.step)
        if self._replicator is not None:
            self._replicator.park_newer_than(limit)
        logger.warning(
            "colabsession: %s, so the %scheckpoints%s are set aside (renamed parked-...) in %s",
            "the run starts over" if step is None else f"training continues from step {step}",
            "" if step is None else "newer ",
            f" {parked}" if parked else "",
            self.location,
        )

    def _commit(self, step: int, tree: Any, leaves: list[Any], metrics: dict[str, Any]) -> None:
        """The background part of a save: write the file locally, apply retention there, and
        hand it to the replicator."""
        arrays = host_arrays(leaves)
        fields = {
            "step": step,
            "time": time.time(),
            "session": self.session,
            "metrics": {k: _json_metric(v) for k, v in metrics.items()},
            "tree": tree,
        }
        self.local.commit(_layout.file_name(step), lambda f: _layout.write(f, arrays, **fields))
        self._retain_local()
        if self._replicator is not None:
            self._replicator.notify()

    def _retain_local(self) -> None:
        for entry in split(self.local.entries(warn=False), self.policy)[1]:
            self.local.delete(entry)
        for name in self.local.leftovers():  # temporary files of saves cut short
            path = Path(self.local.path(name))
            try:
                if time.time() - path.stat().st_mtime > 3600:
                    path.unlink()
            except OSError:
                pass

    def _guarded(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            self._error = exc

    def _raise_pending_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            if isinstance(error, ColabSessionError):
                raise error
            raise CheckpointError(
                f"saving to the local folder {self.local_dir} failed ({reason(error)}). Training "
                "state is not protected: free disk space (!df -h) or pass local_dir= elsewhere"
            ) from error
        if self._lease.lost:
            raise LeaseError(self._lease.lost)

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed: create a new one to save again")
        if self._lease.lost:
            raise LeaseError(self._lease.lost)

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.location)!r}, every={self.every}, "
            f"keep_last={self.keep_last}, local_dir={str(self.local_dir)!r})"
        )


# Helpers -------------------------------------------------------------------------------------


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
