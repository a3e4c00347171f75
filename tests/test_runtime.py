from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import colabsession as cs
from colabsession._runtime import runtime as _runtime


def test_local_by_default(isolated: Path) -> None:
    rt = cs.runtime()
    assert rt.kind == "local"
    assert not rt.is_colab
    assert rt.release_tag is None
    assert rt.home == isolated
    assert rt.drive_root == isolated / "drive"
    assert rt.drive_mounted is False
    assert rt.python == ".".join(map(str, sys.version_info[:3]))


def test_colab_gpu_alone_is_not_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLAB_GPU", "1")
    assert cs.runtime().kind == "local"


def test_release_tag_alone_is_not_colab(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    """colabtools mounts Drive only where /var/colab/hostname exists; a container built from
    Colab's image carries the tag without it, and falls back like any runtime."""
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101-060000_RC00")
    rt = cs.runtime()
    assert rt.kind == "local"
    assert rt.release_tag == "release-colab_20261101-060000_RC00"
    assert cs.mount() == isolated / "drive"


def test_colab_from_hostname_file_and_release_tag(fake_colab: types.SimpleNamespace) -> None:
    rt = cs.runtime()
    assert rt.kind == "colab"
    assert rt.release_tag == "release-colab_20261101-060000_RC00"


def test_colab_from_hostname_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostname = tmp_path / "hostname"
    hostname.write_text("x")
    monkeypatch.setattr(_runtime, "COLAB_HOSTNAME_FILE", hostname)
    monkeypatch.delenv("COLABSESSION_HOME")
    rt = cs.runtime()
    assert rt.kind == "colab"
    assert rt.home == Path("/content/.colabsession")
    assert rt.drive_root is None  # not mounted yet
    assert rt.drive_mounted is False


def test_colab_with_live_mount(fake_colab: types.SimpleNamespace, mount_table: Path) -> None:
    with mount_table.open("a") as table:
        table.write("drive /content/drive fuse.drive rw,nosuid,nodev 0 0\n")
    rt = cs.runtime()
    assert rt.drive_mounted
    assert rt.drive_root == Path("/content/drive/MyDrive")


def test_kaggle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert cs.runtime().kind == "kaggle"


def test_drive_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLABSESSION_DRIVE", str(tmp_path / "my-drive"))
    assert cs.runtime().drive_root == tmp_path / "my-drive"


def test_home_defaults_to_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("COLABSESSION_HOME")
    assert cs.runtime().home == Path(platformdirs.user_data_dir("colabsession", appauthor=False))


def test_to_dict_is_json(isolated: Path) -> None:
    data = json.loads(json.dumps(cs.runtime().to_dict()))
    assert data["kind"] == "local"
    assert data["home"] == str(isolated)


def test_mount_table_parsing(mount_table: Path) -> None:
    mount_table.write_text(
        "drive /content/drive fuse rw 0 0\n"  # plain FUSE: not Google Drive
        "drive /mnt/my\\040drive fuse.drive rw 0 0\n"
        "garbage\n"
    )
    assert not _runtime.fuse_drive_mounted("/content/drive")
    assert _runtime.fuse_drive_mounted("/mnt/my drive")


def test_unreadable_mount_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_runtime, "MOUNT_TABLE", str(tmp_path / "missing"))
    assert not _runtime.fuse_drive_mounted()
