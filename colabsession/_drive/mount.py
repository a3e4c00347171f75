"""The code behind :mod:`colabsession.drive` (its public names are listed there)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from colabsession._core.errors import ConfigError, MountError, MountTimeoutError
from colabsession._core.say import say
from colabsession._core.timeout import Backoff, call_with_timeout
from colabsession._core.units import Duration, format_duration, parse_duration
from colabsession._runtime.runtime import (
    COLAB_MOUNTPOINT,
    ENV_DRIVE,
    MY_DRIVE,
    default_drive_root,
    detect_kind,
    fuse_drive_mounted,
    home_dir,
)

if TYPE_CHECKING:
    pass


logger = logging.getLogger("colabsession.drive")
_said_local = False
_notice = True
_sleep = time.sleep  # tests replace these
_monotonic = time.monotonic
_stat = os.stat


def mount(
    mountpoint: str | os.PathLike[str] = COLAB_MOUNTPOINT,
    *,
    force: bool = False,
    timeout: Duration = "120s",
    readonly: bool = False,
    retries: int = 2,
    max_wait: Duration = "5min",
) -> Path:
    """Mount Google Drive and return the path of "My Drive".

    In Colab, a live Drive mount at *mountpoint* is reused at once (unless *force*; a mount
    that dropped is mounted again); otherwise ``google.colab.drive.mount`` is called, a
    timed-out mount is retried *retries* times with growing pauses, all within *max_wait*
    (each try waits at most *timeout*), and each failure becomes a :class:`MountError` that
    says what to do. Elsewhere the local folder that stands in for Drive is returned (created
    if needed).
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
        say_local_folder(root)
        return root
    point = Path(mountpoint)
    if not force and fuse_drive_mounted(point):
        problem = _problem(point / MY_DRIVE, 5.0)
        if problem is None:
            return point / MY_DRIVE
        # Listed in the mount table but not answering ("Transport endpoint is not
        # connected"): reusing it would fail at the first file; colabtools' own remount
        # unmounts it first.
        logger.warning("colabsession: %s; remounting Drive at %s", problem, point)
        force = True
    seconds = parse_duration(timeout, name="timeout")
    budget = parse_duration(max_wait, name="max_wait")
    try:
        from google.colab import drive as colab_drive
    except ImportError:
        raise MountError(
            "this looks like Colab, but google.colab cannot be imported: restart the runtime "
            "(Runtime > Restart session) and run the cell again",
            path=str(point),
        ) from None
    backoff = Backoff(initial=5.0, maximum=3600.0, factor=3.0)
    started = _monotonic()
    say(
        f"mounting Google Drive at {point} (allow access if Colab asks; this waits at most "
        f"{format_duration(budget)})"
    )
    for attempt in range(retries + 1):
        left = budget - (_monotonic() - started)
        wait = seconds if left >= seconds - 1.0 else max(1.0, left)  # a second is noise
        try:
            colab_drive.mount(
                str(point),
                force_remount=force or attempt > 0,
                timeout_ms=int(wait * 1000),
                readonly=readonly,
            )
            return point / MY_DRIVE
        except Exception as exc:
            error = _mount_error(exc, point, wait)
            if not isinstance(error, MountTimeoutError) or attempt == retries:
                raise error from exc
            pause = backoff.failed()
            if _monotonic() - started + pause + 1.0 > budget:
                raise MountTimeoutError(
                    f"{error} (gave up after {format_duration(_monotonic() - started)}, the "
                    f"max_wait of {format_duration(budget)})",
                    path=str(point),
                    timeout=budget,
                ) from exc
            logger.warning(
                "colabsession: Drive did not answer while mounting (attempt %d of %d); trying "
                "again in %.0f s",
                attempt + 1,
                retries + 1,
                pause,
            )
            _sleep(pause)
    raise AssertionError("unreachable")


def _mount_error(exc: Exception, point: Path, seconds: float) -> MountError:
    """colabtools' own failures (google/colab/drive.py), each with what to do."""
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    if "unsupported in this environment" in lowered or "colab enterprise" in lowered:
        return MountError(
            f"this runtime cannot mount Drive ({message}). Reach Drive through its API "
            "instead: cs.drive.connect(service_account='key.json', folder='FOLDER_ID'), see "
            "docs/drive.md",
            path=str(point),
        )
    if "must not contain a space" in lowered:
        return MountError(
            f"cannot mount Drive at {str(point)!r}: Colab refuses a mountpoint with a space. "
            "Use cs.mount('/content/drive')",
            path=str(point),
        )
    if "credential propagation" in lowered:
        return MountError(
            f"Colab could not get permission to your Google Drive ({message}): the permission "
            "window was closed or denied, or your Workspace administrator does not allow it. "
            "Run the cell again and allow access (with several Google accounts, choose the one "
            "whose Drive you want)",
            path=str(point),
        )
    if "domain policy has disabled drive file stream" in lowered:
        return MountError(
            f"your Google Workspace administrator has turned off Drive for desktop, which the "
            f"Colab mount uses ({message}). Ask them to allow it, use a personal Google "
            "account, or reach Drive through its API: cs.drive.connect(...)",
            path=str(point),
        )
    if "must be in a directory that exists" in lowered:
        return MountError(
            f"cannot mount Drive at {point}: its folder {point.parent} does not exist. Create "
            f"it (`!mkdir -p {point.parent}`) or mount at /content/drive",
            path=str(point),
        )
    if "must either be a directory or not exist" in lowered:
        return MountError(
            f"cannot mount Drive at {point}: it is a file. Move it away (`!mv {point} "
            f"{point}-old`) or mount elsewhere: cs.mount('/content/gdrive')",
            path=str(point),
        )
    if type(exc).__name__ == "TIMEOUT":  # pexpect's, when the Drive process never answers
        message = f"the Drive process did not answer ({message.splitlines()[0][:200]})"
        lowered = "timeout"
    if "must not already contain files" in lowered:
        return MountError(
            f"cannot mount Drive at {point}: the folder already holds files ({message}). Move "
            f"them away (`!mv {point} {point}-old`), or mount elsewhere: "
            "cs.mount('/content/gdrive')",
            path=str(point),
        )
    if "must not be a symlink" in lowered:
        return MountError(
            f"cannot mount Drive at {point}: it is a symbolic link ({message}). Remove the link "
            f"(`!rm {point}`) or mount elsewhere: cs.mount('/content/gdrive')",
            path=str(point),
        )
    if "timeout" in lowered or "timed out" in lowered:
        return MountTimeoutError(
            f"Drive did not answer within {format_duration(seconds)} while mounting ({message}). "
            "Drive may be slow right now, or My Drive's top folder holds very many files: try "
            "again with a longer timeout, cs.mount(timeout='300s'), or move files into subfolders",
            path=str(point),
            timeout=seconds,
        )
    if "mount failed" in lowered:
        return MountError(
            f"mounting Drive failed ({message}). Run the cell again; if it keeps failing, choose "
            "Runtime > Disconnect and delete runtime and mount again, and make sure you allowed "
            "this notebook to access your Google Drive",
            path=str(point),
        )
    return MountError(f"mounting Drive failed: {message}", path=str(point))


def local_notice(enabled: bool) -> None:
    """Whether to say (once per home) that a local folder stands in for Drive outside Colab;
    the command line turns it off, as its commands name the folders they use."""
    global _notice
    _notice = enabled


def say_local_folder(root: Path) -> None:
    """Say once per home (not at every command) that a local folder stands in for Drive."""
    global _said_local
    if _said_local or not _notice:
        return
    _said_local = True
    marker = home_dir() / ".said-local-drive"
    if marker.exists():
        return
    if detect_kind() == "kaggle" and not os.environ.get(ENV_DRIVE):  # root is /kaggle/working
        logger.warning(
            "colabsession: in Kaggle, %s stands in for Drive. Kaggle keeps it as the notebook's "
            "output when you save a version (up to 20 GB), and across sessions only with "
            "Persistence set to Files (or Variables and Files) in the notebook's settings; "
            "everything else goes with the session",
            root,
        )
    else:
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
    readonly: bool = False,
) -> Path:
    """Return My Drive's path, remounting a dropped or missing Colab mount first (read-only
    again with *readonly*, as it was mounted).

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
    mount(point, force=mounted, timeout=timeout, readonly=readonly)
    problem = _problem(root, limit)
    if problem is not None:
        raise MountError(
            f"Drive was remounted but still does not answer ({problem}). Choose Runtime > "
            "Restart session and mount again; files written to Drive in the last minutes may "
            "not have been uploaded",
            path=str(point),
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

    seconds = parse_duration(timeout, name="timeout")
    try:
        colab_drive.flush_and_unmount(timeout_ms=int(seconds * 1000))
    except NotImplementedError as exc:
        raise MountError(
            f"this Colab runtime cannot flush and unmount Drive ({exc}): files written to "
            "Drive are uploaded in the background; wait a few minutes before you end the "
            "session, and check them on drive.google.com",
            path=str(COLAB_MOUNTPOINT),
        ) from None
    except Exception as exc:  # colabtools raises a bare ValueError('flush_and_unmount failed')
        raise MountError(
            f"pushing pending writes to Drive failed or did not finish within "
            f"{format_duration(seconds)} ({exc or type(exc).__name__}): files written to "
            "Drive in the last minutes may not be uploaded yet. Keep this runtime, check them "
            "on drive.google.com, and call cs.drive.flush_and_unmount() again (remount with "
            "cs.drive.ensure() to keep working)",
            path=str(COLAB_MOUNTPOINT),
        ) from None
