"""A packed dataset on Drive: its shards and the manifest that commits them (the on-disk format).

A packed dataset is a folder (by default ``<source>.packed`` beside the source) of shards, each a
tar archive (zstd-compressed by default) in the WebDataset style: plain tar that ``tar -xf``
reads, members in the source's sorted order, a sample's files (``a/x.jpg``, ``a/x.json``) never
split across shards. A shard's name holds its sha256, so no name is ever written twice. The
manifest, written last, names the shards and what each holds; the newest complete one counts,
and one that is damaged, or names a shard that is missing, is skipped for the one before it::

    flowers.packed/
        part-000000-3f2a9c1d0b7e6a54.tar.zst
        part-000001-9e0d4c7b2a1f8e63.tar.zst
        manifest.000002.5c1e9a0f.json
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import ClassVar

from colabsession._core.errors import DataError
from colabsession._core.files import reason
from colabsession._core.records import MAX_BYTES, InvalidRecord, Record, parse_record
from colabsession._data import archive as _archive
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)

FORMAT = "colabsession-dataset"
DIR = "dir"  # a folder's signature: its time changes whenever a file is added under it
LINK = "link:"  # a symbolic link's signature starts so; its target follows
MANIFEST = re.compile(r"manifest\.(\d{6,})\.([0-9a-f]{8})\.json")
SHARD = re.compile(r"part-(\d{6,})-([0-9a-f]{16})\.tar(\.zst)?")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Member:
    """One file, folder or symbolic link of a shard, as it was when packed.

    >>> info = cs.data.pack("drive:datasets/flowers")     # doctest: +SKIP
    >>> [m.link for m in info.shards[0].members if m.link]  # doctest: +SKIP
    ['../../blobs/9f2c...']
    """

    path: str  # relative, '/'-separated
    size: int
    signature: str  # size and modification time (or checksum) of the source file; DIR for
    # folders; LINK + target for symbolic links

    @property
    def link(self) -> str:
        """Where a symbolic link points (as written in it); "" for a file or folder."""
        return self.signature[len(LINK) :] if self.signature.startswith(LINK) else ""


@dataclass(frozen=True)
class Shard:
    """One archive of a packed dataset."""

    name: str
    size: int  # bytes of the archive
    sha256: str
    unpacked: int  # bytes of file data
    members: tuple[Member, ...]


@dataclass(frozen=True)
class DatasetInfo(Record):
    """What a packed dataset's manifest says (validated when read from Drive).

    >>> info = cs.data.pack("drive:datasets/flowers")
    colabsession: packed drive:datasets/flowers (8 files, 1.2 KiB) into 1 shard(s) at ...
    >>> info.files, info.unpacked, len(info.shards)
    (8, 1200, 1)
    """

    KIND: ClassVar[str] = FORMAT
    VERSION: ClassVar[int] = 1
    source: str
    compression: str  # "zstd" or "none"
    shard_size: int  # the target size of a shard's file data, in bytes
    shards: tuple[Shard, ...]
    complete: bool  # False while packing goes on (stage refuses it; pack continues from it)
    sequence: int
    created: str

    @property
    def files(self) -> int:
        return sum(len(s.members) for s in self.shards)

    @property
    def unpacked(self) -> int:
        return sum(s.unpacked for s in self.shards)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shards)


def shard_name(index: int, sha256: str, compression: str) -> str:
    return f"part-{index:06d}-{sha256[:16]}{'.tar.zst' if compression == 'zstd' else '.tar'}"


def manifest_name(sequence: int) -> str:
    return f"manifest.{sequence:06d}.{secrets.token_hex(4)}.json"


def parse(data: bytes, what: str) -> DatasetInfo:
    """A manifest read from Drive (untrusted): its structure, and that what it names is safe."""
    info = parse_record(DatasetInfo, data, what=what)
    problems = []
    if info.compression not in ("zstd", "none"):
        problems.append(f"its compression {info.compression!r} is unknown")
    seen: set[str] = set()
    for shard in info.shards:
        match = SHARD.fullmatch(shard.name)
        if not match or not SHA256.fullmatch(shard.sha256) or match[2] != shard.sha256[:16]:
            problems.append(f"its shard {shard.name[:80]!r} is not a shard's name and sha256")
        elif (match[3] == ".zst") != (info.compression == "zstd"):
            problems.append(f"its shard {shard.name!r} does not match its compression")
        if shard.size < 0 or shard.unpacked < 0 or any(m.size < 0 for m in shard.members):
            problems.append(f"the sizes of {shard.name[:80]!r} are not possible")
        elif sum(m.size for m in shard.members if m.signature != DIR) != shard.unpacked:
            problems.append(f"the members of {shard.name[:80]!r} do not add up to its size")
        for member in shard.members:
            try:
                clean = _archive.clean(member.path)
            except _archive.UnsafeArchive as exc:
                problems.append(str(exc))
                break
            if clean != member.path or member.path in seen:
                problems.append(f"{member.path[:80]!r} is not clean or appears twice")
                break
            seen.add(member.path)
        if len(problems) > 3:
            break
    if problems:
        raise InvalidRecord(f"{what}: {'; '.join(problems)}")
    return info


def manifests(names: set[str]) -> list[tuple[int, str]]:
    """(sequence, name) of the manifests among *names*, newest first."""
    found = ((int(m[1]), n) for n in names if (m := MANIFEST.fullmatch(n)))
    return sorted(found, reverse=True)


def newest(
    store: Store, names: set[str] | None = None, *, complete: bool = True
) -> tuple[DatasetInfo, str] | None:
    """The newest valid manifest in *store* whose shards are all there (only complete ones if
    *complete*), with its name; None when there is none. Damaged ones are skipped with a
    warning; DataError when every one is damaged."""
    if names is None:
        try:
            names = set(store.names())
        except (OSError, TimeoutError) as exc:
            raise DataError(f"cannot list {store} ({reason(exc)})") from None
    problems = []
    found = manifests(names)
    for _, name in found:
        try:
            info = parse(store.read(name, limit=MAX_BYTES), f"{store}/{name}")
        except (InvalidRecord, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        except (OSError, TimeoutError) as exc:
            raise DataError(f"cannot read {store}/{name} ({reason(exc)})") from None
        if complete and not info.complete:
            continue
        missing = [s.name for s in info.shards if s.name not in names]
        if missing:
            problems.append(f"{name} names {missing[0]}, which is missing")
            continue
        if problems:
            logger.warning(
                "colabsession: %s: skipping what is damaged (%s); using %s",
                store,
                "; ".join(problems),
                name,
            )
        return info, name
    if problems:
        raise DataError(
            f"the packed dataset in {store} is damaged ({'; '.join(problems)}). Pack the source "
            "again with cs.data.pack(source) (the damaged files stay until the new pack is "
            "complete)"
        )
    return None
