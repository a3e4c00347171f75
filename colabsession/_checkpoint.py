"""Atomic, checksummed, non-blocking, deadline-aware checkpoints with a loss history.

Layout of a run's folder (the *location*, and its local mirror)::

    ckpt-000000001200/arrays.npz      the state's arrays (npz, loaded without pickle)
    ckpt-000000001200/tree.json       the rest of the state, and where each array goes
    ckpt-000000001200/MANIFEST.json   step, metrics, size and sha256 of each file; written last
    history.jsonl                     one record per logged step, across sessions
    lease.json                        which notebook writes this run

A checkpoint counts only once its manifest is there and every file matches it. Locally it is
written in a temporary folder, fsynced and renamed into place; at the location (Drive, a
bucket) the manifest uploaded last is the commit marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

from ._clock import SessionClock
from ._errors import CheckpointError, ConfigError, LeaseError
from ._history import HISTORY, newest_history, read_history_file, write_history_file
from ._lease import Lease
from ._serialize import dumps, flatten, unflatten
from ._storage import default_local_dir, fsync_file, is_direct, reason, sha256_file
from ._units import Duration, format_duration, parse_duration
from .drive import Location, resolve

logger = logging.getLogger("colabsession.checkpoint")

PREFIX = "ckpt-"
MANIFEST = "MANIFEST.json"
ARRAYS = "arrays.npz"
TREE = "tree.json"
LEASE = "lease.json"
FORMAT = "colabsession-checkpoint"
SAFETY = 3.0  # the deadline margin covers this many times the slowest recent save


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


@dataclass
class _Entry:
    """A committed checkpoint, as its manifest describes it."""

    step: int
    where: str  # "local" or "remote"
    path: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> float:
        return float(self.manifest.get("time", 0.0))


class _Invalid(Exception):
    pass


def session_id(clock: SessionClock | None = None) -> str:
    """Which runtime wrote a record: the host and the session's start, stable across kernel
    restarts in one Colab runtime."""
    started = (clock or SessionClock()).started
    return f"{socket.gethostname()}-{datetime.fromtimestamp(started, timezone.utc):%Y%m%dT%H%M%S}"


class Checkpointer:
    """Save and restore a training run's state, safely and without stalling training.

    >>> ckpt = cs.Checkpointer("drive:checkpoints/my-run", every="10min", keep_last=3)
    >>> restored = ckpt.restore()            # None, or the newest valid Checkpoint
    >>> start = restored.step + 1 if restored else 0
    >>> with ckpt:
    ...     for step in range(start, total):
    ...         loss = train_step()
    ...         ckpt.maybe_save(step, {"w": w}, metrics={"loss": loss})
    ...         if ckpt.should_stop:
    ...             break

    Args:
        location: where the run lives: a path, ``drive:...`` or an fsspec URL.
        every: save at most this often (a duration); None for step-based saving only.
        every_steps: also save every this many steps.
        keep_last: keep this many newest checkpoints.
        keep_every: also keep one checkpoint per this interval (a duration).
        keep_best: also keep this many best checkpoints by *monitor*.
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
    ) -> None:
        if keep_last < 1:
            raise ConfigError("keep_last must be at least 1: the newest checkpoint is always kept")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', not {mode!r}")
        if every_steps is not None and every_steps < 1:
            raise ConfigError("every_steps must be a positive number of steps")
        self.location = resolve(location)
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
        direct = is_direct(self.location) and local_dir is None
        self.local_dir = Path(
            self.location.path if direct else local_dir or default_local_dir(self.location)
        )
        self._remote: Location | None = None if direct else self.location
        self.session = session_id(self.clock)
        self._owner = f"{self.session}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

        self.should_stop = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="colabsession-ckpt")
        self._pending: Future[None] | None = None
        self._error: BaseException | None = None
        self._lock = threading.RLock()
        self._writing = False
        self._restore_called = False
        self._restored_step: int | None = None
        self._last_saved_step: int | None = None
        self._last_save_at = time.monotonic()
        self._save_seconds: list[float] = []
        self._last_call: tuple[int, Any, dict[str, Any] | None] | None = None
        self._last_call_at: float | None = None
        self._step_seconds = 0.0
        self._uploaded: set[int] = set()
        self._next_sync_at = 0.0
        self._sync_backoff = 5.0
        self._lease_obj: Lease | None = None
        self._interrupted = False
        self._previous_sigterm: Any = None
        self._closed = False
        self._staging: dict[str, Any] = {}
        self._last_record: dict[str, Any] | None = None  # the history's last line, once writing

    # Saving ------------------------------------------------------------------------------

    def save(self, step: int, state: Any, *, metrics: dict[str, Any] | None = None) -> None:
        """Save *state* as *step* now. With ``async_save`` this returns once the state is copied
        to host memory; the write goes on in the background (one at a time)."""
        self._check_open()
        self.wait()  # at most one save in flight; surfaces the previous save's failure
        self._begin_writing()
        tree, arrays = flatten(state, reuse=self._staging)
        self._staging = arrays  # free again once this save is written: wait() comes first
        clean = _clean_metrics(metrics)
        if clean:
            self._append_history(step, clean)
        started = time.monotonic()
        job = lambda: self._write(step, tree, arrays, clean, started)  # noqa: E731
        self._last_saved_step = step
        self._last_save_at = time.monotonic()
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
        now = time.monotonic()
        if self._last_call_at is not None:
            self._step_seconds = 0.8 * self._step_seconds + 0.2 * (now - self._last_call_at)
        self._last_call_at = now
        self._last_call = (step, state, metrics)
        if self.should_stop:
            return False
        if self._interrupted or self.clock.remaining <= self.margin:
            why = (
                "SIGTERM received"
                if self._interrupted
                else (f"{format_duration(self.clock.remaining)} left in this session")
            )
            logger.warning("colabsession: %s: saving step %d and stopping", why, step)
            self.save(step, _gather(state), metrics=metrics)
            self.wait()
            self.should_stop = True
            return True
        due = (self.every is not None and now - self._last_save_at >= self.every) or (
            self.every_steps is not None
            and step - (self._last_saved_step if self._last_saved_step is not None else -1)
            >= self.every_steps
        )
        if due:
            self.save(step, _gather(state), metrics=metrics)
            return True
        if metrics:
            self.log(step, **metrics)
        self._maybe_background_sync()
        return False

    @property
    def margin(self) -> float:
        """Seconds before the deadline at which the final save starts: the floor, or the
        slowest recent save times a safety factor plus two steps, whichever is more."""
        slowest = max(self._save_seconds[-5:], default=0.0)
        return max(self.margin_floor, SAFETY * slowest + 2 * self._step_seconds)

    def log(self, step: int, **metrics: Any) -> None:
        """Add metrics for *step* to the run's history without saving a checkpoint."""
        self._check_open()
        self._begin_writing()
        self._append_history(step, _clean_metrics(metrics))

    def wait(self) -> None:
        """Block until the save in flight is written (locally and, if reachable, remotely)."""
        pending = self._pending
        if pending is not None:
            pending.result()
            self._pending = None
        self._raise_pending_error()

    def close(self) -> None:
        """Wait for pending writes, upload what is still local, and release the lease."""
        if self._closed:
            return
        try:
            self.wait()
            if self._writing:
                self._sync(final=True)
                self._lease().release()
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

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
            interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
            if interrupted and self.save_on_interrupt:
                self._save_on_interrupt()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None
            self.close()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Cooperative, like submitit: the next maybe_save() saves and asks the loop to stop.
        self._interrupted = True

    def _save_on_interrupt(self) -> None:
        if self._last_call is None:
            return
        step, state, metrics = self._last_call
        if self._last_saved_step is not None and step <= self._last_saved_step:
            return
        logger.warning("colabsession: interrupted: saving step %d before stopping", step)
        try:
            self.save(step, _gather(state), metrics=metrics)
            self.wait()
        except Exception:
            logger.exception("colabsession: the save at interruption failed")

    # Restoring ---------------------------------------------------------------------------

    def restore(self, step: int | None = None) -> Checkpoint | None:
        """The newest valid checkpoint (or the one for *step*) from the local mirror or the
        location, whichever has it; None when there is none. A checkpoint without a committed
        manifest, or whose files do not match it, is skipped with a warning, never loaded."""
        self.wait()
        entries = self._entries(committed_only=False)
        if step is not None:
            entries = [e for e in entries if e.step == step]
            if not entries:
                available = sorted({e.step for e in self._entries()})
                raise CheckpointError(
                    f"no checkpoint of step {step} in {self.location}; available: "
                    f"{available or 'none'}"
                )
        self._restore_called = True
        for entry in entries:
            try:
                checkpoint = self._load(entry)
            except _Invalid as exc:
                logger.warning(
                    "colabsession: skipping checkpoint step %d in %s: %s",
                    entry.step,
                    self._describe(entry),
                    exc,
                )
                continue
            self._restored_step = checkpoint.step
            self._last_saved_step = checkpoint.step
            return checkpoint
        if step is not None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.location} is damaged everywhere"
            )
        self._restored_step = None
        return None

    def latest_step(self) -> int | None:
        """The newest committed step (without verifying its files)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def steps(self) -> list[int]:
        """All committed steps, local or remote, oldest first."""
        return sorted({e.step for e in self._entries()})

    def verify(self) -> list[tuple[int, str, str | None]]:
        """Check every checkpoint: (step, where, None if valid else why not)."""
        results: list[tuple[int, str, str | None]] = []
        for entry in self._entries(committed_only=False):
            try:
                self._load(entry)
                results.append((entry.step, self._describe(entry), None))
            except _Invalid as exc:
                results.append((entry.step, self._describe(entry), str(exc)))
        return sorted(results)

    def _describe(self, entry: _Entry) -> str:
        return entry.path if entry.where == "local" else f"{self.location}/{Path(entry.path).name}"

    def _entries(self, committed_only: bool = True) -> list[_Entry]:
        entries = self._local_entries(committed_only)
        if self._remote is not None:
            try:
                entries += self._remote_entries(committed_only)
            except OSError as exc:
                logger.warning(
                    "colabsession: cannot list %s (%s): using the local copy only",
                    self._remote,
                    exc,
                )
        # Newest first; for one step the local copy first (faster, and written first).
        return sorted(entries, key=lambda e: (-e.step, e.where != "local"))

    def _local_entries(self, committed_only: bool) -> list[_Entry]:
        entries: list[_Entry] = []
        if not self.local_dir.is_dir():
            return entries
        for child in self.local_dir.iterdir():
            step = _step_of(child.name)
            if step is None:
                continue
            manifest = _read_json(child / MANIFEST)
            if manifest is None and committed_only:
                continue
            entries.append(_Entry(step, "local", str(child), manifest or {}))
        return entries

    def _remote_entries(self, committed_only: bool) -> list[_Entry]:
        assert self._remote is not None
        fs, root = self._remote.fs, self._remote.path
        try:
            listing = fs.ls(root, detail=False)
        except FileNotFoundError:
            return []
        entries = []
        for child in listing:
            name = str(child).rstrip("/").rsplit("/", 1)[-1]
            step = _step_of(name)
            if step is None:
                continue
            path = f"{root.rstrip('/')}/{name}"
            try:
                manifest = json.loads(fs.cat_file(f"{path}/{MANIFEST}"))
            except (FileNotFoundError, ValueError):
                manifest = None
            if manifest is None and committed_only:
                continue
            entries.append(_Entry(step, "remote", path, manifest or {}))
        return entries

    def _load(self, entry: _Entry) -> Checkpoint:
        import numpy as np

        manifest = entry.manifest
        if manifest.get("format") != FORMAT or "files" not in manifest:
            raise _Invalid(f"its {MANIFEST} is missing or unreadable (the save was cut short)")
        blobs = {}
        for name, expected in manifest["files"].items():
            try:
                data = self._read(entry, name)
            except OSError as exc:
                raise _Invalid(f"{name} cannot be read ({exc})") from None
            if len(data) != expected["size"]:
                raise _Invalid(
                    f"{name} has {len(data)} bytes, the manifest says {expected['size']}"
                )
            if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise _Invalid(f"{name} does not match its sha256 checksum")
            blobs[name] = data
        try:
            tree = json.loads(blobs[TREE])
            with np.load(io.BytesIO(blobs[ARRAYS]), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            state = unflatten(tree, arrays)
        except (KeyError, ValueError, OSError) as exc:
            raise _Invalid(f"its files cannot be decoded ({exc})") from None
        return Checkpoint(
            step=int(manifest["step"]),
            state=state,
            metrics=dict(manifest.get("metrics") or {}),
            created=datetime.fromtimestamp(float(manifest.get("time", 0)), timezone.utc),
            session=str(manifest.get("session", "")),
            source=self._describe(entry),
        )

    def _read(self, entry: _Entry, name: str) -> bytes:
        if entry.where == "local":
            return Path(entry.path, name).read_bytes()
        assert self._remote is not None
        return bytes(self._remote.fs.cat_file(f"{entry.path}/{name}"))

    # Writing (background thread) ----------------------------------------------------------

    def _guarded(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            self._error = exc

    def _raise_pending_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            if isinstance(error, CheckpointError):
                raise error
            raise CheckpointError(
                f"saving to the local folder {self.local_dir} failed: {error}. Training state is "
                "not protected: free disk space (!df -h) or pass local_dir= elsewhere"
            ) from error
        if self._lease_obj is not None and self._lease_obj.lost:
            raise LeaseError(self._lease_obj.lost)

    def _write(
        self, step: int, tree: Any, arrays: dict[str, Any], metrics: dict[str, Any], started: float
    ) -> None:
        self._lease().check()
        self._commit_local(step, tree, arrays, metrics)
        self._retain_local()
        self._sync()
        self._save_seconds.append(time.monotonic() - started)

    def _commit_local(
        self, step: int, tree: Any, arrays: dict[str, Any], metrics: dict[str, Any]
    ) -> None:
        import numpy as np

        self.local_dir.mkdir(parents=True, exist_ok=True)
        final = self.local_dir / _dirname(step)
        temp = self.local_dir / f".tmp-{_dirname(step)}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            with open(temp / ARRAYS, "wb") as f:
                np.savez(f, **arrays)
                fsync_file(f)
            with open(temp / TREE, "wb") as f:
                f.write(dumps(tree))
                fsync_file(f)
            files = {
                name: {"size": (temp / name).stat().st_size, "sha256": sha256_file(temp / name)}
                for name in (ARRAYS, TREE)
            }
            now = time.time()
            manifest = {
                "format": FORMAT,
                "version": 1,
                "step": step,
                "time": now,
                "created": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                "session": self.session,
                "metrics": metrics,
                "files": files,
            }
            with open(temp / MANIFEST, "wb") as f:
                f.write(json.dumps(manifest, indent=1).encode())
                fsync_file(f)
            if final.exists():  # the same step saved again: replace it
                old = self.local_dir / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                final.rename(old)
                temp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                temp.rename(final)
            _fsync_dir(self.local_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def _sync(self, final: bool = False) -> None:
        """Copy committed local checkpoints and the history up to the location. A failure is
        reported and retried later; it never stops training."""
        if self._remote is None:
            return
        try:
            # One listing (and one read of each manifest) serves the upload and the retention.
            remote = {e.step: e for e in self._remote_entries(True)}
            uploaded = self._upload_missing(remote)
            self._upload_history()
            self._retain_remote(list(remote.values()))
            self._sync_backoff = 5.0
            self._next_sync_at = 0.0
            if uploaded:
                logger.debug("colabsession: uploaded steps %s to %s", uploaded, self._remote)
        except LeaseError:
            raise
        except Exception as exc:
            pending = sorted({e.step for e in self._local_entries(True)} - self._uploaded)
            self._next_sync_at = time.monotonic() + self._sync_backoff
            logger.warning(
                "colabsession: could not write to %s (%s). Checkpoint steps %s are saved "
                "locally in %s but NOT yet on %s; %s",
                self._remote,
                reason(exc),
                pending,
                self.local_dir,
                self._remote,
                "they are lost if this runtime ends now"
                if final
                else f"trying again in {format_duration(self._sync_backoff)}",
            )
            self._sync_backoff = min(self._sync_backoff * 2, 600.0)

    def _maybe_background_sync(self) -> None:
        due_sync = self._next_sync_at and time.monotonic() >= self._next_sync_at
        if due_sync and (self._pending is None or self._pending.done()):
            self._raise_pending_error()
            self._pending = self._executor.submit(self._guarded, self._sync)

    def _upload_missing(self, remote: dict[int, _Entry]) -> list[int]:
        """Upload the local checkpoints that *remote* (the location's, by step) lacks, and add
        them to it."""
        assert self._remote is not None
        fs, root = self._remote.fs, self._remote.path.rstrip("/")
        local = sorted(self._local_entries(True), key=lambda e: e.step)
        todo = [e for e in local if e.step not in self._uploaded]
        done = []
        for entry in todo:
            there = remote.get(entry.step)
            if there is not None and there.manifest.get("files") == entry.manifest.get("files"):
                self._uploaded.add(entry.step)
                continue
            target = f"{root}/{Path(entry.path).name}"
            fs.makedirs(target, exist_ok=True)
            if there is not None:  # a different save of this step: un-commit it first
                fs.rm_file(f"{target}/{MANIFEST}")
            for name in (ARRAYS, TREE, MANIFEST):  # the manifest last: it commits
                fs.put_file(str(Path(entry.path, name)), f"{target}/{name}")
            remote[entry.step] = _Entry(entry.step, "remote", target, entry.manifest)
            self._uploaded.add(entry.step)
            done.append(entry.step)
        return done

    # Retention ---------------------------------------------------------------------------

    def _keep(self, entries: list[_Entry]) -> set[int]:
        ordered = sorted(entries, key=lambda e: e.step)
        keep = {e.step for e in ordered[-self.keep_last :]}
        if self.keep_every:
            seen: set[int] = set()
            for entry in ordered:
                bucket = int(entry.time // self.keep_every)
                if bucket not in seen:
                    seen.add(bucket)
                    keep.add(entry.step)
        if self.keep_best:
            scored = [
                e
                for e in ordered
                if isinstance(e.manifest.get("metrics", {}).get(self.monitor), (int, float))
            ]
            scored.sort(
                key=lambda e: e.manifest["metrics"][self.monitor], reverse=self.mode == "max"
            )
            keep.update(e.step for e in scored[: self.keep_best])
        return keep

    def _retain_local(self) -> None:
        entries = self._local_entries(True)
        keep = self._keep(entries)
        for entry in entries:
            if entry.step not in keep:
                shutil.rmtree(entry.path, ignore_errors=True)
        for child in self.local_dir.iterdir():  # leftovers of saves cut short
            if child.name.startswith((".tmp-", ".old-")) and _older_than(child, 3600):
                shutil.rmtree(child, ignore_errors=True)

    def _retain_remote(self, entries: list[_Entry]) -> None:
        assert self._remote is not None
        keep = self._keep(entries)
        for entry in entries:
            if entry.step not in keep:
                # The manifest first: a half-deleted checkpoint is then merely uncommitted.
                self._remote.fs.rm_file(f"{entry.path}/{MANIFEST}")
                self._remote.fs.rm(entry.path, recursive=True)
                self._uploaded.discard(entry.step)

    # History -----------------------------------------------------------------------------

    def _append_history(self, step: int, metrics: dict[str, Any]) -> None:
        if not metrics:
            return
        record = {"step": step, "time": time.time(), "session": self.session, **metrics}
        path = self.local_dir / HISTORY
        with self._lock:
            last = self._last_record
            if last is not None and last["step"] == step and last["session"] == self.session:
                # log() and save() of one step make one record: rewrite the last line (rare).
                records = read_history_file(path)
                records[-1].update(record)
                write_history_file(path, records)
                self._last_record = records[-1]
            else:  # the common case appends, without reading the history back
                self.local_dir.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, allow_nan=True) + "\n")
                self._last_record = record

    def _upload_history(self) -> None:
        assert self._remote is not None
        path = self.local_dir / HISTORY
        if path.exists():
            with self._lock:
                data = path.read_bytes()
            self._remote.fs.pipe_file(f"{self._remote.path.rstrip('/')}/{HISTORY}", data)

    def _begin_writing(self) -> None:
        """The first write of this session: take the lease, bring the history up to date, and
        drop history records past the restored step."""
        if self._writing:
            return
        self._lease().acquire()
        with self._lock:
            path = self.local_dir / HISTORY
            records = newest_history(path, self._remote)
            if self._restore_called:
                limit = self._restored_step if self._restored_step is not None else -1
                records = [r for r in records if r["step"] <= limit]
            self.local_dir.mkdir(parents=True, exist_ok=True)
            write_history_file(path, records)
            self._last_record = records[-1] if records else None
        self._writing = True

    # Lease -------------------------------------------------------------------------------

    def _lease(self) -> Lease:
        if self._lease_obj is None:
            where = self._remote or resolve(self.local_dir)
            self._lease_obj = Lease(
                where.fs,
                f"{where.path.rstrip('/')}/{LEASE}",
                owner=self._owner,
                session=self.session,
                ttl=self.lease_ttl,
                takeover=self.takeover,
                what=str(self.location),
            )
        return self._lease_obj

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed: create a new one to save again")

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.location)!r}, every={self.every}, "
            f"keep_last={self.keep_last}, local_dir={str(self.local_dir)!r})"
        )


# Helpers -------------------------------------------------------------------------------------


def _gather(state: Any) -> Any:
    return state() if callable(state) else state


def _dirname(step: int) -> str:
    if step < 0:
        raise ConfigError(f"a checkpoint's step must not be negative, got {step}")
    return f"{PREFIX}{step:012d}"


def _step_of(name: str) -> int | None:
    if not name.startswith(PREFIX):
        return None
    try:
        return int(name[len(PREFIX) :])
    except ValueError:
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _clean_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if hasattr(value, "item") and callable(value.item):
            value = value.item()  # numpy or tensor scalars
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise CheckpointError(f"metric {key!r} is a {type(value).__name__}: log numbers")
        clean[str(key)] = value
    return clean
