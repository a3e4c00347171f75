"""Where are we running: hosted Colab, a Kaggle kernel, or anywhere else ("local")."""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

RuntimeKind = Literal["colab", "kaggle", "local"]

COLAB_HOSTNAME_FILE = Path("/var/colab/hostname")
COLAB_MOUNTPOINT = Path("/content/drive")
COLAB_HOME = Path("/content/.colabsession")
MY_DRIVE = "MyDrive"
MOUNT_TABLE = "/proc/self/mounts"

# Kaggle keeps this folder, and only this one: as the notebook's output when a version is saved
# (up to 20 GB), and across sessions of the interactive editor with Persistence set to "Files"
# (or "Variables and Files"). Everything else on the VM is gone with the session.
KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_VARS = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_DATA_PROXY_URL")

ENV_HOME = "COLABSESSION_HOME"
ENV_DRIVE = "COLABSESSION_DRIVE"


@dataclass(frozen=True)
class Runtime:
    """A snapshot of the facts about this runtime that colabsession acts on.

    Attributes:
        kind: ``"colab"`` on hosted Colab, ``"kaggle"`` in a Kaggle kernel, else ``"local"``.
        release_tag: Colab's image build (``COLAB_RELEASE_TAG``), or None.
        python: the interpreter's version, e.g. ``"3.12.11"``.
        platform: ``sys.platform`` plus the machine, e.g. ``"linux-x86_64"``.
        home: where colabsession keeps local state and scratch files.
        drive_root: the folder that stands for "My Drive": the mounted Drive on Colab (None
            until it is mounted), the embedded default Drive folder elsewhere.
        drive_mounted: whether a live Google Drive FUSE mount backs ``drive_root``.
        in_notebook: whether an IPython kernel runs this code.
    """

    kind: RuntimeKind
    release_tag: str | None
    python: str
    platform: str
    home: Path
    drive_root: Path | None
    drive_mounted: bool
    in_notebook: bool

    @property
    def is_colab(self) -> bool:
        return self.kind == "colab"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def detect_kind() -> RuntimeKind:
    """``"colab"``, ``"kaggle"`` or ``"local"``. Colab is what colabtools itself checks for before
    it mounts Drive: ``/var/colab/hostname``. ``COLAB_RELEASE_TAG`` alone (a copied environment,
    a container built from Colab's image) is not Colab: Drive cannot be mounted there, so it
    falls back like any other runtime; ``COLAB_GPU`` is unreliable and ignored."""
    if COLAB_HOSTNAME_FILE.exists():
        return "colab"
    if any(os.environ.get(name) for name in KAGGLE_VARS):  # set in every Kaggle kernel
        return "kaggle"
    return "local"


def home_dir(kind: RuntimeKind | None = None) -> Path:
    """colabsession's folder for local state: ``$COLABSESSION_HOME``, else
    ``/content/.colabsession`` on Colab, else the platform's user data folder."""
    if env := os.environ.get(ENV_HOME):
        return Path(env).expanduser().absolute()
    if (kind or detect_kind()) == "colab":
        return COLAB_HOME
    import platformdirs  # only needed off Colab; keeps `import colabsession` light

    return Path(platformdirs.user_data_dir("colabsession", appauthor=False))


def default_drive_root(kind: RuntimeKind | None = None) -> Path:
    """The local folder that stands in for Drive: ``$COLABSESSION_DRIVE``, else in a Kaggle
    kernel ``/kaggle/working`` (the one folder Kaggle keeps), else ``<home>/drive``."""
    if env := os.environ.get(ENV_DRIVE):
        return Path(env).expanduser().absolute()
    if (kind or detect_kind()) == "kaggle":
        return KAGGLE_WORKING
    return home_dir(kind) / "drive"


def fuse_drive_mounted(mountpoint: str | os.PathLike[str] = COLAB_MOUNTPOINT) -> bool:
    """Whether the mount table lists a Drive FUSE file system (``fuse.drive``) at *mountpoint*.

    Reads the table only: a dropped mount still shows here (see ``colabsession.drive.healthy``).
    """
    target = os.path.abspath(mountpoint)
    return any(point == target and kind == "fuse.drive" for point, kind in _mounts())


def mount_type(path: str | os.PathLike[str]) -> str | None:
    """The file-system type of the mount that holds *path* (``"fuse.drive"``, ``"ext4"``, ...),
    or None when the mount table cannot be read."""
    target = os.path.abspath(path)
    best, best_kind = "", None
    for point, kind in _mounts():
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_kind = point, kind
    return best_kind


def _mounts() -> list[tuple[str, str]]:
    try:
        with open(MOUNT_TABLE, encoding="utf-8", errors="replace") as table:
            lines = table.readlines()
    except OSError:  # not Linux, or /proc is hidden
        return []
    # The table escapes spaces and other odd characters in paths as octal (\040).
    return [
        (_unescape_mount_path(fields[1]), fields[2])
        for fields in map(str.split, lines)
        if len(fields) >= 3
    ]


def _unescape_mount_path(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def run_again() -> str:
    """How to continue, in the words of where this runs: a notebook cell or a shell command."""
    if "ipykernel" in sys.modules:
        return "run this cell again"
    return "run the same command again"


def runtime() -> Runtime:
    """Detect the runtime now.

    >>> import colabsession as cs
    >>> cs.runtime().kind
    'local'
    """
    kind = detect_kind()
    if kind == "colab":
        mounted = fuse_drive_mounted(COLAB_MOUNTPOINT)
        drive_root: Path | None = COLAB_MOUNTPOINT / MY_DRIVE if mounted else None
    else:
        mounted, drive_root = False, default_drive_root(kind)
    return Runtime(
        kind=kind,
        release_tag=os.environ.get("COLAB_RELEASE_TAG") or None,
        python=platform.python_version(),
        platform=f"{sys.platform}-{platform.machine()}",
        home=home_dir(kind),
        drive_root=drive_root,
        drive_mounted=mounted,
        in_notebook="ipykernel" in sys.modules,
    )
