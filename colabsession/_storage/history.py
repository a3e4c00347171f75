"""A run's loss history across sessions: one record per logged step, as a table or a plot.

On the local disk the history is ``history.jsonl``, only ever appended to (a new file renamed
over it when a resume drops the records past the restored step). At the location it is kept in
numbered revisions, ``history.000004.jsonl``: each session writes a new revision whole, then
appends to it where the file system can append (the Drive mount) or writes the next revision
whole where it cannot (the Drive API) and after an append that failed. A revision starts with a
header saying how many records it was written with; a revision cut short holds fewer and is
never read, so a kill mid-write can never replace a longer history with a shorter one. Lines
that are not valid UTF-8 JSON records are skipped.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, overload

from colabsession._core.deprecation import renamed_arguments
from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.files import reason
from colabsession._core.optional import installed, require
from colabsession._core.records import InvalidRecord, NotJSON, read_json
from colabsession._drive.location import Location
from colabsession._storage.layout import HistoryTail, parse_name
from colabsession._storage.runs import require_run, run_stores
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)

LOCAL = "history.jsonl"
KIND = "colabsession-history"
RESERVED = ("step", "time", "session", "attempt")
MAX_LINE = 1 << 20  # bytes of one history line read back; a record of metrics is far smaller
TAIL_LIMIT = 16 << 10  # bytes of records a checkpoint carries at most (its manifest stays small)
SYNC_AT = 8 << 10  # bytes of records not yet in the file past which a round appends them
TAIL_VERSION = 1  # the newest format of HistoryTail this reader reads
_REVISION = re.compile(r"history\.(\d{6,})\.jsonl")

Record = dict[str, Any]


class History:
    """A run's history as :func:`history` returns it, the same whatever is installed: a sequence
    of records (dicts with ``step``, ``time`` in seconds since the epoch, ``session``,
    ``attempt``, ``epoch`` where the run logs it, and one key per metric), oldest first.

    >>> h = cs.history("my-run")                         # doctest: +SKIP
    >>> len(h), h.metrics, h[-1]["loss"]                 # doctest: +SKIP
    (120, ['loss', 'val_loss'], 0.31)
    >>> h.column("loss")[:3]                             # doctest: +SKIP
    [0.92, 0.71, 0.64]
    >>> h.to_pandas().plot(x="step", y="loss")           # doctest: +SKIP
    """

    def __init__(self, rows: Iterable[Record]) -> None:
        self._rows = list(rows)

    @property
    def rows(self) -> list[Record]:
        """The records, oldest first (a new list: changing it changes nothing here)."""
        return list(self._rows)

    @property
    def metrics(self) -> list[str]:
        """The metrics logged, in first-seen order (the record fields and epoch left out)."""
        return metric_names(self._rows)

    def column(self, name: str) -> list[Any]:
        """One field of every record, None where a record lacks it."""
        return [r.get(name) for r in self._rows]

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row a record, ``time`` as UTC datetimes; needs pandas."""
        pd = require("pandas", extra="plot", purpose="History.to_pandas()")
        frame = pd.DataFrame.from_records(self._rows)
        if "time" in frame:
            frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame

    def to_tensorboard(self, logdir: str | os.PathLike[str]) -> Path:
        """Write the history as a TensorBoard event file in *logdir* (one scalar per metric and
        step, at the time it was logged), replacing the one written there before; returns its
        path. Written whole and renamed into place, from the history kept with the run: call
        it again in a new session (or during training) and the file is complete again, where
        TensorBoard's own writer, appending in place, loses its tail with the runtime. Needs
        the tensorboard package (Colab has it).

        >>> cs.history("my-run").to_tensorboard("/content/tb/my-run")   # doctest: +SKIP
        PosixPath('/content/tb/my-run/events.out.tfevents.colabsession-history')
        >>> %tensorboard --logdir /content/tb                          # doctest: +SKIP
        """
        from colabsession._storage.tracking import write_tensorboard

        return write_tensorboard(self._rows, logdir)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._rows)

    @overload
    def __getitem__(self, key: int) -> Record: ...
    @overload
    def __getitem__(self, key: slice) -> list[Record]: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):  # a DataFrame's column, as cs.history() returned before 1.0
            return self._deprecated(f"[{key!r}]", lambda frame: frame[key], self.column(key))
        return self._rows[key]

    def __getattr__(self, name: str) -> Any:
        # A DataFrame's methods and columns (frame.tail(), frame.loss), as cs.history()
        # returned a DataFrame before 1.0 where pandas was installed.
        if name.startswith("_") or not installed("pandas"):
            raise AttributeError(f"'History' object has no attribute {name!r}")
        import pandas as pd

        if not hasattr(pd.DataFrame, name) and name not in self._columns():
            raise AttributeError(f"'History' object has no attribute {name!r}")
        return self._deprecated(f".{name}", lambda frame: getattr(frame, name), None)

    def _columns(self) -> set[str]:
        return {key for record in self._rows for key in record}

    def _deprecated(self, use: str, on_frame: Callable[[Any], Any], otherwise: Any) -> Any:
        warnings.warn(
            f"cs.history() returns a History now, not a DataFrame: write "
            f"cs.history(...).to_pandas(){use}, or use History.rows / History.column()",
            DeprecationWarning,
            stacklevel=3,
        )
        return on_frame(self.to_pandas()) if installed("pandas") else otherwise

    def __repr__(self) -> str:
        return f"History({len(self._rows)} records, metrics: {', '.join(self.metrics) or '-'})"


@renamed_arguments("cs.history", location="run")
def history(run: str | os.PathLike[str] | Location) -> History:
    """Every logged record of the *run* (a run name or a location, as for ``cs.Checkpointer``),
    oldest first, as a :class:`History` (the same type
    whether pandas is installed or not: ``.rows`` as dicts, ``.to_pandas()`` for a DataFrame).
    A Keras ``epoch`` is counted from 1 as Keras prints it, the Trainer's as it logs it (see
    :func:`for_display`). A run that does not exist is a RunNotFoundError that lists the runs
    that do.

    >>> cs.history("my-run").to_pandas().plot(x="step", y="loss")  # doctest: +SKIP
    """
    return History(for_display(existing_history(run)))


def for_display(records: list[Record]) -> list[Record]:
    """Records as people read them. The stored ``epoch`` says by its type how it counts:

    - an integer is an epoch's index as Keras' callbacks count it, from 0: shown from 1, as
      Keras prints "Epoch 1/20" (``cs.fit`` and ``cs.keras`` write these);
    - a float is training progress in epochs as the transformers Trainer logs it, already
      counted from the start (0.5 halfway through the first epoch, 3.0 at the end of the
      third): shown as it is (``cs.hf`` writes these).

    >>> [r["epoch"] for r in for_display([{"epoch": 0}, {"epoch": 2.5}])]
    [1, 2.5]
    """
    shown = []
    for record in records:
        if is_epoch_index(record.get("epoch")):
            record = {**record, "epoch": record["epoch"] + 1}
        shown.append(record)
    return shown


def is_epoch_index(value: Any) -> bool:
    """Whether a stored ``epoch`` is an epoch's index counted from 0 (an integer), not the
    Trainer's progress in epochs (a float); see :func:`for_display`."""
    return isinstance(value, int) and not isinstance(value, bool)


# The Trainer's timing and throughput figures: they say how fast, not how well.
_NOT_PLOTTED = re.compile(r".*(_runtime|_samples_per_second|_steps_per_second)|total_flos")
_TWIN_PREFIXES = ("val_", "eval_")  # Keras' validation metrics, the Trainer's evaluation ones


def _group(name: str) -> str:
    for prefix in _TWIN_PREFIXES:
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def _is_twin(name: str) -> bool:
    return name.startswith(_TWIN_PREFIXES)


def metric_names(records: list[Record]) -> list[str]:
    """The metrics in *records*, in first-seen order (the record fields and epoch left out)."""
    names: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in (*RESERVED, "epoch") and isinstance(value, (int, float)):
                names.setdefault(key)
    return list(names)


@renamed_arguments("cs.plot_history", location="run")
def plot_history(
    run: str | os.PathLike[str] | Location,
    metrics: list[str] | None = None,
    *,
    ax: Any = None,
) -> list[Any]:
    """Draw the *run*'s history (a run name or a location) with matplotlib: one labelled panel
    per metric, with its validation twin (Keras' ``val_loss``, the Trainer's ``eval_loss``,
    with ``loss``), loss first; epochs on the x axis when the run counts whole epochs (Keras),
    else steps (a plain loop, the Trainer, whose fractional epochs would stack points); timing
    figures (``*_runtime``, ``*_per_second``, ``total_flos``) left out unless named in
    *metrics*; a dashed line where a new runtime took over and a dotted one where the run
    resumed on the same runtime (a re-run cell, a restarted kernel). Returns the panels' Axes
    (one Axes given as *ax* gets every metric).

    >>> cs.plot_history("my-run")  # doctest: +SKIP
    """
    plt = require(
        "matplotlib.pyplot", extra="plot", purpose="cs.plot_history()", package="matplotlib"
    )
    stored = existing_history(run)
    by_epoch = any(is_epoch_index(r.get("epoch")) for r in stored)
    records = for_display(stored)
    if by_epoch:  # records saved mid-epoch have running means: the epochs' own values are shown
        records = [r for r in records if "epoch" in r]
    x_name = "epoch" if by_epoch else "step"
    names = metrics or [n for n in metric_names(records) if not _NOT_PLOTTED.fullmatch(n)]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_group(name), []).append(name)
    order = sorted(groups, key=lambda g: (g != "loss", g))
    if ax is not None:
        axes = [ax] * max(1, len(order))
    else:
        _, grid = plt.subplots(
            max(1, len(order)),
            1,
            figsize=(8, 2.6 * max(1, len(order)) + 0.6),
            sharex=True,
            squeeze=False,
        )
        axes = list(grid[:, 0])
    for panel, group in zip(axes, order, strict=False):
        for name in sorted(groups[group], key=_is_twin):
            points = [
                (r[x_name], r[name]) for r in records if isinstance(r.get(name), (int, float))
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "--" if _is_twin(name) else "-"
                label = "training"
                if _is_twin(name):
                    label = "evaluation" if name.startswith("eval_") else "validation"
                panel.plot(
                    xs,
                    ys,
                    style,
                    marker="o" if len(xs) < 30 else None,
                    markersize=3,
                    label=f"{label} {group}" if ax is not None else label,
                )
        if ax is None:
            panel.set_ylabel(group)
    _mark_resumes(axes if ax is None else [ax], records, x_name)
    for panel in axes if ax is None else [ax]:
        panel.grid(alpha=0.3)
        if panel.get_legend_handles_labels()[0]:
            panel.legend(loc="best", fontsize="small")
    if by_epoch:
        from matplotlib.ticker import MaxNLocator

        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel(x_name)
    axes[0].set_title(f"{run}")
    if ax is None:
        axes[0].figure.tight_layout()
    return axes if ax is None else [ax]


def _mark_resumes(axes: list[Any], records: list[Record], x_name: str) -> None:
    """A dashed line where another runtime took over, a dotted one where the run resumed on
    the same runtime; each kind in the first panel's legend once."""
    labelled: set[str] = set()
    for before, after in itertools.pairwise(records):
        if after.get("session") != before.get("session"):
            kind, style = "new runtime", "--"
        elif after.get("attempt") != before.get("attempt"):
            kind, style = "resumed", ":"
        else:
            continue
        where = (before[x_name] + after[x_name]) / 2
        for index, panel in enumerate(axes):
            label = kind if index == 0 and kind not in labelled else None
            panel.axvline(where, color="grey", linestyle=style, linewidth=1, label=label)
        labelled.add(kind)


def existing_history(location: str | os.PathLike[str] | Location) -> list[Record]:
    """The run's history; RunNotFoundError (naming the runs there are) if nothing of the run
    exists. The look for the run comes only when the history is empty."""
    records = read_history(location)
    if not records:
        require_run(location)
    return records


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


def make_record(
    step: int, session: str, metrics: dict[str, Any], attempt: str | None = None
) -> Record:
    """A history record; a metric may not take a record field's name. *attempt* tells one
    resume of the run on the same runtime from the next."""
    check_metric_names(metrics)
    record: Record = {"step": step, "time": time.time(), "session": session}
    if attempt is not None:
        record["attempt"] = attempt
    return {**record, **metrics}


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
    bad = torn = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = read_json(line, what="a history line", max_bytes=MAX_LINE, constants=True)
        except NotJSON:
            torn += 1  # a line torn by a kill mid-append: expected, not damage
            continue
        except InvalidRecord:
            bad += 1
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
        logger.warning("colabsession: skipping %d damaged line(s) of the history", bad)
    if torn:
        logger.debug("colabsession: skipped %d history line(s) cut short", torn)
    return records, header


def _is_record(record: dict[str, Any]) -> bool:
    step = record.get("step")
    return (
        isinstance(step, int)
        and not isinstance(step, bool)
        and isinstance(record.get("session"), str)
        and _is_time(record.get("time"))
    )


def _is_time(value: Any) -> bool:
    """Whether *value* is a time a record can hold: a finite number a float can hold (every
    reader compares records by it; ``time.time()`` never gives another)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past a float's range
        return False


def encode(records: Iterable[Record]) -> bytes:
    return b"".join(json.dumps(r, allow_nan=True).encode() + b"\n" for r in records)


def _last_time(records: list[Record]) -> float:
    return max((float(r["time"]) for r in records), default=0.0)


def _newer(local: list[Record], remote: list[Record]) -> list[Record]:
    """The newer of two copies of a history: the one whose last record is newer (another
    runtime wrote it since), the longer one when both end at the same time."""
    return max((local, remote), key=lambda r: (_last_time(r), len(r)))


def _kept(
    records: list[Record], keep_through: int | None, truncate: bool
) -> tuple[list[Record], list[Record]]:
    """(kept, dropped) of *records*: if *truncate*, those past *keep_through* (None: all)
    are dropped."""
    if not truncate:
        return records, []
    limit = -1 if keep_through is None else keep_through
    return [r for r in records if r["step"] <= limit], [r for r in records if r["step"] > limit]


class HistoryLog:
    """The history of one run: its local file (in *local*) and its revisions at *remote*."""

    def __init__(self, local: Store, remote: Store | None, *, session: str) -> None:
        self.local, self.remote, self.session = local, remote, session
        self.records: list[Record] = []
        self._revision: int | None = None  # the revision this session writes at the remote
        self._mark = ""  # the unique mark in its header, which the tails name
        self._uploaded = 0  # records of self.records already in that revision
        self._dirty: int | None = None  # the first record changed in place during a sync
        self._fresh = True  # the next sync writes a new revision whole (after start())
        self._rewriting = False  # a sync is writing a new revision: a tail anchors nothing
        self._torn = False  # an append failed: how much of it is in the file is unknown
        self._started = 0  # start()s so far: a sync begun before the last one uploaded old records
        # Set by a start() that could not read the location: (keep_through, truncate, how many
        # records it began with); its history is merged in before the first revision is written.
        self._unread: tuple[int | None, bool, int] | None = None
        self._lock = threading.Lock()  # the training thread appends, the replicator syncs

    # Reading ---------------------------------------------------------------------------------

    def read_local(self) -> list[Record]:
        try:
            return parse_records(self.local.read(LOCAL))[0]
        except FileNotFoundError:
            return []

    def read_remote(self, *, whole: bool = False) -> tuple[list[Record], int]:
        """The location's history: its newest complete revision with the records that the
        checkpoints there carry for it merged in (see :func:`merge_tails`): (records,
        revision). *whole*: a checkpoint whose manifest cannot be read is an error (OSError,
        TimeoutError) rather than a warning (the records are about to be written as a new
        revision, which supersedes the tails)."""
        assert self.remote is not None
        names = self.remote.names()
        records, revision, mark = self._read_file(names)
        if mark is not None:
            records = merge_tails(records, self._tails(names, revision, mark, whole=whole))
        return records, revision

    def _tails(
        self, names: list[str], revision: int, mark: str, *, whole: bool = False
    ) -> list[HistoryTail]:
        """The history tails of the checkpoints in *names* that continue *revision* (written
        with the unique *mark*), oldest checkpoint first (manifests read once per store; a
        damaged checkpoint carries none)."""
        assert self.remote is not None
        checkpoints = [n for n in names if parse_name(n) is not None]
        if not checkpoints:
            return []
        try:
            entries = self.remote.entries(checkpoints, warn=False)
        except (OSError, TimeoutError) as exc:
            if whole:
                raise
            logger.warning(
                "colabsession: cannot read the checkpoints on %s (%s): the history shown may "
                "lack its newest records",
                self.remote,
                reason(exc),
            )
            return []
        tails = []
        for entry in sorted(entries, key=lambda e: e.manifest.time):
            tail = entry.manifest.history
            if tail is None or (tail.revision, tail.mark) != (revision, mark):
                continue
            if tail.version > TAIL_VERSION:
                logger.warning(
                    "colabsession: %s carries history records of a newer format (%d): "
                    "upgrade colabsession to see them",
                    entry.where,
                    tail.version,
                )
                continue
            tails.append(tail)
        return tails

    def _read_file(self, names: list[str]) -> tuple[list[Record], int, str | None]:
        """The newest complete revision of the history file at the location: its records,
        its number and the unique mark its header carries (None: none)."""
        assert self.remote is not None
        for revision in sorted(_revisions(names), reverse=True):
            name = _name(revision)
            try:
                records, header = parse_records(self.remote.read(name))
            except FileNotFoundError:
                continue
            base = header.get("base") if header else None
            if isinstance(base, int) and len(records) >= base:
                mark = header.get("mark") if header else None
                return records, revision, mark if isinstance(mark, str) else None
            logger.warning(
                "colabsession: the history revision %s on %s is incomplete (a write was cut "
                "short): using the one before it",
                name,
                self.remote,
            )
        if LOCAL in names:  # the single file of colabsession 0.1
            return parse_records(self.remote.read(LOCAL))[0], 0, None
        return [], 0, None

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
        return _newer(local, remote)

    # Writing ---------------------------------------------------------------------------------

    def start(self, keep_through: int | None, truncate: bool) -> None:
        """Begin writing: take the newest history and, if *truncate*, drop the records past
        *keep_through* (the restored step; None: all) into a ``parked-history...`` file beside
        it. The local file is written anew. A location that does not answer leaves the local
        copy, and its history is merged in before this session's revision is written (see
        :meth:`sync`): that revision supersedes it."""
        records = self.read_local()
        read = self.remote is None
        if self.remote is not None:
            try:
                records = _newer(records, self.read_remote(whole=True)[0])
                read = True
            except (OSError, TimeoutError) as exc:
                logger.warning(
                    "colabsession: cannot read the history on %s (%s): using the local copy, "
                    "and merging the location's in when it answers",
                    self.remote,
                    reason(exc),
                )
        records, dropped = _kept(records, keep_through, truncate)
        unread = None if read else (keep_through, truncate, len(records))
        self.records = records
        self.local.makedirs()
        self._park(dropped)
        self.local.replace(LOCAL, encode(records))
        with self._lock:  # the location's revision is written anew from these records
            self._uploaded, self._dirty, self._fresh = 0, None, True
            self._started += 1
            self._unread = unread

    def _park(self, dropped: list[Record]) -> None:
        if dropped:  # set aside like the checkpoints they belong to, never deleted
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self.local.write(f"parked-history.{stamp}.{os.getpid()}.jsonl", encode(dropped))

    def _catch_up(self) -> None:
        """Merge in the location's history that start() could not read (raises OSError or
        TimeoutError while it still cannot): the newer of it and the local copy start()
        took, with this session's records after them."""
        with self._lock:
            unread, started = self._unread, self._started
        if unread is None:
            return
        keep_through, truncate, began = unread
        remote, dropped = _kept(self.read_remote(whole=True)[0], keep_through, truncate)
        with self._lock:
            if started != self._started:  # a start() meanwhile read the location itself
                return
            if _newer(self.records[:began], remote) is remote:
                records = [*remote, *self.records[began:]]
                self._park(dropped)
                self.local.replace(LOCAL, encode(records))  # (a full disk: tried again)
                self.records = records
            self._unread = None

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
            try:
                self.local.append(LOCAL, encode([record]))
            except OSError as exc:  # a full disk: a fault the caller can act on, said so
                raise CheckpointError(
                    f"cannot add step {record['step']} to the history in {self.local} "
                    f"({reason(exc)}): free disk space (!df -h), then log or save again; the "
                    "records so far are kept"
                ) from None

    def sync(self) -> None:
        """Bring the location's history file up to date with this session's records."""
        self._catch_up()
        with self._lock:
            if self.remote is None or (self._uploaded == len(self.records) and not self._fresh):
                return
            records = [dict(r) for r in self.records]
            start, self._dirty = self._uploaded, None
            whole = self._fresh or self._torn or self._revision is None or not self.remote.appends
            self._rewriting, started = whole, self._started
        try:
            if whole:
                revision, mark = self._write_revision(records)
            else:
                assert self._revision is not None
                # A leading newline: a line torn by an append cut short (by us or anyone)
                # never swallows the first record of this one.
                self.remote.append(_name(self._revision), b"\n" + encode(records[start:]))
        except BaseException:
            with self._lock:
                self._rewriting = False
                # Some of its records may be in the file whole: appended again they would
                # show twice, so the next sync writes the next revision whole instead.
                self._torn = self._torn or not whole
            raise
        with self._lock:  # a record merged during the upload goes up at the next sync
            self._rewriting = False
            if started != self._started:
                # A start() (a restore) meanwhile: what went up are records it dropped. The
                # next sync writes the next revision whole (never this one again, in place).
                if whole:
                    self._revision = revision
                return
            if whole:
                self._revision, self._mark, self._fresh, self._torn = revision, mark, False, False
            self._uploaded = len(records) if self._dirty is None else min(len(records), self._dirty)

    def tail(self) -> HistoryTail | None:
        """The records the location's history file lacks now, for the checkpoint committed now
        to carry (see :class:`~.layout.HistoryTail`); None where there is no location, before
        this session's revision is written (or while a new one is), and when they are more
        than :data:`TAIL_LIMIT` bytes: the file must then be brought up to date before that
        checkpoint goes up (see :meth:`sync_needed`)."""
        with self._lock:
            if self.remote is None or self._fresh or self._rewriting or self._revision is None:
                return None
            lines = encode(self.records[self._uploaded :])
            if len(lines) > TAIL_LIMIT:
                return None
            return HistoryTail(revision=self._revision, mark=self._mark, lines=lines.decode())

    def sync_needed(self, uploading: Iterable[HistoryTail | None]) -> bool:
        """Whether the file must be brought up to date before checkpoints carrying *uploading*
        go up: one of them carries no tail that continues this session's revision (the
        location would hold a checkpoint ahead of its history)."""
        with self._lock:
            if self.remote is None:
                return False
            if self._fresh or self._revision is None:
                return True
            return any(not self._continues(t) for t in uploading)

    def pending(self, carried: Iterable[HistoryTail | None]) -> bool:
        """Whether some record of this session is neither in the location's file nor carried
        by one of the tails *carried* (of the checkpoints the location holds)."""
        with self._lock:
            if self.remote is None:
                return False
            if self._fresh or self._revision is None:
                return True
            missing = len(self.records) - self._uploaded
            if not missing:
                return False
            for tail in carried:
                if tail is None or not self._continues(tail):
                    continue
                records = parse_records(tail.lines.encode())[0]
                # Compared as lines: a NaN loss is equal to itself there.
                same = encode(records) == encode(self.records[-len(records) :])
                if len(records) >= missing and same:
                    return False
            return True

    def unsynced_bytes(self) -> int:
        """How large the records not yet in the location's file are, as history lines."""
        with self._lock:
            return len(encode(self.records[self._uploaded :]))

    def _continues(self, tail: HistoryTail | None) -> bool:
        """Whether *tail* continues the revision this session writes (call under the lock)."""
        return tail is not None and (tail.revision, tail.mark) == (self._revision, self._mark)

    def _write_revision(self, records: list[Record]) -> tuple[int, str]:
        assert self.remote is not None
        previous = self._revision
        if previous is None:
            previous = max(_revisions(self.remote.names()), default=0)
        # The mark tells this revision from any other of the same number (a tail names both).
        mark = secrets.token_hex(6)
        header = {
            "kind": KIND,
            "version": 1,
            "revision": previous + 1,
            "base": len(records),
            "mark": mark,
        }
        self.remote.write(_name(previous + 1), encode([header, *records]))
        # Older revisions go once the new one is whole; the one before stays as a fallback.
        for revision in _revisions(self.remote.names()):
            if revision < previous:
                self.remote.remove(_name(revision))
        return previous + 1, mark


def merge_tails(records: list[Record], tails: Iterable[HistoryTail]) -> list[Record]:
    """*records* (a revision of the history file) with the records of *tails* (carried by
    checkpoints, oldest first, each validated as a history line is) merged in: a record of
    the same step, session and attempt is replaced by the later of the two, the others are
    added at the end, in order.

    >>> from colabsession._storage.layout import HistoryTail
    >>> file = [{"step": 1, "time": 1.0, "session": "s"}]
    >>> line = '{"step": 2, "time": 2.0, "session": "s"}\\n'
    >>> tail = HistoryTail(revision=1, mark="3f9a1c2b7d4e", lines=line)
    >>> [r["step"] for r in merge_tails(file, [tail])]
    [1, 2]
    """
    merged = [dict(r) for r in records]
    where = {_key(r): i for i, r in enumerate(merged)}
    for tail in tails:
        for record in parse_records(tail.lines.encode())[0]:
            index = where.get(_key(record))
            if index is None:
                where[_key(record)] = len(merged)
                merged.append(record)
            elif float(record["time"]) > float(merged[index]["time"]):
                merged[index] = record
    return merged


def _key(record: Record) -> tuple[Any, ...]:
    return (record["step"], record["session"], record.get("attempt"))


def _revisions(names: list[str]) -> list[int]:
    return [int(m.group(1)) for name in names if (m := _REVISION.fullmatch(name))]


def _name(revision: int) -> str:
    return f"history.{revision:06d}.jsonl"
