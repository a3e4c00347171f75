"""Which checkpoints to keep: small policies that each name the checkpoints they keep, combined
by union (orbax's preservation policies are the model). A checkpoint no policy keeps is deleted.

>>> from colabsession._storage.store import Store
>>> entries = Store.local_disk("my-run").entries()     # its checkpoints, oldest first
>>> keep = AnyOf([LatestN(3), BestN(1, "val_loss", "min")])
>>> kept = keep.select(entries)       # the names of the entries to keep
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from colabsession._storage.store import Entry


class Policy(Protocol):
    def select(self, entries: Sequence[Entry]) -> set[str]:
        """The names of the entries (oldest first) this policy keeps."""
        ...


@dataclass(frozen=True)
class LatestN:
    """The *n* newest checkpoints."""

    n: int

    def select(self, entries: Sequence[Entry]) -> set[str]:
        return {e.name for e in entries[-self.n :]} if self.n > 0 else set()


@dataclass(frozen=True)
class EveryInterval:
    """The first checkpoint of each *seconds*-long interval of wall-clock time."""

    seconds: float

    def select(self, entries: Sequence[Entry]) -> set[str]:
        kept: dict[int, str] = {}
        for entry in entries:
            kept.setdefault(int(entry.manifest.time // self.seconds), entry.name)
        return set(kept.values())


@dataclass(frozen=True)
class BestN:
    """The *n* checkpoints with the best *metric*; a checkpoint without that metric, or whose
    value is NaN or not a number, is never among the best."""

    n: int
    metric: str
    mode: Literal["min", "max"] = "min"

    def select(self, entries: Sequence[Entry]) -> set[str]:
        scored = []
        for entry in entries:
            value = entry.manifest.metrics.get(self.metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isnan(value):
                scored.append((value if self.mode == "min" else -value, entry.name))
        scored.sort()
        return {name for _, name in scored[: self.n]}


@dataclass(frozen=True)
class AnyOf:
    """Every checkpoint that one of *policies* keeps."""

    policies: Sequence[Policy]

    def select(self, entries: Sequence[Entry]) -> set[str]:
        kept: set[str] = set()
        for policy in self.policies:
            kept |= policy.select(entries)
        return kept


def split(entries: Sequence[Entry], policy: Policy) -> tuple[list[Entry], list[Entry]]:
    """(kept, deletable) of *entries* (oldest first): the newest save of each step that *policy*
    keeps, and everything else (what it does not keep, and older saves of a step saved again)."""
    newest, older = newest_per_step(entries)
    names = policy.select(newest)
    kept = [e for e in newest if e.name in names]
    return kept, [*older, *(e for e in newest if e.name not in names)]


def newest_per_step(entries: Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Split *entries* (oldest first) into the newest save of each step and the older saves of a
    step saved again, which nothing needs."""
    newest: dict[int, Entry] = {}
    older: list[Entry] = []
    for entry in entries:
        if entry.step in newest:
            older.append(newest[entry.step])
        newest[entry.step] = entry
    return sorted(newest.values(), key=lambda e: e.step), older
