"""Locations: where something is stored, as an fsspec file system and a path inside it, and
the one rule that turns ``drive:...``, a local path or a URL into one.

>>> from colabsession.drive import resolve
>>> resolve("/tmp/run-1").path
'/tmp/run-1'
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any, cast

from colabsession._core.errors import ConfigError, MountError
from colabsession._drive import api as _gdrive
from colabsession._drive.api import configured as api_configured
from colabsession._drive.api import connect
from colabsession._drive.mount import ensure, say_local_folder
from colabsession._runtime.runtime import (
    COLAB_MOUNTPOINT,
    default_drive_root,
    detect_kind,
    fuse_drive_mounted,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


@dataclass(frozen=True)
class Location:
    """Where something is stored: an fsspec file system and a path inside it."""

    fs: AbstractFileSystem
    path: str
    description: str

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(self.fs, path, "/".join([self.description, *parts]))

    def __str__(self) -> str:
        return self.description


class LocalFiles:
    """The local file system (the Drive mount and the folder that stands in for Drive included)
    as fsspec's LocalFileSystem offers it, without importing fsspec: the operations the
    store's backends use are plain system calls here, so that a restore from a local path
    (cs.env.restore() in a new kernel) does not pay fsspec's import (asyncio, its entry points,
    0.1-0.3 s); anything else is handed to a LocalFileSystem made on first use.

    >>> fs = local_files()
    >>> fs.protocol, fs.isdir("/")
    (('file', 'local'), True)
    """

    protocol = ("file", "local")

    def __init__(self) -> None:
        self._fsspec: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_fsspec":
            raise AttributeError(name)
        if self._fsspec is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fsspec = LocalFileSystem()
        return getattr(self._fsspec, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalFiles)

    def __hash__(self) -> int:
        return hash(LocalFiles)

    def __reduce__(self) -> tuple[Any, ...]:
        return (local_files, ())

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = _strip(path)
        out = os.stat(path, follow_symlinks=False)
        link = stat.S_ISLNK(out.st_mode)
        if link:
            out = os.stat(path, follow_symlinks=True)
        kind = (
            "directory"
            if stat.S_ISDIR(out.st_mode)
            else "file"
            if stat.S_ISREG(out.st_mode)
            else "other"
        )
        result = {
            "name": path,
            "size": out.st_size,
            "type": kind,
            "created": out.st_ctime,
            "islink": link,
            "mode": out.st_mode,
            "uid": out.st_uid,
            "gid": out.st_gid,
            "mtime": out.st_mtime,
            "ino": out.st_ino,
            "nlink": out.st_nlink,
        }
        if link:
            result["destination"] = os.readlink(path)
        return result

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> list[Any]:
        path = _strip(path)
        if not os.path.isdir(path):
            found = [self.info(path)]  # a file lists itself; a missing one raises
            return found if detail else [path]
        names = [f"{path.rstrip('/')}/{n}" for n in os.listdir(path)]
        if not detail:
            return names
        infos = []
        for name in names:
            try:
                infos.append(self.info(name))
            except FileNotFoundError:  # deleted since the listing
                continue
        return infos

    def size(self, path: str) -> int:
        return int(os.stat(_strip(path)).st_size)

    def exists(self, path: str, **kwargs: Any) -> bool:
        return os.path.lexists(_strip(path))

    def isfile(self, path: str) -> bool:
        return os.path.isfile(_strip(path))

    def isdir(self, path: str) -> bool:
        return os.path.isdir(_strip(path))

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:
        return open(_strip(path), mode)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        with open(_strip(path), "rb") as f:
            if end is not None and end < 0:
                end += f.seek(0, os.SEEK_END)
            if start is not None:
                f.seek(start, os.SEEK_SET if start >= 0 else os.SEEK_END)
            else:
                f.seek(0)
            return f.read() if end is None else f.read(max(0, end - f.tell()))

    def rm_file(self, path: str) -> None:
        os.remove(_strip(path))

    def rm(self, path: str, recursive: bool = False, **kwargs: Any) -> None:
        path = _strip(path)
        if os.path.isdir(path) and not os.path.islink(path):
            if not recursive:
                raise IsADirectoryError(path)
            shutil.rmtree(path)
        else:
            os.remove(path)

    def mv(self, source: str, target: str, **kwargs: Any) -> None:
        shutil.move(_strip(source), _strip(target))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(_strip(path), exist_ok=exist_ok)

    def __repr__(self) -> str:
        return "LocalFiles()"


_LOCAL = LocalFiles()


def local_files() -> AbstractFileSystem:
    """The local file system for a :class:`Location` (see :class:`LocalFiles`)."""
    # It offers LocalFileSystem's methods (its own or the real one's, made on first use).
    return cast("AbstractFileSystem", _LOCAL)


def _strip(path: str) -> str:
    """*path* as fsspec's LocalFileSystem names it: absolute, without a protocol or a
    trailing slash."""
    path = os.fspath(path)
    path = path[len("file://") :] if path.startswith("file://") else path
    if not path.startswith("/"):
        path = os.path.abspath(path)
    return path.rstrip("/") or "/"


def resolve(location: str | os.PathLike[str] | Location) -> Location:
    """Turn a location into a file system and a path:

    - a local path (``/content/drive/MyDrive/x`` and ``~/runs/x`` included);
    - ``drive:relative/path``: that path inside My Drive, through the mount in Colab (mounting
      if needed), the Drive API when credentials are configured (``connect()`` or
      ``$COLABSESSION_SERVICE_ACCOUNT``), else the local folder that stands in for Drive;
    - any fsspec URL: ``gdrive://folder-id/path`` (the Drive API), ``gs://bucket/path``,
      ``memory://path``, ...
    """
    if isinstance(location, Location):
        return location
    text = os.fspath(location)
    if not isinstance(text, str):
        raise ConfigError(f"a location must be a path or a string, not {type(location).__name__}")
    if text.startswith("drive:"):
        return _drive_location(text, text[len("drive:") :])
    if "://" in text:
        return _url_location(text)
    path = os.path.abspath(os.path.expanduser(text))
    _refuse_unmounted(path)
    return Location(local_files(), path, path)


def _refuse_unmounted(path: str) -> None:
    """In Colab, a path under /content/drive while Drive is not mounted is on the VM's disk:
    what is written there is lost with the runtime, and its files make the next mount fail
    ("Mountpoint must not already contain files")."""
    point = str(COLAB_MOUNTPOINT)
    if not (path == point or path.startswith(point + "/")) or detect_kind() != "colab":
        return
    if fuse_drive_mounted(COLAB_MOUNTPOINT):
        return
    raise MountError(
        f"{path} is under {point}, but Drive is not mounted there: the data would go to this "
        "runtime's disk, be lost when it ends, and make the next mount fail. Mount Drive "
        "first, cs.mount(), or use 'drive:...' locations, which mount it when needed"
    )


def _drive_location(text: str, relative: str) -> Location:
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or ".." in parts:
        raise ConfigError(
            f"{text!r}: a drive: location is a path inside My Drive, without a leading '/' or "
            "'..', e.g. 'drive:checkpoints/my-run'"
        )
    clean = "/".join(parts)
    kind = detect_kind()
    if kind != "colab" and (_gdrive.current is not None or api_configured()):
        fs = _gdrive.current if _gdrive.current is not None else connect()
        return Location(fs, f"{fs.root}/{clean}".rstrip("/"), f"{text} (Drive API)")
    # Outside Colab the stand-in folder is not created here: reading a run that does not exist
    # must leave no folder behind; writers create what they write into.
    root = ensure() if kind == "colab" else default_drive_root(kind)
    if kind != "colab":
        say_local_folder(root)
    return Location(local_files(), str(root / clean) if clean else str(root), text)


def _url_location(url: str) -> Location:
    if url.startswith("gdrive://"):
        path = url[len("gdrive://") :].strip("/")
        folder = path.split("/")[0]
        if not folder:
            raise ConfigError(f"{url!r}: say which folder, e.g. 'gdrive://root/checkpoints'")
        known = _gdrive.current
        same = known is not None and known.root == folder
        fs = known if same else connect(folder=folder, use_for_drive=False)
        return Location(fs, path, url)
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise ConfigError(f"{url!r} needs a package that is not installed: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a location fsspec knows: {exc}") from None
    return Location(fs, path, url)
