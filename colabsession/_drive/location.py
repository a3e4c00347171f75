"""Locations: where something is stored, as an fsspec file system and a path inside it, and
the one rule that turns ``drive:...``, a local path or a URL into one.

>>> from colabsession.drive import resolve
>>> resolve("/tmp/run-1").path
'/tmp/run-1'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

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
    from fsspec.implementations.local import LocalFileSystem

    path = os.path.abspath(os.path.expanduser(text))
    _refuse_unmounted(path)
    return Location(LocalFileSystem(), path, path)


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
    from fsspec.implementations.local import LocalFileSystem

    return Location(LocalFileSystem(), str(root / clean) if clean else str(root), text)


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
