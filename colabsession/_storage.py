"""Where a run lives: its location, its local mirror, and plain words for storage faults."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import IO, Any

from ._errors import ConfigError
from ._runtime import home_dir, mount_type
from .drive import Location, resolve


def run_location(run_or_location: str | os.PathLike[str] | Location) -> Location:
    """A bare run name (``"digits-cnn"``) means ``drive:checkpoints/<name>``; anything with a
    slash or a colon is a location."""
    if isinstance(run_or_location, str) and not any(c in run_or_location for c in "/:\\"):
        if not run_or_location or run_or_location in (".", ".."):
            raise ConfigError(f"{run_or_location!r} is not a run name")
        return resolve(f"drive:checkpoints/{run_or_location}")
    return resolve(run_or_location)


def default_local_dir(location: Location) -> Path:
    """The run's local mirror under colabsession's home: readable name, unique suffix."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in location.description)[-60:]
    digest = hashlib.sha256(f"{location.fs.protocol}:{location.path}".encode()).hexdigest()[:8]
    return home_dir() / "checkpoints" / f"{slug.strip('-')}-{digest}"


def is_direct(location: Location) -> bool:
    """A local folder that is not a network mount needs no local mirror."""
    return location.is_local and not (mount_type(location.path) or "").startswith("fuse")


def reason(exc: BaseException) -> str:
    """A storage fault in plain words, with the fix where there is one."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
        return "the Drive mount dropped: run cs.drive.ensure() in a cell to remount"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left: Drive's quota (15 GB free) or the disk is full"
    return f"{type(exc).__name__}: {exc}"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(f: IO[Any]) -> None:
    """Flush *f* and make the system write it to disk before the next commit step."""
    f.flush()
    os.fsync(f.fileno())
