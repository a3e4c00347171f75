"""A run's loss history across sessions: as a table, and as a plot that marks the restarts."""

from __future__ import annotations

import itertools
import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._optional import installed, require
from ._storage import default_local_dir, fsync_file, is_direct, reason, run_location
from .drive import Location

logger = logging.getLogger("colabsession.checkpoint")

HISTORY = "history.jsonl"


def history(location: str | os.PathLike[str] | Location) -> Any:
    """Every logged record of the run, oldest first: a pandas DataFrame (columns ``step``,
    ``time``, ``session`` and one per metric) when pandas is installed, else a list of dicts.

    >>> cs.history("drive:checkpoints/my-run").plot(x="step", y="loss")  # doctest: +SKIP
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

    >>> cs.plot_history("drive:checkpoints/my-run", ["loss", "val_loss"])  # doctest: +SKIP
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
            if k not in ("step", "time", "session", "epoch") and isinstance(v, (int, float))
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


def read_history_file(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    return parse_history(text)


def parse_history(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill mid-append
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def write_history_file(path: Path, records: Iterable[dict[str, Any]]) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(temp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        fsync_file(f)
    os.replace(temp, path)


def newest_history(path: Path, remote: Location | None) -> list[dict[str, Any]]:
    """The local history, or the location's when that one is more recent (another runtime
    wrote it since)."""
    local = read_history_file(path)
    if remote is None:
        return local
    try:
        text = bytes(remote.fs.cat_file(f"{remote.path.rstrip('/')}/{HISTORY}")).decode()
    except (FileNotFoundError, UnicodeDecodeError):
        return local
    except OSError as exc:
        logger.warning("colabsession: cannot read the history on %s (%s)", remote, reason(exc))
        return local
    theirs = parse_history(text)

    def last(records: list[dict[str, Any]]) -> float:
        return max((float(r.get("time", 0)) for r in records), default=0.0)

    return theirs if last(theirs) > last(local) else local


def read_history(
    location: str | os.PathLike[str] | Location, local_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """The run's history records, from the location or its local mirror, whichever is newer."""
    loc = run_location(location)
    if is_direct(loc) and local_dir is None:
        return read_history_file(Path(loc.path) / HISTORY)
    mirror = Path(local_dir) if local_dir else default_local_dir(loc)
    return newest_history(mirror / HISTORY, loc)
