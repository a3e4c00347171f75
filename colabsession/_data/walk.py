"""A folder's files, listed and read with many requests in flight.

Through the Drive mount every file operation is a round trip (tens of milliseconds or more), so
a folder of 20,000 files listed or read one file at a time takes many minutes. Here a folder is
listed with one thread per pending directory or file status, and files are read or copied by a
pool of threads; every wait is bounded, so a dead mount raises TimeoutError instead of hanging.
Local paths (the mount included) are read with bare system calls: Python's ``open`` adds an
``fstat`` and an ``lseek``, each one more round trip on the mount.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from colabsession._core.files import write_fd
from colabsession._core.records import read_count
from colabsession._core.timeout import call_with_timeout, map_bounded
from colabsession._data.dataset import DIR, LINK
from colabsession._drive.location import Location
from colabsession._storage.store import SLOWEST

CHUNK = 1 << 20
SMALL = 16 << 20  # files up to this size are read whole, ahead of the writer
STREAM_CHUNK = 4 << 20  # bytes of a larger file read at a time


@dataclass(frozen=True)
class SourceFile:
    """A file (or folder) of a source folder."""

    path: str  # relative, '/'-separated
    size: int
    signature: str  # size and time of change (or checksum); DIR for a folder
    mtime: float = 0.0
    mode: int = 0o644
    link: str = ""  # a symbolic link's target (as written in the link); "" for anything else

    @property
    def is_dir(self) -> bool:
        return self.signature == DIR

    @property
    def is_link(self) -> bool:
        return bool(self.link)


def link_signature(target: str) -> str:
    """A symbolic link's signature: what it points to (a link re-pointed has changed)."""
    return f"{LINK}{target}"


def walk(
    location: Location,
    *,
    workers: int,
    timeout: float,
    skip: Callable[[str], bool] = lambda path: False,
) -> tuple[list[SourceFile], list[str]]:
    """Every file, folder and symbolic link under *location* (sorted by path, folders included;
    a link is listed, never followed) and the paths left out (special files). *skip* leaves out
    a relative path and all under it."""
    if location.is_local:
        found, left_out = _walk_local(location.path, workers, timeout, skip)
    else:
        found, left_out = _walk_fs(location, timeout, skip)
    return sorted(found, key=lambda f: f.path), sorted(left_out)


def _walk_local(
    root: str, workers: int, timeout: float, skip: Callable[[str], bool]
) -> tuple[list[SourceFile], list[str]]:
    found: list[SourceFile] = []
    left_out: list[str] = []
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="colabsession-walk")
    pending: set[Future[Any]] = set()

    def scan(relative: str) -> tuple[str, str, list[str]]:
        return "dir", relative, os.listdir(f"{root}/{relative}" if relative else root)

    def status(relative: str) -> tuple[str, str, os.stat_result]:
        return "stat", relative, os.lstat(f"{root}/{relative}")

    def link(relative: str) -> tuple[str, str, tuple[str, os.stat_result]]:
        path = f"{root}/{relative}"
        return "link", relative, (os.readlink(path), os.lstat(path))

    try:
        pending.add(pool.submit(scan, ""))
        while pending:
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                raise TimeoutError(f"listing {root} did not answer within {timeout:g} s")
            for future in done:
                kind, relative, value = future.result()
                if kind == "link":
                    target, there = value
                    found.append(
                        SourceFile(
                            relative, 0, link_signature(target), there.st_mtime, 0o777, target
                        )
                    )
                    continue
                if kind == "dir":
                    for name in value:
                        child = f"{relative}/{name}" if relative else name
                        if not skip(child):
                            pending.add(pool.submit(status, child))
                    continue
                mode = value.st_mode
                if stat.S_ISDIR(mode):
                    found.append(SourceFile(relative, 0, DIR, value.st_mtime, 0o755))
                    pending.add(pool.submit(scan, relative))
                elif stat.S_ISREG(mode):
                    signature = f"{value.st_size}:{value.st_mtime_ns}"
                    perm = 0o755 if mode & 0o100 else 0o644
                    found.append(
                        SourceFile(relative, value.st_size, signature, value.st_mtime, perm)
                    )
                elif stat.S_ISLNK(mode):
                    pending.add(pool.submit(link, relative))
                else:
                    left_out.append(relative)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return found, left_out


def _walk_fs(
    location: Location, timeout: float, skip: Callable[[str], bool]
) -> tuple[list[SourceFile], list[str]]:
    root = location.path.rstrip("/")
    listing = call_with_timeout(
        lambda: location.fs.find(root, withdirs=True, detail=True),
        timeout,
        what=f"list {location}",
    )
    found, left_out = [], []
    for path, info in listing.items():
        relative = str(path).rstrip("/")[len(root) :].lstrip("/")
        if not relative or skip(relative) or any(skip(p) for p in _parents(relative)):
            continue
        if info.get("type") == "directory":
            found.append(SourceFile(relative, 0, DIR, 0.0, 0o755))
            continue
        size = read_count(info.get("size"))
        if size is None:  # a Google Doc, Sheet, ... (no bytes to copy), or a size that is none
            left_out.append(relative)
            continue
        change = next(
            (info[k] for k in ("md5Checksum", "md5", "ETag", "mtime", "modifiedDate") if k in info),
            "",
        )
        found.append(SourceFile(relative, size, f"{size}:{change}", _time(info)))
    # The Drive API's listing names files, not always their folders: each folder a file is in
    # is one of the source's, listed or not (or staging it finds no folder to copy into).
    listed = {f.path for f in found}
    for item in list(found):
        for parent in _parents(item.path):
            if parent not in listed:
                listed.add(parent)
                found.append(SourceFile(parent, 0, DIR, 0.0, 0o755))
    return found, left_out


def _parents(relative: str) -> list[str]:
    parts = relative.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _time(info: dict[str, Any]) -> float:
    value = info.get("mtime")
    return float(value) if isinstance(value, (int, float)) else 0.0


def read_ahead(
    location: Location, files: list[SourceFile], *, workers: int, timeout: float
) -> Iterator[tuple[SourceFile, bytes | None]]:
    """Each of *files* (in order) with its content, read by *workers* threads ahead of the
    caller; a folder or link (nothing to read), or a file larger than 16 MiB, comes with None
    (stream it with :func:`stream_file`, so that memory stays bounded)."""

    def read(item: SourceFile) -> tuple[SourceFile, bytes | None]:
        if item.is_dir or item.is_link or item.size > SMALL:
            return item, None
        return item, read_file(location, item.path)

    return map_bounded(read, files, workers=workers, timeout=timeout, what="read")


def read_file(location: Location, relative: str) -> bytes:
    """The whole content of a file under *location*."""
    path = f"{location.path.rstrip('/')}/{relative}"
    if not location.is_local:
        return bytes(location.fs.cat_file(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while chunk := os.read(fd, CHUNK):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def stream_file(location: Location, relative: str, *, size: int, timeout: float) -> Iterator[bytes]:
    """The first *size* bytes of a file under *location*, in chunks (for files too large to
    read whole). Opening it, each read and closing it are each bounded by *timeout* seconds
    (more for a larger chunk): a mount that stops answering mid-file raises TimeoutError, and
    the read it is stuck in is abandoned."""
    path = f"{location.path.rstrip('/')}/{relative}"
    limit = timeout + STREAM_CHUNK / SLOWEST
    f = call_with_timeout(lambda: location.fs.open(path, "rb"), timeout, what=f"open {path}")
    try:
        left = size
        while left:
            chunk = call_with_timeout(
                functools.partial(f.read, min(left, STREAM_CHUNK)), limit, what=f"read {path}"
            )
            if not chunk:
                return
            left -= len(chunk)
            yield bytes(chunk)
    finally:
        with contextlib.suppress(OSError, TimeoutError):
            call_with_timeout(f.close, timeout, what=f"close {path}")


def copy_file(location: Location, item: SourceFile, target: str) -> int:
    """Copy *item* to the local path *target* (its folder exists), give it the source's time
    (so that an interrupted copy can tell what is done) and return the bytes copied."""
    source = f"{location.path.rstrip('/')}/{item.path}"
    copied = 0

    def counted(read: Callable[[int], bytes]) -> Iterator[bytes]:
        nonlocal copied
        while chunk := read(CHUNK):
            copied += len(chunk)
            yield chunk

    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if location.is_local:
        fd = os.open(source, os.O_RDONLY)
        try:
            write_fd(target, counted(lambda n: os.read(fd, n)), flags, item.mode)
        finally:
            os.close(fd)
    else:
        with location.fs.open(source, "rb") as src:
            write_fd(target, counted(src.read), flags, item.mode)
    if item.mtime:
        os.utime(target, (item.mtime, item.mtime))
    return copied


def same(item: SourceFile, target: str) -> bool:
    """Whether the local *target* is already a whole copy of *item* (size and time)."""
    try:
        there = os.stat(target)
    except OSError:
        return False
    return there.st_size == item.size and (
        not item.mtime or abs(there.st_mtime - item.mtime) < 1e-3
    )
