"""A run's loss history across sessions: one record per logged step, as a table or a plot.

On the local disk the history is ``history.jsonl``, only ever appended to (a new file renamed
over it when a resume drops the records past the restored step). At the location it is kept in
numbered revisions, ``history.000004.jsonl``: each session writes a new revision whole, then
appends to it where the file system can append (the Drive mount) or writes the next revision
whole where it cannot (the Drive API). A revision starts with a header saying how many records it
was written with; a revision cut short holds fewer and is never read, so a kill mid-write can
never replace a longer history with a shorter one. Lines that are not valid UTF-8 JSON records
are skipped.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from ._errors import ConfigError
from ._optional import installed, require
from ._storage import reason, run_stores
from ._store import Store
from .drive import Location

logger = logging.getLogger(__name__)

LOCAL = "history.jsonl"
KIND = "colabsession-history"
RESERVED = ("step", "time", "session")
_REVISION = re.compile(r"history\.(\d{6,})\.jsonl")

Record = dict[str, Any]


def history(location: str | os.PathLike[str] | Location) -> Any:
    """Every logged record of the run, oldest first: a pandas DataFrame (columns ``step``,
    ``time``, ``session`` and one per metric) when pandas is installed, else a list of dicts.

    >>> cs.history("my-run").plot(x="step", y="loss")  # doctest: +SKIP
    """
    records = read_history(location)
    if not installed("pandas"):
        return records
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    if "time" in frame:
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def plot_history(
    location: str | os.PathLike[str] | Location,
    metrics: list[str] | None = None,
    *,
    ax: Any = None,
) -> Any:
    """Draw each metric against the step with matplotlib, with a dashed line where a new
    session (a restarted runtime) took over. Returns the Axes.

    >>> cs.plot_history("my-run", ["loss", "val_loss"])  # doctest: +SKIP
    """
    plt = require(
        "matplotlib.pyplot", extra="plot", purpose="cs.plot_history()", package="matplotlib"
    )
    records = read_history(location)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    names = metrics or sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k not in (*RESERVED, "epoch") and isinstance(v, (int, float))
        }
    )
    for name in names:
        points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name)
    for before, after in itertools.pairwise(records):
        if after.get("session") != before.get("session"):
            ax.axvline(after["step"], color="grey", linestyle="--", linewidth=0.8)
    if len({r.get("session") for r in records}) > 1:
        ax.plot([], [], color="grey", linestyle="--", linewidth=0.8, label="session restart")
    ax.set_xlabel("step")
    ax.set_title(str(location))
    if names:
        ax.legend()
    return ax


def read_history(
    location: str | os.PathLike[str] | Location,
    local_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 30.0,
) -> list[Record]:
    """The run's history records: the location's or its local mirror's, whichever is newer. A
    location that does not answer within *timeout* seconds leaves the local copy."""
    local, remote = run_stores(location, local_dir, timeout=timeout)
    return HistoryLog(local, remote, session="").newest()


def make_record(step: int, session: str, metrics: dict[str, Any]) -> Record:
    """A history record; a metric may not take a record field's name."""
    check_metric_names(metrics)
    return {"step": step, "time": time.time(), "session": session, **metrics}


def check_metric_names(names: Iterable[str]) -> None:
    """Refuse metric names the history keeps for its own fields."""
    clash = [name for name in names if name in RESERVED]
    if clash:
        raise ConfigError(
            f"a metric may not be called {clash[0]!r}: the history uses {', '.join(RESERVED)} "
            f"for its own fields. Rename it (e.g. {clash[0]}_metric)"
        )


def parse_records(data: bytes) -> tuple[list[Record], dict[str, Any] | None]:
    """The records in *data* (JSON lines) and its revision header, if any. A line that is not
    valid UTF-8 JSON, or not a record, is skipped; consecutive records of one step and session
    (a log() and a save() of the same step) merge into one."""
    records: list[Record] = []
    header = None
    bad = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            bad += 1  # a line torn by a kill mid-append, or damage
            continue
        if not isinstance(record, dict):
            bad += 1
        elif record.get("kind") == KIND and header is None and not records:
            header = record
        elif _is_record(record):
            last = records[-1] if records else None
            if last and (last["step"], last["session"]) == (record["step"], record["session"]):
                last.update(record)
            else:
                records.append(record)
        else:
            bad += 1
    if bad:
        logger.debug("colabsession: skipped %d unreadable history lines", bad)
    return records, header


def _is_record(record: dict[str, Any]) -> bool:
    step = record.get("step")
    return (
        isinstance(step, int)
        and not isinstance(step, bool)
        and isinstance(record.get("session"), str)
        and isinstance(record.get("time"), (int, float))
    )


def encode(records: Iterable[Record]) -> bytes:
    return b"".join(json.dumps(r, allow_nan=True).encode() + b"\n" for r in records)


def _last_time(records: list[Record]) -> float:
    return max((float(r["time"]) for r in records), default=0.0)


class HistoryLog:
    """The history of one run: its local file (in *local*) and its revisions at *remote*."""

    def __init__(self, local: Store, remote: Store | None, *, session: str) -> None:
        self.local, self.remote, self.session = local, remote, session
        self.records: list[Record] = []
        self._revision: int | None = None  # the revision this session writes at the remote
        self._uploaded = 0  # records of self.records already in that revision
        self._dirty: int | None = None  # the first record changed in place during a sync
        self._lock = threading.Lock()  # the training thread appends, the replicator syncs

    # Reading ---------------------------------------------------------------------------------

    def read_local(self) -> list[Record]:
        try:
            return parse_records(self.local.read(LOCAL))[0]
        except FileNotFoundError:
            return []

    def read_remote(self) -> tuple[list[Record], int]:
        """The newest complete revision at the location: (records, revision)."""
        assert self.remote is not None
        names = self.remote.names()
        for revision in sorted(_revisions(names), reverse=True):
            name = _name(revision)
            try:
                records, header = parse_records(self.remote.read(name))
            except FileNotFoundError:
                continue
            base = header.get("base") if header else None
            if isinstance(base, int) and len(records) >= base:
                return records, revision
            logger.warning(
                "colabsession: the history revision %s on %s is incomplete (a write was cut "
                "short): using the one before it",
                name,
                self.remote,
            )
        if LOCAL in names:  # the single file of colabsession 0.1
            return parse_records(self.remote.read(LOCAL))[0], 0
        return [], 0

    def newest(self) -> list[Record]:
        """The local history, or the location's when that one is newer (another runtime wrote
        it since); the longer one when both end at the same time."""
        local = self.read_local()
        if self.remote is None:
            return local
        try:
            remote, _ = self.read_remote()
        except (OSError, TimeoutError) as exc:
            logger.warning(
                "colabsession: cannot read the history on %s (%s): using the local copy",
                self.remote,
                reason(exc),
            )
            return local
        return max((local, remote), key=lambda r: (_last_time(r), len(r)))

    # Writing ---------------------------------------------------------------------------------

    def start(self, keep_through: int | None, truncate: bool) -> None:
        """Begin writing: take the newest history and, if *truncate*, drop the records past
        *keep_through* (the restored step; None: all). The local file is written anew."""
        records = self.newest()
        if truncate:
            limit = -1 if keep_through is None else keep_through
            records = [r for r in records if r["step"] <= limit]
        self.records = records
        self.local.makedirs()
        self.local.replace(LOCAL, encode(records))

    def append(self, record: Record) -> None:
        """Add *record* to the local file (merged with the last one when it is of the same step
        and session: the reader merges them the same way)."""
        with self._lock:
            last = self.records[-1] if self.records else None
            if last and (last["step"], last["session"]) == (record["step"], record["session"]):
                last.update(record)
                index = len(self.records) - 1  # changed in place: it goes up again
                self._uploaded = min(self._uploaded, index)
                self._dirty = index if self._dirty is None else min(self._dirty, index)
            else:
                self.records.append(record)
            self.local.append(LOCAL, encode([record]))

    def sync(self) -> None:
        """Bring the location's history up to date with this session's records."""
        with self._lock:
            if self.remote is None or (self._uploaded == len(self.records) and self._revision):
                return
            records = [dict(r) for r in self.records]
            start, self._dirty = self._uploaded, None
        if self._revision is None or not self.remote.local:
            self._write_revision(records)
        else:
            # A leading newline: a line torn by an append cut short (by us or anyone) never
            # swallows the first record of this one.
            self.remote.append(_name(self._revision), b"\n" + encode(records[start:]))
        with self._lock:  # a record merged during the upload goes up at the next sync
            self._uploaded = len(records) if self._dirty is None else min(len(records), self._dirty)

    def _write_revision(self, records: list[Record]) -> None:
        assert self.remote is not None
        previous = self._revision
        if previous is None:
            previous = max(_revisions(self.remote.names()), default=0)
        header = {"kind": KIND, "version": 1, "revision": previous + 1, "base": len(records)}
        self.remote.write(_name(previous + 1), encode([header, *records]))
        self._revision = previous + 1
        # Older revisions go once the new one is whole; the one before stays as a fallback.
        for revision in _revisions(self.remote.names()):
            if revision < previous:
                self.remote.remove(_name(revision))


def _revisions(names: list[str]) -> list[int]:
    return [int(m.group(1)) for name in names if (m := _REVISION.fullmatch(name))]


def _name(revision: int) -> str:
    return f"history.{revision:06d}.jsonl"
