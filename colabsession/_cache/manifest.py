"""A cache kept on Drive: its blobs, its packed parts and the manifests that commit them.

One folder per cache (``huggingface``, ``torch``, ...) under the caches' folder::

    huggingface/
        blobs/9f2c...e1-1764870000-3fa2c1d0      # a large file, named by its sha256 (+ unique tail)
        part-1764870000-5c1e9a0f3b2d7e61-0a9b8c7d.tar.zst   # the small files, folders, links
        manifest.000004.5c1e9a0f.json            # the commit: every path and where it is held

A large file (a model's weights) is stored once as a blob of its own, named by its content: a
save uploads only the blobs Drive does not hold yet, whatever else changed. Everything else
(configs, tokenizers, ``refs``, the snapshot folders' links into ``blobs``) goes into one part,
a tar shard as :mod:`colabsession.data` writes them, reused while it is unchanged. The manifest,
written last under a new name, lists every path with the blob or part that holds it and the
manifests it merges. Manifests that no other one merges are the *heads*: two sessions saving at
once leave two heads, each whole, and the next save or restore merges them, so neither loses
the other's files. Every name written is new: nothing is rewritten in place, and a save cut
short leaves at most blobs or a part that no manifest names (:func:`~colabsession.cache.prune`
removes them later).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import ClassVar

from colabsession._core.records import MAX_BYTES, InvalidRecord, Record, parse_record
from colabsession._data import archive as _archive
from colabsession._data.dataset import DIR, LINK, SHA256, Shard
from colabsession._data.dataset import MANIFEST as MANIFEST
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)

FORMAT = "colabsession-cache"
KINDS = ("file", "dir", "link")
PART = re.compile(r"part-(\d{10})-([0-9a-f]{16})-([0-9a-f]{8})\.tar\.zst")
BLOB = re.compile(r"([0-9a-f]{64})-(\d{10})-([0-9a-f]{8})")


@dataclass(frozen=True)
class CacheEntry:
    """One path of a saved cache and where Drive holds it."""

    path: str  # relative, '/'-separated
    kind: str  # "file", "dir" or "link"
    size: int  # bytes of a file; 0 otherwise
    signature: str  # a file's size and whole-second time; DIR; LINK + a link's target
    source: str  # the blob (under blobs/) or the part that holds it
    sha256: str = ""  # a blob's content
    mode: int = 0o644
    mtime: int = 0
    seen: int = 0  # when a save last found it on a machine (Unix time): pruning by age reads it

    @property
    def link(self) -> str:
        return self.signature[len(LINK) :] if self.kind == "link" else ""


@dataclass(frozen=True)
class CacheManifest(Record):
    """What a cache's manifest says (validated when read from Drive)."""

    KIND: ClassVar[str] = FORMAT
    VERSION: ClassVar[int] = 1
    name: str
    path: str  # the local folder it was saved from
    entries: tuple[CacheEntry, ...]
    parts: tuple[Shard, ...]  # the parts its entries name
    merged: tuple[str, ...]  # the manifests it supersedes (the heads when it was saved)
    sequence: int
    created: str
    host: str

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind != "dir")

    @property
    def unpacked(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def stored(self) -> int:
        """Bytes on Drive: each blob once, and the parts."""
        blobs = {e.source: e.size for e in self.entries if BLOB.fullmatch(e.source)}
        return sum(blobs.values()) + sum(p.size for p in self.parts)


def part_name(sha256: str) -> str:
    return f"part-{int(time.time()):010d}-{sha256[:16]}-{secrets.token_hex(4)}.tar.zst"


def blob_name(sha256: str) -> str:
    return f"{sha256}-{int(time.time()):010d}-{secrets.token_hex(4)}"


def name_time(name: str) -> int | None:
    """When a blob or part was written, from its name."""
    match = BLOB.fullmatch(name) or PART.fullmatch(name)
    if match is None:
        return None
    return int(match[2] if BLOB.fullmatch(name) else match[1])


def parse(data: bytes, what: str) -> CacheManifest:
    """A manifest read from Drive (untrusted): its structure, that every path is clean, sits in
    one tree and is held by a blob or part of the right name, and that no link leads out."""
    info = parse_record(CacheManifest, data, what=what)
    problems: list[str] = []
    parts = {p.name: p for p in info.parts}
    for part in info.parts:
        match = PART.fullmatch(part.name)
        if not match or not SHA256.fullmatch(part.sha256) or match[2] != part.sha256[:16]:
            problems.append(f"its part {part.name[:80]!r} is not a part's name and sha256")
        if part.size < 0 or part.unpacked < 0:
            problems.append(f"the sizes of {part.name[:80]!r} are not possible")
    kinds: dict[str, str] = {}
    for entry in info.entries:
        if not _archive.is_plain(entry.path) or entry.path in kinds:
            problems.append(f"{entry.path[:80]!r} is not a clean path, or appears twice")
        elif entry.kind not in KINDS or entry.size < 0 or (entry.kind != "file" and entry.size):
            problems.append(f"{entry.path[:80]!r} is not a file, folder or link of a size")
        elif (entry.kind == "dir") != (entry.signature == DIR) or (entry.kind == "link") != (
            entry.signature.startswith(LINK)
        ):
            problems.append(f"{entry.path[:80]!r} has a signature that is not its kind's")
        else:
            blob = BLOB.fullmatch(entry.source)
            if blob is not None:
                if entry.kind != "file" or blob[1] != entry.sha256:
                    problems.append(f"{entry.path[:80]!r} names a blob not of its content")
            elif entry.source not in parts:
                problems.append(f"{entry.path[:80]!r} is held by {entry.source[:80]!r}, unknown")
        kinds[entry.path] = entry.kind
        if len(problems) > 3:
            break
    for path in kinds:
        parent = path.rpartition("/")[0]
        while parent and not problems:
            if kinds.get(parent, "dir") != "dir":
                problems.append(f"{path[:80]!r} is under {parent[:80]!r}, which is no folder")
            parent = parent.rpartition("/")[0]
    links = {e.path: e.link for e in info.entries if e.kind == "link"}
    problems += [why for _, why in _archive.links_outside(links)[:3]]
    if any(not MANIFEST.fullmatch(m) for m in info.merged):
        problems.append("it merges what is not a manifest")
    if problems:
        raise InvalidRecord(f"{what}: {'; '.join(problems[:4])}")
    return info


def heads(store: Store, names: set[str]) -> list[tuple[str, CacheManifest]]:
    """The valid manifests in *store* that no other valid one merges, oldest first. A damaged
    one is skipped with a warning (what it merged stays a head)."""
    found: dict[str, CacheManifest] = {}
    for name in sorted(n for n in names if MANIFEST.fullmatch(n)):
        try:
            found[name] = parse(store.read(name, limit=MAX_BYTES), f"{store}/{name}")
        except FileNotFoundError:  # merged and removed by another save meanwhile
            continue
        except InvalidRecord as exc:
            logger.warning("colabsession: skipping a damaged cache manifest: %s", exc)
    merged = {m for info in found.values() for m in info.merged}
    kept = [(n, i) for n, i in found.items() if n not in merged]
    return sorted(kept, key=lambda item: (item[1].sequence, item[1].created, item[0]))


def merge(layers: list[dict[str, CacheEntry]]) -> dict[str, CacheEntry]:
    """One tree from *layers* (oldest first): a later layer's path wins, and what it displaces
    goes (a file where a folder was takes the folder's contents with it; a folder where a file
    or link was replaces that file)."""
    result: dict[str, CacheEntry] = {}
    for layer in layers:
        for path, entry in layer.items():
            old = result.get(path)
            if old is not None and old.kind == "dir" and entry.kind != "dir":
                prefix = path + "/"
                for other in [p for p in result if p.startswith(prefix)]:
                    del result[other]
            parent = path.rpartition("/")[0]
            while parent:
                above = result.get(parent)
                if above is not None and above.kind != "dir":
                    del result[parent]
                parent = parent.rpartition("/")[0]
            result[path] = entry
    return dict(sorted(result.items()))
