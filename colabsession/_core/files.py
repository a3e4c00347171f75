"""Plain file helpers shared by every store: commit a folder, write with bare system calls,
hash a file, and say a storage fault in plain words."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path


def reason(exc: BaseException) -> str:
    """A storage fault in plain words, with the fix where there is one."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
        return "the Drive mount dropped: run cs.drive.ensure() in a cell to remount"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left: Drive's quota (15 GB free) or the disk is full (!df -h)"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not allowed to write there ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return f"it did not answer in time ({exc})"
    return f"{type(exc).__name__}: {exc}"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def replace_folder(new: Path, dest: Path) -> None:
    """Move the complete folder *new* to *dest*, replacing what is there: the old one is renamed
    aside first and removed after, so *dest* is always one whole folder or absent."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{secrets.token_hex(4)}"
        os.rename(dest, old)
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_fd(
    path: str, chunks: Iterable[bytes | memoryview], flags: int, mode: int = 0o644
) -> None:
    """Write *chunks* to *path*, opened with *flags*, with bare system calls: no fstat and no
    lseek, which Python's file objects add (on a FUSE mount such as Drive's, each is a round
    trip)."""
    fd = os.open(path, flags, mode)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
