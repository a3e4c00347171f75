"""The run's curves where people look at them: TensorBoard event files and Weights & Biases.

TensorBoard appends to its event files in place, so a runtime that goes away loses their tail.
Here they are generated from the run's history (verified, replicated like the checkpoints)
instead: written whole under a temporary name and renamed into place, so a new session writes
them again from the history, complete, and TensorBoard never reads half a file.

A W&B run resumed in a new session needs the id of the run it continues; colabsession keeps it
in the run's folder (``wandb.json``, a small record, validated when read), so every session of
a colabsession run logs to the same W&B run.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.files import reason
from colabsession._core.optional import require
from colabsession._core.records import InvalidRecord, Record, parse_record
from colabsession._drive.location import Location
from colabsession._storage.runs import run_stores

logger = logging.getLogger(__name__)

EVENTS = "events.out.tfevents.colabsession-history"  # "tfevents" in it: TensorBoard reads it
WANDB = "wandb.json"
_NOT_METRICS = ("step", "time", "session", "attempt", "epoch")
_WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# TensorBoard ---------------------------------------------------------------------------------


def write_tensorboard(records: Iterable[dict[str, Any]], logdir: str | os.PathLike[str]) -> Path:
    """Write *records* (a history's) as one TensorBoard event file in *logdir*, replacing the
    one an earlier call wrote there: one scalar per numeric metric and record, at its step and
    wall time. Returns the file's path."""
    require("tensorboard", extra="tensorboard", purpose="History.to_tensorboard()")
    # tensorboard's records and protos: its EventFileWriter would import TensorFlow (seconds)
    from tensorboard.compat.proto.event_pb2 import Event  # type: ignore[import-untyped]
    from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]
    from tensorboard.summary.writer.record_writer import (  # type: ignore[import-untyped]
        RecordWriter,
    )

    folder = Path(logdir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    first = Event(wall_time=time.time(), file_version="brain.Event:2")
    writer.write(first.SerializeToString())
    for record in records:
        values = [
            Summary.Value(tag=name, simple_value=float(value))
            for name, value in record.items()
            if name not in _NOT_METRICS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ]
        if values:
            event = Event(
                wall_time=float(record["time"]),
                step=int(record["step"]),
                summary=Summary(value=values),
            )
            writer.write(event.SerializeToString())
    # Written under a name TensorBoard skips, then renamed over the old file: a reader sees
    # the old events or the new, never half of either.
    target = folder / EVENTS
    partial = folder / f".{EVENTS}.{os.getpid()}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


# Weights & Biases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WandbRun(Record):
    """The W&B run that a colabsession run logs to, kept in the run's folder."""

    KIND: ClassVar[str] = "colabsession-wandb"
    id: str


def wandb_id(run: Any, *, timeout: float = 30.0) -> str:
    """The W&B run id of the colabsession *run* (a run name, a location, or a Checkpointer):
    the same in every session, made and kept in the run's folder (``wandb.json``) on first
    use. Pass it to ``wandb.init(id=..., resume="allow")``, or use :func:`wandb_init`.

    >>> run_id = cs.wandb_id("my-run")                                  # doctest: +SKIP
    >>> wandb.init(project="p", id=run_id, resume="allow")              # doctest: +SKIP
    """
    location, local_dir = _where(run)
    local, remote = run_stores(location, local_dir, timeout=timeout)
    stores = [s for s in (remote, local) if s is not None]
    found: str | None = None
    for store in stores:
        found = _read_id(store)
        if found is not None:
            break
    if found is None:
        found = secrets.token_hex(4)  # W&B's own ids are 8 lowercase letters and digits
        logger.info("colabsession: new W&B run id %s for %s", found, location)
    body = WandbRun(id=found).to_json()
    for store in reversed(stores):  # the local copy first: it answers when Drive does not
        try:
            if _read_id(store, quiet=True) != found:
                store.makedirs()
                store.replace(WANDB, body)
        except (OSError, TimeoutError) as exc:
            if store is local:
                raise CheckpointError(
                    f"cannot keep the W&B run id in {store} ({reason(exc)})", path=str(store)
                ) from None
            logger.warning(
                "colabsession: cannot keep the W&B run id on %s (%s): a new session may not "
                "find it; it is in the local copy",
                store,
                reason(exc),
            )
    return found


def wandb_init(run: Any, **kwargs: Any) -> Any:
    """``wandb.init()`` continuing the W&B run of the colabsession *run* in every session
    (its id from :func:`wandb_id`, ``resume="allow"``; *kwargs* go to ``wandb.init``, which
    may override either). Returns the W&B run.

    >>> wb = cs.wandb_init("my-run", project="digits")                  # doctest: +SKIP
    >>> wb.log({"loss": 0.3}, step=120)                                 # doctest: +SKIP
    """
    wandb = require("wandb", extra="wandb", purpose="cs.wandb_init()")
    options = {"id": wandb_id(run), "resume": "allow", **kwargs}
    return wandb.init(**options)


def _where(run: Any) -> tuple[Any, Any]:
    if isinstance(run, (str, os.PathLike, Location)):
        return run, None
    if hasattr(run, "location") and hasattr(run, "local_dir"):  # a Checkpointer
        return run.location, run.local_dir
    raise ConfigError(
        f"run must be a run name, a location or a Checkpointer, not {type(run).__name__}"
    )


def _read_id(store: Any, *, quiet: bool = False) -> str | None:
    try:
        data = store.read(WANDB, limit=4096)
    except FileNotFoundError:
        return None
    except (OSError, TimeoutError) as exc:
        if not quiet:
            logger.warning("colabsession: cannot read %s/%s (%s)", store, WANDB, reason(exc))
        return None
    try:
        record = parse_record(WandbRun, data, max_bytes=4096, what=f"{store}/{WANDB}")
        if not _WANDB_ID.fullmatch(record.id):
            raise InvalidRecord(f"{record.id[:80]!r} is not a W&B run id")
    except InvalidRecord as exc:
        if not quiet:
            logger.warning("colabsession: skipping %s/%s: %s", store, WANDB, exc)
        return None
    return record.id
