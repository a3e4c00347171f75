"""Which checkpoints belong to the run as it goes on now: the live lineage.

Restoring an older step and saving again starts a new *branch*: the checkpoints newer than the
restored one, on the branch left, are abandoned. The mirror and the location may learn of that at
different times (the location may not answer while the new branch saves), so each checkpoint
records its :class:`._layout.Lineage` (its branch, when that began, and the checkpoint it
continues from), and whoever lists checkpoints works out the live lineage from the files alone:

- the live branch is the writer's own one or, for a reader, the one begun last (a branch begins
  after every branch its restore saw, whatever the clocks of the runtimes say);
- the lineage is that branch, then the checkpoints of the branch it continues from up to the
  step it continues from, and so on back (a branch that restored nothing follows whatever came
  before it whole; a new or restarted run has no ancestors);
- checkpoints written before lineages existed form one branch, older than any other.

Everything else is abandoned: never restored, and set aside (``parked-...``) by retention.

>>> live, abandoned = split_live(entries)  # the mirror's and the location's  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

from colabsession._storage.layout import Lineage, Manifest

_LEGACY = ""  # the branch of checkpoints without a lineage


class _Listed(Protocol):
    @property
    def step(self) -> int: ...

    @property
    def manifest(self) -> Manifest: ...


E = TypeVar("E", bound=_Listed)


def branch_of(lineage: Lineage | None) -> str:
    return _LEGACY if lineage is None else lineage.branch


def split_live(entries: Sequence[E], head: Lineage | None = None) -> tuple[list[E], list[E]]:
    """(live, abandoned) of *entries*, each in the order given. *head*: the lineage of the
    writer's own branch, which is live whatever the files say (None: a reader's view)."""
    branches: dict[str, list[E]] = {}
    lineages: dict[str, Lineage] = {}
    for entry in entries:
        lineage = entry.manifest.lineage
        name = branch_of(lineage)
        branches.setdefault(name, []).append(entry)
        if lineage is not None:
            known = lineages.get(name)
            if known is None or lineage.started > known.started:  # one writer: all alike
                lineages[name] = lineage
    if head is not None:
        lineages[head.branch] = head
        branches.setdefault(head.branch, [])
    if not branches:
        return [], []

    def started(key: str) -> tuple[float, str]:
        found = lineages.get(key)
        return (-math.inf if found is None else found.started, key)

    newest_first = sorted(branches, key=started, reverse=True)
    key: str | None = head.branch if head is not None else newest_first[0]
    limit = math.inf
    live: set[int] = set()
    seen: set[str] = set()
    while key is not None and key not in seen:
        seen.add(key)
        live.update(id(e) for e in branches.get(key, []) if e.step <= limit)
        lineage = lineages.get(key)
        if lineage is None:  # checkpoints without a lineage: nothing is known before them
            break
        if lineage.follows:  # it restored nothing: whatever came before it, whole
            older = [k for k in newest_first if started(k) < started(key) and k not in seen]
            key = older[0] if older else None
        elif lineage.fork_step is None:  # a new or restarted run
            key = None
        else:
            key = lineage.fork_branch or _LEGACY
            limit = min(limit, lineage.fork_step)
    return [e for e in entries if id(e) in live], [e for e in entries if id(e) not in live]
