"""A checkpoint on disk: one file, named by its step and a unique id, that commits itself.

``ckpt-000000001200.3f9a1c2b7d4e.ckpt`` holds, in order::

    the state's arrays          raw bytes, each at a 64-byte boundary (see _serialize)
    the manifest                JSON: step, time, session, metrics, the state's tree, where each
                                array lies, the arrays' size and CRC32C, and its lineage (the
                                branch of saves it belongs to and where that branch began:
                                see :mod:`._lineage`), and the history records that the run's
                                history file at the location may lack yet (see
                                :class:`HistoryTail`)
    a 20-byte trailer           the manifest's length, its CRC32C and the magic b"CSCKPT01"

The trailer is written last, so a file cut short anywhere has no valid trailer and does not count:
no separate commit marker, no rename needed where there is none (Drive's API), and a single file
per checkpoint (each file costs several round trips on the Drive mount). Locally the file is also
written under a temporary name, fsynced and renamed into place. Every structural fault of a file
(trailer, manifest, tree, sizes, checksums) makes it invalid: it is skipped with a warning.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, ClassVar

from colabsession._core.records import InvalidRecord, Record, parse_record, read_json
from colabsession._storage.serialize import (
    ArrayInfo,
    array_paths,
    check_tree,
    crc32c,
    map_arrays,
    read_arrays_from,
    unflatten,
    uses_frameworks,
    write_arrays,
)

logger = logging.getLogger(__name__)

SUFFIX = ".ckpt"
PARKED = "parked-"
MAGIC = b"CSCKPT01"
TRAILER = struct.Struct("<QI8s")  # manifest length, manifest CRC32C, magic
_NAME = re.compile(r"ckpt-(\d{12,18})\.([0-9a-f]{12})\.ckpt")
_PART = re.compile(r"part-(\d{12,18})\.([0-9a-f]{12})\.part")

Metric = float | int | str | bool | None


class Damaged(Exception):
    """A checkpoint file that must not be loaded; the message says why."""


class CutShort(Damaged):
    """A checkpoint file whose write stopped before its trailer: an upload cut short (a kill, a
    dropped mount). Nothing can be read from it; a whole copy replaces it."""


@dataclass(frozen=True)
class Lineage:
    """Which line of saves a checkpoint belongs to. Each writer that starts writing (after
    :meth:`Checkpointer.restore`, or afresh) begins a *branch*, at wall-clock time *started*,
    that continues from the checkpoint (*fork_branch*, *fork_step*) it restored; *fork_step*
    None: from nothing (a new or restarted run), unless *follows* (the writer restored
    nothing and continues whatever came before it). *fork_branch* None names checkpoints
    written before lineages existed."""

    branch: str
    started: float
    fork_branch: str | None = None
    fork_step: int | None = None
    follows: bool = False


@dataclass(frozen=True)
class HistoryTail:
    """The run's history records that its history file at the location may lack yet, carried
    in a checkpoint's manifest: the location then holds them as soon as it holds the
    checkpoint, without an append to the history file each round (on the Drive mount 3-4
    round trips of the 8-9 a checkpoint costs). *lines* are history lines (JSON, one a line,
    as in the file) that continue the history file's revision *revision*, the one whose header
    carries the unique *mark*; a reader merges them into that revision only (a newer one
    supersedes them). A release that predates the
    field ignores it (a manifest's unknown fields are skipped) and sees the history file
    alone; the arrays read as before, as they do where a release cannot read a newer format
    of this part (it is left out, with a warning)."""

    revision: int
    mark: str
    lines: str
    version: int = 1  # of this part's format; a reader skips a newer one


@dataclass(frozen=True)
class Part:
    """A file of a checkpoint besides its own (a rank's shards, written by DCP), in the same
    folder: its name, its size and its CRC32C. The checkpoint's file, written after its parts,
    commits them; a copy carries the parts first; retention deletes them with it."""

    file: str
    size: int
    crc32c: int


@dataclass(frozen=True)
class Manifest(Record):
    """What a checkpoint file holds, as its trailer's manifest records it."""

    KIND: ClassVar[str] = "colabsession-checkpoint"
    VERSION: ClassVar[int] = 3  # 2: framework arrays (PyTorch, JAX) in the tree; 3: parts
    step: int
    time: float
    session: str
    metrics: dict[str, Metric]
    tree: Any
    arrays: list[ArrayInfo]
    size: int
    crc32c: int
    lineage: Lineage | None = None  # None: written by an older colabsession
    history: HistoryTail | None = None  # None: carries no history (or an older colabsession)
    parts: list[Part] | None = None  # files of the checkpoint besides this one (version 3)

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.time, timezone.utc)


def file_name(step: int, uid: str | None = None) -> str:
    """The name of a new checkpoint file of *step*."""
    return f"ckpt-{step:012d}.{uid or secrets.token_hex(6)}{SUFFIX}"


def parse_name(name: str) -> int | None:
    """The step of a checkpoint file's name, or None for any other name."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def part_name(step: int) -> str:
    """The name of a new part file of a checkpoint of *step* (see :class:`Part`)."""
    return f"part-{step:012d}.{secrets.token_hex(6)}.part"


def is_part_name(name: str) -> bool:
    return part_step(name) is not None


def part_step(name: str) -> int | None:
    """The step of a part file's name, or None for any other name."""
    match = _PART.fullmatch(name)
    return int(match.group(1)) if match else None


def check_part(f: IO[bytes], part: Part, *, chunk: int = 16 << 20) -> None:
    """Check the part file open as *f* against its size and CRC32C. Raises :class:`Damaged`."""
    import google_crc32c

    crc, have = 0, 0
    while data := f.read(chunk):
        crc = google_crc32c.extend(crc, data)
        have += len(data)
        if have > part.size:
            break
    if have != part.size:
        raise Damaged(f"its part {part.file} has {have} bytes, its manifest says {part.size}")
    if crc != part.crc32c:
        raise Damaged(f"its part {part.file} does not match its checksum")


def write(f: IO[bytes], arrays: Iterable[Any], **fields: Any) -> Manifest:
    """Write a whole checkpoint file to *f*; *fields* are the manifest's (step, time, ...;
    ``parts``: the files already written and fsynced beside it that it commits)."""
    infos, size, crc = write_arrays(f, arrays)
    # Format 1 where it suffices, so that older releases still read plain checkpoints (and
    # refuse, as newer, those with parts, which they could not load whole).
    version = 3 if fields.get("parts") else 2 if uses_frameworks(fields.get("tree")) else 1
    manifest = Manifest(arrays=infos, size=size, crc32c=crc, version=version, **fields)
    body = manifest.to_json()
    f.write(body)
    f.write(TRAILER.pack(len(body), crc32c(body), MAGIC))
    return manifest


def _parse_manifest(body: bytes, name: str) -> Manifest:
    """The manifest *body* as a record. A history tail of a format this release cannot read (a
    newer one, whose fields changed: see :class:`HistoryTail`) is left out, with a warning:
    the arrays read as before. Raises InvalidRecord."""
    raw = read_json(body, what="its manifest")
    try:
        return parse_record(Manifest, raw, what="its manifest")
    except InvalidRecord:
        if not isinstance(raw, dict) or raw.get("history") is None:
            raise
        manifest = parse_record(
            Manifest, {k: v for k, v in raw.items() if k != "history"}, what="its manifest"
        )
    logger.warning(
        "colabsession: %s carries history records of a format this colabsession cannot read: "
        "upgrade colabsession to see them",
        name,
    )
    return manifest


def read_manifest(read_tail: Any, file_size: int, name: str) -> Manifest:
    """The manifest of the checkpoint file *name* of *file_size* bytes; ``read_tail(n)`` returns
    its last *n* bytes. Raises :class:`Damaged`."""
    step = parse_name(name)
    if step is None:
        raise Damaged(f"{name} is not a checkpoint file's name")
    if file_size < TRAILER.size:
        raise CutShort(f"it has {file_size} bytes: the save was cut short")
    tail = read_tail(min(file_size, 64 << 10))
    length, crc, magic = TRAILER.unpack(tail[-TRAILER.size :])
    if magic != MAGIC:
        raise CutShort("it has no trailer: the save was cut short")
    if length > file_size - TRAILER.size:
        raise Damaged("its trailer is damaged")
    if length + TRAILER.size > len(tail):
        tail = read_tail(length + TRAILER.size)
    body = bytes(tail[-TRAILER.size - length : -TRAILER.size])
    if crc32c(body) != crc:
        raise Damaged("its manifest does not match its checksum")
    try:
        manifest = _parse_manifest(body, name)
        check_tree(manifest.tree, len(manifest.arrays))
    except (InvalidRecord, ValueError) as exc:
        raise Damaged(str(exc)) from None
    if manifest.step != step:
        raise Damaged(f"its manifest says step {manifest.step}, its name step {step}")
    if manifest.size != file_size - TRAILER.size - length:
        raise Damaged(f"its manifest says {manifest.size} bytes of arrays, the file has other")
    parts = manifest.parts or []
    # Names read from Drive are untrusted: a part is a plain file of the same folder, named as
    # colabsession names parts, each once.
    if any(not is_part_name(p.file) or p.size < 0 for p in parts) or len(
        {p.file for p in parts}
    ) != len(parts):
        raise Damaged("its manifest names a part file that is refused")
    return manifest


def read(readinto: Callable[[memoryview], int], manifest: Manifest) -> Any:
    """The state of a checkpoint file read from its start through ``readinto(view)`` (see
    :func:`~.serialize.read_arrays_from`), each array into memory of its own, verified before
    anything is returned. Raises Damaged."""
    try:
        arrays, crc = read_arrays_from(readinto, manifest.size, manifest.arrays)
    except ValueError as exc:
        raise Damaged(str(exc)) from None
    except EOFError:
        raise Damaged(f"it has fewer than the {manifest.size} bytes its manifest needs") from None
    if crc != manifest.crc32c:
        raise Damaged("its arrays do not match their checksum")
    return unflatten(manifest.tree, arrays)


def read_mapped(
    buffer: Any,
    manifest: Manifest,
    progress: Callable[[int], object] | None = None,
    own: Callable[[tuple[Any, ...]], bool] | None = None,
    read_at: Callable[[Any, int], int] | None = None,
) -> Any:
    """The state of a checkpoint file mapped into memory as *buffer*, its arrays views into
    the mapping (see :func:`~.serialize.map_arrays`), verified whole before anything is
    returned; those whose place in the state ``own(path)`` says the caller keeps (a path is
    the keys and positions that lead to it) are read into memory of their own in the same
    pass, through ``read_at(view, offset)`` where given. Raises Damaged."""
    keep = [i for i, path in array_paths(manifest.tree).items() if own(path)] if own else []
    try:
        arrays, crc = map_arrays(
            buffer, manifest.size, manifest.arrays, progress, set(keep), read_at
        )
    except ValueError as exc:
        raise Damaged(str(exc)) from None
    if crc != manifest.crc32c:
        raise Damaged("its arrays do not match their checksum")
    return unflatten(manifest.tree, arrays)


def check_arrays(f: IO[bytes], manifest: Manifest, *, chunk: int = 16 << 20) -> None:
    """Check the arrays of the checkpoint file open as *f* against the CRC32C of *manifest*,
    read in chunks, without building the state (and without importing NumPy: ``cs.session``
    checks a checkpoint before the environment that may hold another NumPy is active).
    Raises :class:`Damaged`."""
    import google_crc32c

    crc, left = 0, manifest.size
    while left:
        data = f.read(min(chunk, left))
        if not data:
            raise Damaged(
                f"it has {manifest.size - left} bytes, its manifest needs {manifest.size}"
            )
        crc = google_crc32c.extend(crc, data)
        left -= len(data)
    if crc != manifest.crc32c:
        raise Damaged("its arrays do not match their checksum")
