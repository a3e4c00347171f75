"""Drive you can trust (issue #23): a checkpoint written to the Colab mount counts as on Drive
once the Drive API reports it; the API gets it there when the mount's cache does not, and
carries replication while the mount is dead."""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import pytest

import colabsession as cs
from colabsession._drive import api as _gdrive
from colabsession._drive import companion
from colabsession._storage import replicate
from colabsession._storage.layout import file_name
from colabsession.drive import Location

from .fake_drive_api import FakeDrive
from .test_checkpoint import FakeClock, assert_state, ckpt_file, state_at


@pytest.fixture
def linked(
    drive_api: Any,  # first: pydrive2 imports google.* before fake_colab fakes google.colab
    fake_drive: FakeDrive,
    fake_colab: types.SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """Colab with My Drive mounted and the same Drive through the API (the user ran
    authenticate_user); a flush's waits for Drive take no time."""
    fake = fake_colab.fake
    fake.link(fake_drive)
    monkeypatch.setattr(companion, "MOUNT_ROOTS", [fake.drive])
    monkeypatch.setattr(companion, "_views", companion._Views())
    monkeypatch.setattr(_gdrive, "current", drive_api)
    waits: list[float] = []
    monkeypatch.setattr(replicate, "_sleep", waits.append)
    fake.waits = waits
    return fake


def run_on_mount(fake: Any) -> Location:
    return Location(
        fake.filesystem(), str(fake.drive / "checkpoints" / "run"), "drive:checkpoints/run"
    )


def on_drive(fake_drive: FakeDrive, step: int) -> bytes | None:
    """The content of the checkpoint of *step* that Drive holds (outside the trash)."""
    prefix = file_name(step).rsplit(".", 2)[0] + "."
    with fake_drive.state.lock:
        found = [
            f["id"]
            for f in fake_drive.state.files.values()
            if f["title"].startswith(prefix) and not f["labels"]["trashed"]
        ]
    return fake_drive.read(found[0]) if found else None


def test_a_write_drive_received_is_confirmed(
    linked: Any, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    ckpt = cs.Checkpointer(run_on_mount(linked), every=None, local_dir=tmp_path / "vm1")
    ckpt.save(0, state_at(0))
    assert ckpt.sync(30) == []
    assert linked.waits == []  # the mount had uploaded it: no wait
    assert on_drive(fake_drive, 0) == ckpt_file(tmp_path / "vm1", 0).read_bytes()
    ckpt.close()


def test_a_cache_that_never_uploads(
    linked: Any, fake_drive: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    linked.uploads = "held"  # written on the mount, never reaching Drive (colabtools #287)
    location = run_on_mount(linked)
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", clock=FakeClock(30))
    fake_drive.fail(
        100, 400, "badRequest", match="/upload/"
    )  # the API cannot send it either, for now
    with caplog.at_level(logging.WARNING), ckpt:
        assert ckpt.maybe_save(0, state_at(0))  # the deadline is near: save and stop
        assert ckpt.should_stop
    assert "written to the Drive mount but NOT on Drive" in caplog.text
    assert "[0]" in caplog.text
    assert linked.waits  # it waited for Drive, bounded
    assert on_drive(fake_drive, 0) is None
    # The API answers again: the next sync gets it there.
    fake_drive.state.failures.clear()
    again = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")
    again.restore()
    again.save(1, state_at(1))
    assert again.sync(30) == []
    assert on_drive(fake_drive, 1) == ckpt_file(tmp_path / "vm1", 1).read_bytes()
    again.close()
    linked.disconnect()  # the runtime ends: the cache never uploaded
    linked.reset_vm()
    linked.mount("/content/drive")
    restored = cs.Checkpointer(location, local_dir=tmp_path / "vm2").restore()
    assert restored is not None
    assert restored.step == 1
    assert_state(restored.state, 1)


def test_a_mount_that_dies_mid_run(
    linked: Any, fake_drive: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    location = run_on_mount(linked)
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=2)
    ckpt.save(0, state_at(0))
    assert ckpt.sync(30) == []
    linked.drop()  # "Transport endpoint is not connected"
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            ckpt.save(step, state_at(step))
            assert ckpt.sync(30) == []  # on Drive, through the API
    assert "cs.drive.ensure()" in caplog.text
    for step in (2, 3):
        assert on_drive(fake_drive, step) == ckpt_file(tmp_path / "vm1", step).read_bytes()
    assert on_drive(fake_drive, 1) is None  # rotated away: only what this run sent
    ckpt.close()
    # A new VM: a fresh disk, a fresh mount, the newest checkpoint.
    linked.reset_vm()
    linked.mount("/content/drive")
    restored = cs.Checkpointer(location, local_dir=tmp_path / "vm2").restore()
    assert restored is not None
    assert restored.step == 3
    assert_state(restored.state, 3)


def test_without_an_api_view_nothing_claims_drive(
    fake_colab: types.SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_colab.fake
    monkeypatch.setattr(companion, "MOUNT_ROOTS", [fake.drive])
    monkeypatch.setattr(companion, "_views", companion._Views())
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    ckpt = cs.Checkpointer(run_on_mount(fake), every=None, local_dir=tmp_path / "vm1")
    fake.drop()
    ckpt.save(0, state_at(0))
    assert ckpt.sync(30) == [0]
    assert ckpt.drive_states() == {0: "saved locally only, not yet on Drive"}
    fake.dropped.clear()
    assert ckpt.sync(30) == []
    assert ckpt.drive_states() == {0: "written to the mount (Drive not checked)"}
    with caplog.at_level(logging.INFO):
        ckpt.close()
    assert "written to the mount (Drive not checked" in caplog.text


def test_the_view_maps_mount_paths_only() -> None:
    view = companion.ApiView(None, "/content/drive/MyDrive", "root")
    assert view.api_path("/content/drive/MyDrive") == "root"
    assert view.api_path("/content/drive/MyDrive/a/b") == "root/a/b"
    assert view.api_path("/content/drive/MyDriveX/a") is None
    assert view.api_path("/tmp/a") is None


def test_states_as_reports_say_them(linked: Any, fake_drive: FakeDrive, tmp_path: Path) -> None:
    linked.uploads = "held"
    location = run_on_mount(linked)
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=5)
    ckpt.save(0, state_at(0))
    fake_drive.fail(100, 400, "badRequest", match="/upload/")  # the API cannot send it
    assert ckpt.sync(30) == [0]
    assert ckpt.drive_states() == {0: "written to the mount, not yet confirmed by Drive"}
    linked.upload()  # the cache's upload goes through at last
    assert ckpt.drive_states() == {0: "on Drive (confirmed by Drive)"}
    assert ckpt.sync(30) == []
    ckpt.close()
    # Another process (colabsession ckpt list) asks Drive itself.
    other = cs.Checkpointer(location, every=None, local_dir=tmp_path / "elsewhere")
    assert other.drive_states() == {0: "on Drive (confirmed by Drive)"}


def test_rotation_deletes_through_the_api(
    linked: Any, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    ckpt = cs.Checkpointer(
        run_on_mount(linked), every=None, local_dir=tmp_path / "vm1", keep_last=1
    )
    per_round = []
    for step in range(3):
        before = len(fake_drive.state.requests)
        ckpt.save(step, state_at(step))
        assert ckpt.sync(30) == []
        per_round.append(fake_drive.state.requests[before:])
    ckpt.close()
    # Each later round: the folder listed with md5s (the confirmation), the old checkpoint
    # looked up by name and deleted. Not marked first (a PATCH) nor its mark read back (a GET
    # of its properties): Drive confirmed it, so colabsession wrote it (6 requests before).
    for requests in per_round[1:]:
        assert sorted(r.split(" ")[0] for r in requests) == ["DELETE", "GET", "GET"], requests
    # Steps 0 and 1, written through the mount and confirmed by Drive against the local copy,
    # were marked as colabsession's and deleted for good through the API: nothing of them sits
    # in the Trash, counting against the quota (issue 23).
    assert on_drive(fake_drive, 2) is not None
    for step in (0, 1):
        prefix = file_name(step).rsplit(".", 2)[0]
        assert [
            f for f in [*fake_drive.state.files.values()] if f["title"].startswith(prefix)
        ] == []
    assert fake_drive.used()[1] == 0
    assert linked.waits == []


def test_ckpt_list_says_what_drive_holds(
    linked: Any, fake_drive: FakeDrive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from colabsession._cli import main

    with (tmp_path / "mounts").open("a") as table:  # the folder is a FUSE mount, as in Colab
        table.write(f"drive {linked.drive} fuse.drive rw,nosuid 0 0\n")
    linked.uploads = "held"
    location = run_on_mount(linked)
    fake_drive.fail(100, 400, "badRequest", match="/upload/")
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=5) as ckpt:
        ckpt.save(0, state_at(0))
        ckpt.save(1, state_at(1))
        assert ckpt.sync(30) == [0, 1]
    linked.upload()  # they reach Drive at last
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=5) as ckpt:
        ckpt.restore()
        ckpt.save(2, state_at(2))
        assert ckpt.sync(30) == [2]  # held in the mount's cache
    fake_drive.state.failures.clear()
    capsys.readouterr()
    assert main(["ckpt", "list", location.path]) == 0
    out = capsys.readouterr().out
    assert "0  on Drive (confirmed by Drive)" in out
    assert "1  on Drive (confirmed by Drive)" in out
    assert "2  written to the mount, not yet confirmed by Drive" in out


def test_the_mount_back_takes_over_again(
    linked: Any, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    location = run_on_mount(linked)
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=5)
    ckpt.save(0, state_at(0), metrics={"loss": 1.0})
    assert ckpt.sync(30) == []
    linked.drop()
    ckpt.save(1, state_at(1), metrics={"loss": 0.5})
    assert ckpt.sync(30) == []  # through the API; the history waits for the mount
    linked.mount("/content/drive", force_remount=True)  # cs.drive.ensure() in a cell
    ckpt.save(2, state_at(2), metrics={"loss": 0.25})
    assert ckpt.sync(30) == []
    ckpt.close()
    run = linked.drive / "checkpoints" / "run"
    assert {p.name.split(".")[0] for p in run.glob("ckpt-*.ckpt")} == {
        f"ckpt-{step:012d}" for step in (0, 1, 2)
    }
    history = "".join(p.read_text() for p in run.glob("history*.jsonl"))
    assert all(f'"loss": {loss}' in history for loss in (1.0, 0.5, 0.25)), (
        history,
        sorted(p.name for p in run.iterdir()),
    )
    # Drive holds each checkpoint once: the mount did not send again what the API had sent.
    for step in (0, 1, 2):
        prefix = f"ckpt-{step:012d}."
        assert (
            len([f for f in fake_drive.state.files.values() if f["title"].startswith(prefix)]) == 1
        )


def test_the_fake_mount_and_server_are_one_drive(
    linked: Any, fake_drive: FakeDrive, drive_api: Any
) -> None:
    (linked.drive / "a.txt").write_bytes(b"on the mount")
    assert drive_api.cat_file("root/a.txt") == b"on the mount"  # uploaded before the request
    linked.uploads = "held"
    (linked.drive / "b.txt").write_bytes(b"in the cache")
    assert not drive_api.exists("root/b.txt")
    drive_api.pipe_file("root/c.txt", b"through the API")
    linked.sync()
    assert (linked.drive / "c.txt").read_bytes() == b"through the API"
    (linked.drive / "a.txt").unlink()
    linked.upload()
    assert fake_drive.find("a.txt", trashed=True)  # a deletion on the mount trashes
    assert drive_api.cat_file("root/b.txt") == b"in the cache"
    (linked.drive / "d.txt").write_bytes(b"never uploaded")
    linked.disconnect()
    assert not (linked.drive / "d.txt").exists()  # lost with the cache
    assert (linked.drive / "b.txt").exists()


def test_the_view_needs_the_mounted_accounts_credentials_without_a_prompt(
    fake_colab: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = fake_colab.fake
    monkeypatch.setattr(companion, "MOUNT_ROOTS", [fake.drive])
    monkeypatch.setattr(companion, "_views", companion._Views())
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("COLABSESSION_SERVICE_ACCOUNT", "{}")  # its My Drive is not the mounted one
    now = [0.0]
    monkeypatch.setattr(companion, "_monotonic", lambda: now[0])
    connects: list[int] = []
    real = companion._connect

    def connect() -> Any:
        connects.append(1)
        return real()

    monkeypatch.setattr(companion, "_connect", connect)
    on_mount = run_on_mount(fake)
    assert companion.view_for(on_mount) is None  # no prompt: authenticate_user() has not run
    assert companion.view_for(on_mount) is None
    assert connects == [1]  # not tried again at once
    now[0] = companion.RETRY_AFTER + 1
    assert companion.view_for(on_mount) is None
    assert connects == [1, 1]
    elsewhere = Location(on_mount.fs, str(tmp_path / "run"), "./run")
    assert companion.view_for(elsewhere) is None
    assert connects == [1, 1]  # not on the mount: nothing to connect


def test_a_checkpoint_with_parts_is_confirmed_only_once_drive_holds_every_part() -> None:
    """A sharded save's parts are written to the mount before its file, but Drive uploads in
    its own order: the checkpoint is on Drive (and the runtime may be released) only once
    Drive reports each part at its size too."""
    from colabsession._storage.layout import Manifest, Part
    from colabsession._storage.store import Entry

    manifest = Manifest(
        step=3,
        time=0.0,
        session="s",
        metrics={},
        tree=None,
        arrays=[],
        size=0,
        crc32c=0,
        parts=[Part("part-a.part", 10, 1), Part("part-b.part", 20, 2)],
        version=3,
    )
    name = file_name(3)
    listing: dict[str, tuple[int | None, str | None]] = {name: (100, None)}

    class View:
        def files(self, root: str, timeout: float) -> dict[str, tuple[int | None, str | None]]:
            return dict(listing)

    class Api:
        root, timeout = "run", 1.0

        def forget(self, name: str) -> None:
            pass

        def manifest(self, name: str, **_: Any) -> Manifest:
            return manifest  # the file itself reads back whole

    check = replicate.DriveCheck(View(), Api(), None)  # type: ignore[arg-type]
    entry = Entry(3, name, manifest, None)  # type: ignore[arg-type]
    assert check.confirmed([entry]) == set()  # no part on Drive yet
    listing["part-a.part"] = (10, None)
    listing["part-b.part"] = (19, None)  # cut short
    assert check.confirmed([entry]) == set()
    listing["part-b.part"] = (20, None)
    assert check.confirmed([entry]) == {name}
