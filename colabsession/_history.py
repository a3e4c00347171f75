"""A run's loss history across sessions: as a table, and as a plot that marks the restarts."""

from __future__ import annotations

import itertools
import os
from typing import Any

from ._checkpoint import read_history
from ._optional import installed, require
from .drive import Location


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
