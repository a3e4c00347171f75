"""The Drive API's view of the Colab mount: the same files of My Drive, as Drive itself holds them.

A write that returned on the mount is in the Drive client's local cache; it reaches Google's
servers later, or never when the runtime ends first (colabtools #287, #2607). Only the API says
what Drive holds, so a run replicated through the mount counts as on Drive once the API reports
its files (see :mod:`colabsession._storage.replicate`), and when the mount dies the API takes
over. An :class:`ApiView` maps a path under the mount to the API's path of the same file.

It exists only where the mounted account's credentials can be had without a prompt: a
connection to My Drive made with ``cs.drive.connect()`` in this notebook, or
``google.colab.auth.authenticate_user()`` run earlier in this runtime (it sets
``GOOGLE_APPLICATION_CREDENTIALS``); the account should be the one whose Drive is mounted.
Otherwise :func:`view_for` answers None and everything works through the mount alone. It is
made lazily, in the replicating thread, bounded by a timeout, and a failure is not tried again
for a while: training never waits on it.

>>> view = ApiView(fs=None, mount_root="/content/drive/MyDrive", api_root="root")
>>> view.api_path("/content/drive/MyDrive/checkpoints/run-1")
'root/checkpoints/run-1'
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colabsession._core.files import reason
from colabsession._core.optional import installed
from colabsession._core.timeout import call_with_timeout
from colabsession._drive import api as _api
from colabsession._drive.location import Location
from colabsession._runtime.runtime import COLAB_MOUNTPOINT, MY_DRIVE, detect_kind

logger = logging.getLogger("colabsession.drive")

#: Where My Drive is mounted (tests point it at their fake's folder).
MOUNT_ROOTS: list[Path] = [COLAB_MOUNTPOINT / MY_DRIVE]
CONNECT_TIMEOUT = 30.0  # seconds the API connection may take before the mount goes on alone
RETRY_AFTER = 600.0  # seconds before a failed connection is tried again


class ApiView:
    """My Drive through the API (*fs*, a connected Drive API file system whose paths start
    with *api_root*), seen from the mount at *mount_root*."""

    def __init__(self, fs: Any, mount_root: str | os.PathLike[str], api_root: str) -> None:
        self.fs = fs
        self.mount_root = os.path.abspath(os.fspath(mount_root))
        self.api_root = api_root.rstrip("/")

    def api_path(self, path: str | os.PathLike[str]) -> str | None:
        """The API's path of the file or folder *path* under the mount; None elsewhere."""
        text = os.path.abspath(os.fspath(path))
        if text == self.mount_root:
            return self.api_root
        if not text.startswith(self.mount_root + "/"):
            return None
        return f"{self.api_root}/{text[len(self.mount_root) + 1 :]}"

    def location(self, location: Location) -> Location | None:
        """The same folder as *location* (on the mount), through the API; None if it is not
        under the mount."""
        if not location.is_local:
            return None
        path = self.api_path(location.path)
        if path is None:
            return None
        return Location(self.fs, path, f"{location.description} (Drive API)")

    def files(self, folder: str, timeout: float) -> dict[str, tuple[int | None, str | None]]:
        """The files of the API folder *folder*: name -> (size, md5Checksum), as Drive reports
        them (None where it does not), in one listing; none if the folder does not exist."""

        def listing() -> dict[str, tuple[int | None, str | None]]:
            try:
                found = self.fs.ls(folder, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return {}
            files: dict[str, tuple[int | None, str | None]] = {}
            for info in found:
                name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
                if not name or name in files or info.get("type") == "directory":
                    continue
                size, md5 = info.get("size"), info.get("checksum")
                files[name] = (
                    int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None,
                    md5 if isinstance(md5, str) and len(md5) == 32 else None,
                )
            return files

        return call_with_timeout(listing, timeout, what=f"list {folder} through the Drive API")

    def __repr__(self) -> str:
        return f"ApiView({self.mount_root} -> {self.api_root})"


class _Views:
    """The one API view of this process, made on first need; a failure waits RETRY_AFTER."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.view: ApiView | None = None
        self.failed_at: float | None = None
        self.said = False


_views = _Views()
_monotonic: Callable[[], float] = time.monotonic  # tests replace it


def view_for(location: Location) -> ApiView | None:
    """The API view of the mount that *location* is on, made now if need be (bounded by
    CONNECT_TIMEOUT); None when *location* is not on the Colab mount or no credentials can be
    had without a prompt. Call it from a background thread: a first call may take seconds."""
    root = _mount_root(location)
    if root is None:
        return None
    with _views.lock:
        view = _views.view
        if view is not None and view.mount_root == os.path.abspath(root):
            return view
        if _views.failed_at is not None and _monotonic() - _views.failed_at < RETRY_AFTER:
            return None
        try:
            fs = call_with_timeout(_connect, CONNECT_TIMEOUT, what="connect to the Drive API")
        except Exception as exc:  # any failure: the mount goes on alone, as before
            _views.failed_at = _monotonic()
            if not _views.said:
                _views.said = True
                logger.info(
                    "colabsession: cannot reach the Drive API beside the mount (%s): what is "
                    "written to the mount is not checked with Drive",
                    reason(exc) if isinstance(exc, OSError) else type(exc).__name__,
                )
            return None
        if fs is None:
            _views.failed_at = _monotonic()
            return None
        _views.view = ApiView(fs, root, str(getattr(fs, "root", "root")))
        _views.failed_at = None
        return _views.view


def under_mount(location: Location) -> bool:
    """Whether *location* is on the Colab mount of My Drive (nothing is connected)."""
    return _mount_root(location) is not None


def _mount_root(location: Location) -> Path | None:
    if not location.is_local or detect_kind() != "colab":
        return None
    path = os.path.abspath(location.path)
    for root in MOUNT_ROOTS:
        text = os.path.abspath(root)
        if path == text or path.startswith(text + "/"):
            return root
    return None


def forget() -> None:
    """Drop the view (a new connection is made at the next need)."""
    with _views.lock:
        _views.view, _views.failed_at, _views.said = None, None, False


def _connect() -> Any:
    """A Drive API file system for the user's My Drive, or None when it would need a prompt."""
    if _api.current is not None and getattr(_api.current, "root", None) == "root":
        return _api.current  # cs.drive.connect() to My Drive
    if not installed("pydrive2.fs") or not installed("google.auth"):
        return None
    # Not a service account or a saved sign-in: their My Drive is not the one mounted (a
    # service account's is its own), so what they report would say nothing of the mount.
    if not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return None  # authenticate_user() has not run: it would prompt
    import google.auth

    credentials, _ = google.auth.default(scopes=list(_api.SCOPES))
    return _api.connect(credentials=credentials, use_for_drive=False, folder="root")
