"""One sandbox for every test and every doctest: a 'local' runtime whatever machine runs them,
colabsession's home in a fresh temporary folder, no mount, no Drive API connection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

RUNTIME_VARS = (
    "COLAB_RELEASE_TAG",
    "COLAB_GPU",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_URL_BASE",
    "KAGGLE_DATA_PROXY_URL",
    "KAGGLE_USER_SECRETS_TOKEN",
)


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make this process look like a fresh local machine; returns colabsession's home."""
    from colabsession._drive import api as _gdrive
    from colabsession._drive import mount as _mount
    from colabsession._runtime import runtime as _runtime

    for name in list(os.environ):
        if name.startswith("COLABSESSION_") or name in RUNTIME_VARS:
            monkeypatch.delenv(name)
    home = tmp_path / "cs-home"
    monkeypatch.setenv("COLABSESSION_HOME", str(home))
    monkeypatch.setattr(_runtime, "COLAB_HOSTNAME_FILE", tmp_path / "no-colab-hostname")
    monkeypatch.setattr(_runtime, "MOUNT_TABLE", str(tmp_path / "mounts"))
    monkeypatch.setattr(_runtime, "KAGGLE_WORKING", tmp_path / "kaggle-working")
    (tmp_path / "mounts").write_text("proc /proc proc rw 0 0\n")
    monkeypatch.setattr(_gdrive, "current", None)
    monkeypatch.setattr(_mount, "_said_local", False)
    monkeypatch.setattr(_mount, "_notice", True)
    return home
