from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from colabsession import _runtime

_RUNTIME_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs as 'local', with colabsession's home in a fresh temporary folder."""
    for name in list(os.environ):
        if name.startswith("COLABSESSION_") or name in _RUNTIME_VARS:
            monkeypatch.delenv(name)
    home = tmp_path / "cs-home"
    monkeypatch.setenv("COLABSESSION_HOME", str(home))
    monkeypatch.setattr(_runtime, "COLAB_HOSTNAME_FILE", tmp_path / "no-colab-hostname")
    monkeypatch.setattr(_runtime, "MOUNT_TABLE", str(tmp_path / "mounts"))
    (tmp_path / "mounts").write_text("proc /proc proc rw 0 0\n")
    return home


@pytest.fixture
def mount_table(tmp_path: Path) -> Path:
    """The mount table colabsession reads; tests append lines to it."""
    return tmp_path / "mounts"


@pytest.fixture
def fake_colab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture
) -> types.SimpleNamespace:
    """Hosted Colab as colabsession sees it, with ``google.colab`` faked in ``sys.modules``."""
    hostname = tmp_path / "colab-hostname"
    hostname.write_text("colab-vm\n")
    monkeypatch.setattr(_runtime, "COLAB_HOSTNAME_FILE", hostname)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101-060000_RC00")
    drive = types.ModuleType("google.colab.drive")
    drive.mount = mocker.Mock(name="drive.mount")  # type: ignore[attr-defined]
    drive.flush_and_unmount = mocker.Mock(name="drive.flush_and_unmount")  # type: ignore[attr-defined]
    auth = types.ModuleType("google.colab.auth")
    auth.authenticate_user = mocker.Mock(name="auth.authenticate_user")  # type: ignore[attr-defined]
    colab = types.ModuleType("google.colab")
    colab.drive = drive  # type: ignore[attr-defined]
    colab.auth = auth  # type: ignore[attr-defined]
    google = sys.modules.get("google") or types.ModuleType("google")
    mocker.patch.dict(
        sys.modules,
        {"google": google, "google.colab": colab, "google.colab.drive": drive,
         "google.colab.auth": auth},
    )  # fmt: skip
    return types.SimpleNamespace(module=colab, drive=drive, auth=auth, hostname=hostname)
