"""Retention policies on their own: which checkpoints each keeps, from listed entries alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from colabsession._storage.layout import Manifest, file_name
from colabsession._storage.retention import (
    AnyOf,
    BestN,
    EveryInterval,
    LatestN,
    newest_per_step,
    split,
)
from colabsession._storage.store import Entry, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.local_disk(tmp_path)


def entry(store: Store, step: int, *, time: float | None = None, **metrics: Any) -> Entry:
    """A listed checkpoint of *step* (its manifest only: policies never read the arrays)."""
    manifest = Manifest(
        step=step,
        time=float(step) if time is None else time,
        session="s",
        metrics=metrics,
        tree=None,
        arrays=[],
        size=0,
        crc32c=0,
    )
    return Entry(step, file_name(step), manifest, store)


def steps(entries: list[Entry], names: set[str]) -> list[int]:
    return [e.step for e in entries if e.name in names]


def test_latest_n_keeps_the_newest(store: Store) -> None:
    entries = [entry(store, s) for s in range(5)]
    assert steps(entries, LatestN(2).select(entries)) == [3, 4]
    assert steps(entries, LatestN(9).select(entries)) == [0, 1, 2, 3, 4]  # fewer than n: all
    assert LatestN(0).select(entries) == set()
    assert LatestN(3).select([]) == set()


@pytest.mark.parametrize(("mode", "best"), [("min", [1, 3]), ("max", [0, 4])])
def test_best_n_ranks_by_the_metric_and_mode(store: Store, mode: Any, best: list[int]) -> None:
    losses = [0.9, 0.1, 0.5, 0.2, 1.5]
    entries = [entry(store, s, loss=v) for s, v in enumerate(losses)]
    assert steps(entries, BestN(2, "loss", mode).select(entries)) == best


def test_best_n_never_counts_nan_missing_or_non_numbers(store: Store) -> None:
    entries = [
        entry(store, 0, loss=math.nan),  # a diverged step is never "best"
        entry(store, 1),  # no such metric
        entry(store, 2, loss="0.0"),  # a string, however it reads
        entry(store, 3, loss=True),  # a bool is not a number here
        entry(store, 4, loss=None),
        entry(store, 5, loss=0.7),
    ]
    assert steps(entries, BestN(3, "loss").select(entries)) == [5]  # only one is ranked
    assert steps(entries, BestN(3, "loss", "max").select(entries)) == [5]
    assert BestN(1, "accuracy").select(entries) == set()


def test_best_n_keeps_exactly_n_when_values_tie(store: Store) -> None:
    entries = [entry(store, s, loss=0.5) for s in range(4)]
    kept = BestN(2, "loss").select(entries)
    assert len(kept) == 2
    assert steps(entries, kept) == [0, 1]  # a tie goes to the earlier step, every time
    assert BestN(2, "loss").select(list(reversed(entries))) == kept  # whatever the order


def test_best_n_with_ints_and_floats(store: Store) -> None:
    entries = [entry(store, 0, loss=2), entry(store, 1, loss=1.5), entry(store, 2, loss=1)]
    assert steps(entries, BestN(1, "loss").select(entries)) == [2]


def test_every_interval_keeps_the_first_of_each_interval(store: Store) -> None:
    times = [0.0, 10.0, 59.9, 60.0, 61.0, 250.0]
    entries = [entry(store, s, time=t) for s, t in enumerate(times)]
    assert steps(entries, EveryInterval(60).select(entries)) == [0, 3, 5]


def test_any_of_keeps_what_any_policy_keeps(store: Store) -> None:
    entries = [entry(store, s, val_loss=v) for s, v in enumerate([0.3, 0.1, 0.4, 0.5, 0.6])]
    keep = AnyOf([LatestN(2), BestN(1, "val_loss", "min")])
    assert steps(entries, keep.select(entries)) == [1, 3, 4]
    assert AnyOf([]).select(entries) == set()


def test_split_keeps_the_newest_save_of_a_step_saved_again(store: Store) -> None:
    first = entry(store, 2, time=2.0)
    again = Entry(2, file_name(2), first.manifest, store)  # step 2 saved again (a resume)
    entries = [entry(store, 1), first, again, entry(store, 3)]
    kept, deletable = split(entries, LatestN(2))
    assert kept == [again, entries[3]]
    assert deletable == [first, entries[0]]  # the older save first, then what no policy keeps
    assert {e.name for e in kept} | {e.name for e in deletable} == {e.name for e in entries}


def test_split_of_nothing(store: Store) -> None:
    assert split([], LatestN(3)) == ([], [])


def test_newest_per_step_orders_by_step(store: Store) -> None:
    late, early = entry(store, 5), entry(store, 1)
    newer = Entry(5, file_name(5), late.manifest, store)
    newest, older = newest_per_step([late, early, newer])
    assert newest == [early, newer]
    assert older == [late]
