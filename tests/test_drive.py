from __future__ import annotations

import errno
import logging
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

import colabsession as cs
from colabsession._drive import mount as drive_mount

COLAB_ROOT = Path("/content/drive/MyDrive")


@pytest.fixture
def no_sleep(mocker: MockerFixture) -> Any:
    return mocker.patch.object(drive_mount, "_sleep")


def _mounted(mount_table: Path, mountpoint: str = "/content/drive") -> None:
    with mount_table.open("a") as table:
        table.write(f"drive {mountpoint} fuse.drive rw,nosuid,nodev,relatime 0 0\n")


# Mounting in Colab -------------------------------------------------------------------------


def test_already_mounted_returns_at_once(
    fake_colab: types.SimpleNamespace, mount_table: Path, mocker: MockerFixture
) -> None:
    _mounted(mount_table)
    mocker.patch.object(drive_mount, "_stat")  # My Drive answers
    assert cs.mount() == COLAB_ROOT
    fake_colab.drive.mount.assert_not_called()


def test_a_dropped_mount_is_never_reused(
    fake_colab: types.SimpleNamespace, mount_table: Path, mocker: MockerFixture, caplog: Any
) -> None:
    """Listed in the mount table but answering "Transport endpoint is not connected": the
    first file read would fail, so it is mounted again, forced."""
    _mounted(mount_table)
    mocker.patch.object(drive_mount, "_stat", side_effect=OSError(errno.ENOTCONN, "not connected"))
    assert cs.mount() == COLAB_ROOT
    assert fake_colab.drive.mount.call_args.kwargs["force_remount"] is True
    assert "dropped" in caplog.text


def test_mounting_is_bounded_in_all_and_says_so(
    fake_colab: types.SimpleNamespace, mocker: MockerFixture, capsys: Any
) -> None:
    """Each try waits at most what is left of max_wait, and no pause outlasts it."""
    clock = [0.0]
    mocker.patch.object(drive_mount, "_monotonic", side_effect=lambda: clock[0])

    def slow_timeout(*args: Any, **kwargs: Any) -> None:
        clock[0] += kwargs["timeout_ms"] / 1000
        raise ValueError("mount failed: timeout during initial read of root folder")

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    fake_colab.drive.mount.side_effect = slow_timeout
    mocker.patch.object(drive_mount, "_sleep", side_effect=sleep)
    with pytest.raises(cs.MountTimeoutError, match="gave up after 5m, the max_wait of 5m"):
        cs.mount(timeout="120s", retries=5, max_wait="5min")
    waits = [c.kwargs["timeout_ms"] for c in fake_colab.drive.mount.call_args_list]
    assert waits == [120_000, 120_000, 40_000]  # 120 + 5 + 120 + 15 + 40 = 300 s
    assert "waits at most 5m" in capsys.readouterr().out


def test_folder_named_drive_is_not_a_mount(
    fake_colab: types.SimpleNamespace, mount_table: Path
) -> None:
    with mount_table.open("a") as table:
        table.write("/dev/vda /content/drive ext4 rw 0 0\n")
    cs.mount()
    fake_colab.drive.mount.assert_called_once()


def test_fresh_mount(fake_colab: types.SimpleNamespace) -> None:
    assert cs.mount() == COLAB_ROOT
    fake_colab.drive.mount.assert_called_once_with(
        "/content/drive", force_remount=False, timeout_ms=120_000, readonly=False
    )


def test_force_and_options(fake_colab: types.SimpleNamespace, mount_table: Path) -> None:
    _mounted(mount_table)
    assert cs.mount("/content/gdrive", force=True, timeout="5min", readonly=True) == Path(
        "/content/gdrive/MyDrive"
    )
    fake_colab.drive.mount.assert_called_once_with(
        "/content/gdrive", force_remount=True, timeout_ms=300_000, readonly=True
    )


@pytest.mark.parametrize(
    ("message", "advice"),
    [
        ("Mountpoint must not already contain files", "Move them away"),
        ("Mountpoint must not be a symlink", "Remove the link"),
        ("mount failed", "Disconnect and delete runtime"),
        ("Error: credential propagation was unsuccessful", "allow access"),
        # The rest of colabtools' own failures (google/colab/drive.py), word for word.
        (
            "Mounting drive is unsupported in this environment. Use PyDrive2 instead.",
            r"cs.drive.connect\(service_account=",
        ),
        ("google.colab.drive.mount is not supported in Colab Enterprise.", "Drive through its API"),
        ("Mountpoint must not contain a space.", "cs.mount\\('/content/drive'\\)"),
        ("Mountpoint must be in a directory that exists", "mkdir -p"),
        ("Mountpoint must either be a directory or not exist", "it is a file"),
        (
            "The domain policy has disabled Drive File Stream: "
            "https://support.google.com/a/answer/7496409",
            "Workspace administrator",
        ),
    ],
)
def test_documented_failures_say_what_to_do(
    fake_colab: types.SimpleNamespace, message: str, advice: str, no_sleep: Any
) -> None:
    fake_colab.drive.mount.side_effect = ValueError(message)
    with pytest.raises(cs.MountError, match=advice) as info:
        cs.mount()
    assert not isinstance(info.value, cs.MountTimeoutError)
    assert isinstance(info.value, cs.DriveError)
    assert fake_colab.drive.mount.call_count == 1  # not retried
    no_sleep.assert_not_called()


def test_timeout_is_retried_with_backoff(fake_colab: types.SimpleNamespace, no_sleep: Any) -> None:
    timeout = ValueError("mount failed: timeout during initial read of root folder")
    fake_colab.drive.mount.side_effect = [timeout, timeout, None]
    assert cs.mount() == COLAB_ROOT
    assert fake_colab.drive.mount.call_count == 3
    assert [c.args[0] for c in no_sleep.call_args_list] == [5.0, 15.0]
    retried = fake_colab.drive.mount.call_args_list[1]
    assert retried.kwargs["force_remount"] is True  # a half-done mount must be replaced


def test_timeout_gives_up_after_retries(fake_colab: types.SimpleNamespace, no_sleep: Any) -> None:
    fake_colab.drive.mount.side_effect = ValueError("mount failed: timeout during initial read")
    with pytest.raises(cs.MountTimeoutError, match=r"timeout='300s'") as info:
        cs.mount(retries=1)
    assert isinstance(info.value, TimeoutError)
    assert fake_colab.drive.mount.call_count == 2


def test_colab_without_google_colab_module(
    fake_colab: types.SimpleNamespace, mocker: MockerFixture
) -> None:
    mocker.patch.dict(sys.modules, {"google.colab": None})
    with pytest.raises(cs.MountError, match="Restart session"):
        cs.mount()


# Outside Colab -----------------------------------------------------------------------------


def test_local_stand_in(isolated: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "colabsession"):
        root = cs.mount()
        assert cs.mount() == root
    assert root == isolated / "drive"
    assert root.is_dir()
    assert sum("stands in for Drive" in r.message for r in caplog.records) == 1  # said once


def test_local_stand_in_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLABSESSION_DRIVE", str(tmp_path / "elsewhere"))
    assert cs.mount() == tmp_path / "elsewhere"


def test_flush_and_unmount(fake_colab: types.SimpleNamespace) -> None:
    cs.drive.flush_and_unmount()
    fake_colab.drive.flush_and_unmount.assert_called_once()


@pytest.mark.parametrize(
    ("raised", "advice"),
    [
        (ValueError("flush_and_unmount failed"), r"may not be uploaded yet.*drive.google.com"),
        (NotImplementedError("google.colab.drive is unsupported"), "uploaded in the background"),
    ],
)
def test_flush_and_unmount_failures_say_what_to_do(
    fake_colab: types.SimpleNamespace, raised: Exception, advice: str
) -> None:
    fake_colab.drive.flush_and_unmount.side_effect = raised
    with pytest.raises(cs.MountError, match=advice):
        cs.drive.flush_and_unmount(timeout="10min")


def test_a_path_under_the_mountpoint_while_drive_is_not_mounted(
    fake_colab: types.SimpleNamespace, mount_table: Path, mocker: MockerFixture
) -> None:
    """Written there, the data would land on the VM's disk and make the next mount fail."""
    with pytest.raises(cs.MountError, match=r"not mounted there.*cs.mount\(\)"):
        cs.drive.resolve("/content/drive/MyDrive/checkpoints/run-1")
    with pytest.raises(cs.MountError, match="not mounted"):
        cs.Checkpointer("/content/drive/MyDrive/checkpoints/run-1")
    _mounted(mount_table)
    assert cs.drive.resolve("/content/drive/MyDrive/x").path == "/content/drive/MyDrive/x"
    assert cs.drive.resolve("/content/drives-elsewhere").path == "/content/drives-elsewhere"


def test_ensure_mounts_again_read_only(
    fake_colab: types.SimpleNamespace, mount_table: Path, mocker: MockerFixture
) -> None:
    _mounted(mount_table)
    dropped = OSError(errno.ENOTCONN, "Transport endpoint is not connected")
    mocker.patch.object(drive_mount, "_stat", side_effect=[dropped, None])
    cs.drive.ensure(readonly=True)
    assert fake_colab.drive.mount.call_args.kwargs["readonly"] is True


def test_flush_and_unmount_outside_colab(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "colabsession"):
        cs.drive.flush_and_unmount()
    assert "nothing to flush" in caplog.text


# Health -----------------------------------------------------------------------------------


def test_healthy_local(isolated: Path) -> None:
    assert not cs.drive.healthy()  # the stand-in folder does not exist yet
    cs.mount()
    assert cs.drive.healthy()
    assert cs.drive.healthy(isolated)


def test_dropped_mount(mocker: MockerFixture, tmp_path: Path) -> None:
    mocker.patch.object(
        drive_mount,
        "_stat",
        side_effect=OSError(errno.ENOTCONN, "Transport endpoint is not connected"),
    )
    assert not cs.drive.healthy(tmp_path)
    assert "mount dropped" in (drive_mount._problem(tmp_path, 1.0) or "")


def test_io_error(mocker: MockerFixture, tmp_path: Path) -> None:
    mocker.patch.object(drive_mount, "_stat", side_effect=OSError(errno.EIO, "Input/output error"))
    assert not cs.drive.healthy(tmp_path)


def test_hanging_stat_does_not_block(mocker: MockerFixture, tmp_path: Path) -> None:
    mocker.patch.object(drive_mount, "_stat", side_effect=lambda path: time.sleep(3))
    start = time.monotonic()
    assert not cs.drive.healthy(tmp_path, timeout=0.2)
    assert time.monotonic() - start < 1.5


def test_not_mounted_in_colab_is_unhealthy(fake_colab: types.SimpleNamespace) -> None:
    assert not cs.drive.healthy()


# ensure() ---------------------------------------------------------------------------------


@pytest.fixture
def colab_mount(fake_colab: types.SimpleNamespace, tmp_path: Path) -> types.SimpleNamespace:
    """Colab with Drive mounted at a folder of the test's, by the faithful fake."""
    point = tmp_path / "content-drive"
    fake_colab.fake.mount(str(point))
    fake_colab.drive.mount.reset_mock()
    fake_colab.point = point
    return fake_colab


def test_ensure_healthy_mount(colab_mount: types.SimpleNamespace) -> None:
    assert cs.drive.ensure(colab_mount.point) == colab_mount.point / "MyDrive"
    colab_mount.drive.mount.assert_not_called()


def test_ensure_remounts_a_dropped_mount(colab_mount: types.SimpleNamespace) -> None:
    colab_mount.fake.drop(str(colab_mount.point))
    assert cs.drive.ensure(colab_mount.point) == colab_mount.point / "MyDrive"
    colab_mount.drive.mount.assert_called_once()
    assert colab_mount.drive.mount.call_args.kwargs["force_remount"] is True
    assert cs.drive.healthy(colab_mount.point / "MyDrive")


def test_ensure_mounts_when_not_mounted(fake_colab: types.SimpleNamespace, tmp_path: Path) -> None:
    point = tmp_path / "content-drive"
    assert cs.drive.ensure(point) == point / "MyDrive"
    assert fake_colab.drive.mount.call_args.kwargs["force_remount"] is False


def test_ensure_gives_up_clearly(colab_mount: types.SimpleNamespace, mocker: MockerFixture) -> None:
    mocker.patch.object(drive_mount, "_stat", side_effect=OSError(errno.ENOTCONN, "not connected"))
    with pytest.raises(cs.MountError, match="still does not answer"):
        cs.drive.ensure(colab_mount.point)


# The faithful fake's behaviours, each met by colabsession -----------------------------------


@pytest.mark.parametrize(
    ("switch", "value", "error", "advice"),
    [
        ("auth", "deny", cs.MountError, "allow access"),
        ("auth", "no_browser", cs.MountError, "allowed this notebook to access"),
        ("outcome", "fail", cs.MountError, "Disconnect and delete runtime"),
        ("outcome", "domain_policy", cs.MountError, "Workspace administrator"),
        ("outcome", "root_timeout", cs.MountTimeoutError, "top folder holds very many files"),
        ("outcome", "hang", cs.MountTimeoutError, "the Drive process did not answer"),
    ],
)
def test_every_way_colab_fails_to_mount_says_what_to_do(
    fake_colab: types.SimpleNamespace,
    no_sleep: Any,
    switch: str,
    value: str,
    error: type[Exception],
    advice: str,
) -> None:
    setattr(fake_colab.fake, switch, value)
    with pytest.raises(error, match=advice):
        cs.mount()
    retried = 3 if error is cs.MountTimeoutError else 1
    assert fake_colab.drive.mount.call_count == retried


def test_the_mountpoint_checks(fake_colab: types.SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "leftover.txt").write_text("x")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "full")
    for point, advice in (
        (tmp_path / "full", "already holds files"),
        (tmp_path / "a-file", "it is a file"),
        (tmp_path / "link", "symbolic link"),
        (tmp_path / "no" / "parent", "does not exist"),
        (tmp_path / "with space", "space"),
    ):
        with pytest.raises(cs.MountError, match=advice):
            cs.mount(point)


def test_outside_a_colab_vm_the_real_mount_refuses(fake_colab: types.SimpleNamespace) -> None:
    """google.colab importable but no /var/colab/hostname is not Colab: colabsession falls back
    to the local folder and never calls a mount that would refuse ("Use PyDrive2 instead")."""
    fake_colab.hostname.unlink()
    assert cs.runtime().kind == "local"
    cs.mount()
    fake_colab.drive.mount.assert_not_called()
    with pytest.raises(NotImplementedError, match="Use PyDrive2"):
        fake_colab.fake.mount("/content/drive")


def test_writing_under_the_mountpoint_before_mounting_would_break_the_mount(
    fake_colab: types.SimpleNamespace,
) -> None:
    """What the guard prevents: a file written to /content/drive/MyDrive while unmounted lands
    on the VM's disk, and Colab's next mount refuses the folder."""
    with pytest.raises(cs.MountError, match="not mounted"):
        cs.drive.resolve("/content/drive/MyDrive/run")
    stray = fake_colab.fake.local("/content/drive/MyDrive")
    stray.mkdir(parents=True)
    (stray / "weights.h5").write_text("x")
    with pytest.raises(cs.MountError, match="already holds files"):
        cs.mount()


def test_force_remount_replaces_the_table_entry(
    fake_colab: types.SimpleNamespace, mount_table: Path
) -> None:
    cs.mount()
    cs.mount(force=True)
    lines = [line for line in mount_table.read_text().splitlines() if "fuse.drive" in line]
    assert len(lines) == 1
    assert fake_colab.fake.popups == 2  # Colab asks for authorisation before everything else


def test_flush_and_unmount_through_the_fake(
    fake_colab: types.SimpleNamespace, mount_table: Path
) -> None:
    cs.mount()
    cs.drive.flush_and_unmount()
    assert "fuse.drive" not in mount_table.read_text()
    fake_colab.fake.flush = "fail"
    cs.mount()
    with pytest.raises(cs.MountError, match="may not be uploaded yet"):
        cs.drive.flush_and_unmount()


# Locations --------------------------------------------------------------------------------


def test_resolve_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loc = cs.drive.resolve(tmp_path / "runs")
    assert loc.path == str(tmp_path / "runs")
    assert loc.is_local
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cs.drive.resolve("~/x").path == str(tmp_path / "x")
    assert cs.drive.resolve("/content/drive/MyDrive/ckpt").path == "/content/drive/MyDrive/ckpt"
    assert cs.drive.resolve(loc) is loc
    assert loc.join("a", "b.txt").path == str(tmp_path / "runs" / "a" / "b.txt")


def test_resolve_drive_locally(isolated: Path) -> None:
    loc = cs.drive.resolve("drive:checkpoints/run-1")
    assert loc.path == str(isolated / "drive" / "checkpoints" / "run-1")
    assert loc.is_local
    assert str(loc) == "drive:checkpoints/run-1"
    assert cs.drive.resolve("drive:").path == str(isolated / "drive")


@pytest.mark.parametrize("bad", ["drive:/etc", "drive:../outside", "drive:a/../../b"])
def test_resolve_drive_refuses_escapes(bad: str) -> None:
    with pytest.raises(cs.ConfigError, match="inside My Drive"):
        cs.drive.resolve(bad)


def test_resolve_drive_in_colab(
    fake_colab: types.SimpleNamespace, mount_table: Path, mocker: MockerFixture
) -> None:
    _mounted(mount_table)
    mocker.patch.object(drive_mount, "_stat")
    loc = cs.drive.resolve("drive:checkpoints/run-1")
    assert loc.path == "/content/drive/MyDrive/checkpoints/run-1"
    fake_colab.drive.mount.assert_not_called()


def test_resolve_fsspec_urls() -> None:
    loc = cs.drive.resolve("memory://bucket/run")
    assert not loc.is_local
    loc.fs.pipe_file(loc.path + "/x", b"1")
    assert loc.fs.cat_file(loc.path + "/x") == b"1"
    with pytest.raises(cs.ConfigError, match="nosuchproto"):
        cs.drive.resolve("nosuchproto://x")


def test_drive_module_imports_no_api_client() -> None:
    code = (
        "import sys, colabsession as cs; cs.drive.resolve('drive:x'); cs.drive.healthy(); "
        "print([m for m in ('pydrive2', 'googleapiclient', 'google.auth') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
