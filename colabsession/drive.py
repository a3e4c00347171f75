"""Google Drive, one way everywhere: the FUSE mount in Colab, the Drive API elsewhere when
credentials are configured, else a local folder that stands in for Drive.

>>> import colabsession as cs
>>> root = cs.mount()                      # Colab: /content/drive/MyDrive; elsewhere a local folder
>>> loc = cs.drive.resolve("drive:checkpoints/run-1")
>>> loc.fs.makedirs(loc.path, exist_ok=True)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from . import _gdrive
from ._errors import ConfigError, MountError, MountTimeoutError
from ._gdrive import configured as api_configured
from ._gdrive import connect, disconnect, load_credentials
from ._runtime import (
    COLAB_MOUNTPOINT,
    MY_DRIVE,
    default_drive_root,
    detect_kind,
    fuse_drive_mounted,
    home_dir,
)
from ._timeout import Backoff, call_with_timeout
from ._units import Duration, format_duration, parse_duration

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "Location",
    "connect",
    "disconnect",
    "ensure",
    "flush_and_unmount",
    "healthy",
    "load_credentials",
    "local_notice",
    "mount",
    "resolve",
]

logger = logging.getLogger("colabsession.drive")
_said_local = False
_notice = True
_sleep = time.sleep  # tests replace these two
_stat = os.stat


def mount(
    mountpoint: str | os.PathLike[str] = COLAB_MOUNTPOINT,
    *,
    force: bool = False,
    timeout: Duration = "120s",
    readonly: bool = False,
    retries: int = 2,
) -> Path:
    """Mount Google Drive and return the path of "My Drive".

    In Colab, a live Drive mount at *mountpoint* is reused at once (unless *force*); otherwise
    ``google.colab.drive.mount`` is called, a timed-out mount is retried *retries* times with
    growing pauses, and each failure becomes a :class:`MountError` that says what to do.
    Elsewhere the local folder that stands in for Drive is returned (created if needed).
    """
    kind = detect_kind()
    if kind != "colab":
        root = default_drive_root(kind)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {root}, the local folder that stands in for Drive "
                f"({exc.strerror or exc}): set COLABSESSION_DRIVE (or COLABSESSION_HOME) to a "
                "folder you can write to"
            ) from None
        _say_local(root)
        return root
    point = Path(mountpoint)
    if not force and fuse_drive_mounted(point):
        return point / MY_DRIVE
    seconds = parse_duration(timeout, name="timeout")
    try:
        from google.colab import drive as colab_drive
    except ImportError:
        raise MountError(
            "this looks like Colab, but google.colab cannot be imported: restart the runtime "
            "(Runtime > Restart session) and run the cell again"
        ) from None
    backoff = Backoff(initial=5.0, maximum=3600.0, factor=3.0)
    for attempt in range(retries + 1):
        try:
            colab_drive.mount(
                str(point),
                force_remount=force or attempt > 0,
                timeout_ms=int(seconds * 1000),
                readonly=readonly,
            )
            return point / MY_DRIVE
        except Exception as exc:
            error = _mount_error(exc, point, seconds)
            if not isinstance(error, MountTimeoutError) or attempt == retries:
                raise error from exc
            pause = backoff.failed()
            logger.warning(
                "Drive did not answer while mounting (attempt %d of %d); trying again in %.0f s",
                attempt + 1,
                retries + 1,
                pause,
            )
            _sleep(pause)
    raise AssertionError("unreachable")


def _mount_error(exc: Exception, point: Path, seconds: float) -> MountError:
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    if "must not already contain files" in lowered:
        return MountError(
            f"cannot mount Drive at {point}: the folder already holds files ({message}). Move "
            f"them away (`!mv {point} {point}-old`), or mount elsewhere: "
            "cs.mount('/content/gdrive')"
        )
    if "must not be a symlink" in lowered:
        return MountError(
            f"cannot mount Drive at {point}: it is a symbolic link ({message}). Remove the link "
            f"(`!rm {point}`) or mount elsewhere: cs.mount('/content/gdrive')"
        )
    if "timeout" in lowered or "timed out" in lowered:
        return MountTimeoutError(
            f"Drive did not answer within {format_duration(seconds)} while mounting ({message}). "
            "Drive may be slow right now, or My Drive's top folder holds very many files: try "
            "again with a longer timeout, cs.mount(timeout='300s'), or move files into subfolders"
        )
    if "mount failed" in lowered:
        return MountError(
            f"mounting Drive failed ({message}). Run the cell again; if it keeps failing, choose "
            "Runtime > Disconnect and delete runtime and mount again, and make sure you allowed "
            "this notebook to access your Google Drive"
        )
    return MountError(f"mounting Drive failed: {message}")


def local_notice(enabled: bool) -> None:
    """Whether to say (once per home) that a local folder stands in for Drive outside Colab;
    the command line turns it off, as its commands name the folders they use."""
    global _notice
    _notice = enabled


def _say_local(root: Path) -> None:
    """Say once per home (not at every command) that a local folder stands in for Drive."""
    global _said_local
    if _said_local or not _notice:
        return
    _said_local = True
    marker = home_dir() / ".said-local-drive"
    if marker.exists():
        return
    logger.warning("colabsession: not in Colab; the local folder %s stands in for Drive", root)
    with contextlib.suppress(OSError):  # if it cannot be recorded, it is said again: harmless
        marker.touch()


def healthy(path: str | os.PathLike[str] | None = None, timeout: Duration = "5s") -> bool:
    """Whether Drive (or *path* on it) answers: False for a dropped mount ("Transport endpoint is
    not connected"), an I/O error, a missing mount, or a stat that hangs past *timeout*. Never
    blocks the caller longer than *timeout*."""
    return _problem(path, parse_duration(timeout, name="timeout")) is None


def _problem(path: str | os.PathLike[str] | None, timeout: float) -> str | None:
    """Why *path* (default: the Drive root) cannot be used, or None if it can."""
    if path is None:
        kind = detect_kind()
        if kind == "colab" and not fuse_drive_mounted(COLAB_MOUNTPOINT):
            return f"Drive is not mounted at {COLAB_MOUNTPOINT}"
        path = COLAB_MOUNTPOINT / MY_DRIVE if kind == "colab" else default_drive_root(kind)
    try:
        call_with_timeout(lambda: _stat(path), timeout, what=f"stat {path}")
    except TimeoutError:
        return f"{path} did not answer within {format_duration(timeout)}"
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return f"the Drive mount dropped ({exc.strerror})"
        return f"{path}: {exc.strerror or exc}"
    return None


def ensure(
    mountpoint: str | os.PathLike[str] = COLAB_MOUNTPOINT,
    *,
    timeout: Duration = "120s",
    check_timeout: Duration = "5s",
) -> Path:
    """Return My Drive's path, remounting a dropped or missing Colab mount first.

    Call it before a long write to Drive; elsewhere it returns the local stand-in folder.
    """
    if detect_kind() != "colab":
        return mount(mountpoint)
    point = Path(mountpoint)
    root = point / MY_DRIVE
    limit = parse_duration(check_timeout, name="check_timeout")
    mounted = fuse_drive_mounted(point)
    problem = _problem(root, limit) if mounted else "Drive is not mounted"
    if problem is None:
        return root
    if mounted:
        logger.warning("colabsession: %s; remounting Drive at %s", problem, point)
    mount(point, force=mounted, timeout=timeout)
    problem = _problem(root, limit)
    if problem is not None:
        raise MountError(
            f"Drive was remounted but still does not answer ({problem}). Choose Runtime > "
            "Restart session and mount again; files written to Drive in the last minutes may "
            "not have been uploaded"
        )
    return root


def flush_and_unmount(timeout: Duration = "24h") -> None:
    """Push pending writes up to Drive and unmount (Colab's ``drive.flush_and_unmount``).

    Writes to the mount land on the VM's disk first and are uploaded later; this is the only way
    to be sure they reached Drive before the runtime goes away. Outside Colab there is nothing to
    flush, and it says so.
    """
    if detect_kind() != "colab":
        logger.warning(
            "colabsession: nothing to flush: outside Colab the local folder %s stands in for "
            "Drive and is written directly",
            default_drive_root(),
        )
        return
    from google.colab import drive as colab_drive

    colab_drive.flush_and_unmount(timeout_ms=int(parse_duration(timeout, name="timeout") * 1000))


# Locations ------------------------------------------------------------------------------------


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
    return Location(LocalFileSystem(), path, path)


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
        _say_local(root)
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
