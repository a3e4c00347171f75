"""The checkpoint core at its edges (issue 22, 21.3): uploads cut short, branches the location
hears of late, saves from several threads, listings through the Drive API, short runs."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

import colabsession as cs
from colabsession._storage import layout as _layout
from colabsession._storage.history import read_history
from colabsession._storage.serialize import crc32c
from colabsession.drive import Location

from .test_checkpoint import assert_state, ckpt_file, ckpt_steps, state_at, steps_in
from .test_checkpoint_faults import FailingMountFS, faulty  # noqa: F401  (a fixture)


class DroppingMount(LocalFileSystem):  # type: ignore[misc]
    """A passthrough to a folder, as the Drive mount is one, whose connection drops in the
    middle of a checkpoint's upload: *drop_after* bytes reach the file, then the write fails
    with ENOTCONN ("Transport endpoint is not connected")."""

    cachable = False

    def __init__(self) -> None:
        super().__init__()
        self.drop_after: int | None = None

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super().open(path, mode, **kwargs)
        limit = self.drop_after
        if "w" not in mode or limit is None or not path.endswith(".ckpt"):
            return f
        real_write, written = f.write, [0]

        def write(data: bytes) -> int:
            room = limit - written[0]
            if len(data) > room:
                real_write(data[:room])
                f.flush()
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            written[0] += len(data)
            return int(real_write(data))

        f.write = write
        return f


def mirrored(tmp_path: Path, fs: Any = None) -> Location:
    return Location(fs or LocalFileSystem(), str(tmp_path / "drive"), "drive:run")


# 22.1: a file at the location counts once it is whole -------------------------------------------


def test_an_upload_cut_short_by_a_dropped_mount_is_sent_again(tmp_path: Path) -> None:
    mount = DroppingMount()
    location = mirrored(tmp_path, mount)
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", timeout=5)
    ckpt.save(0, state_at(0))
    assert ckpt.sync(30) == []
    mount.drop_after = 300  # the mount drops during the next upload
    ckpt.save(1, state_at(1))
    assert ckpt.sync(30) == [1]
    assert ckpt_file(tmp_path / "drive", 1).stat().st_size == 300  # cut short, final name
    mount.drop_after = None  # it answers again
    assert ckpt.sync(30) == []  # sent again, not taken for there by its name
    ckpt.close()
    restored = cs.Checkpointer(location, local_dir=tmp_path / "vm2").restore()
    assert restored is not None
    assert restored.step == 1
    assert_state(restored.state, 1)


def _start_worker(*args: str) -> subprocess.Popen[str]:
    root = Path(__file__).parent.parent
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("upload_worker.py")), *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_a_kill_during_an_upload_leaves_nothing_counted_as_there(tmp_path: Path) -> None:
    drive, vm1 = tmp_path / "drive", tmp_path / "vm1"
    proc = _start_worker("mount", str(drive), str(vm1), "2")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "uploading"
        assert proc.stdout.readline().strip() == "cut"  # step 2 half uploaded: kill now
    finally:
        proc.kill()
        proc.wait(30)
    assert ckpt_file(drive, 2).stat().st_size < ckpt_file(vm1, 2).stat().st_size
    # The notebook runs again on the same runtime and syncs before going on.
    location = mirrored(tmp_path)
    again = cs.Checkpointer(location, every=None, keep_last=3, local_dir=vm1, timeout=10)
    restored = again.restore()
    assert restored is not None and restored.step == 2  # noqa: PT018
    again.prepare()
    assert again.sync(60) == []
    again.close()
    assert ckpt_file(drive, 2).read_bytes() == ckpt_file(vm1, 2).read_bytes()
    fresh = cs.Checkpointer(location, local_dir=tmp_path / "vm2")
    restored = fresh.restore()
    assert restored is not None and restored.step == 2  # noqa: PT018
    assert all(why is None for _, _, why in fresh.verify())


def test_a_kill_during_an_upload_through_the_drive_api(
    tmp_path: Path, fake_drive: Any, drive_api: Any
) -> None:
    """A resumable upload creates its file only once whole, so a kill leaves nothing under the
    name; the next session sends it (copies cut short under the name: the test after this)."""
    fs = drive_api
    fake_drive.chunk_limit = 4096  # an upload takes many round trips: time to kill it
    vm1 = tmp_path / "vm1"
    proc = _start_worker("api", fake_drive.endpoint, str(vm1), "2")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "uploading"
        deadline = time.monotonic() + 60  # a hang detector, not a speed assertion
        while not _uploading(fake_drive, "ckpt-000000000002"):
            assert time.monotonic() < deadline, "step 2 was never being uploaded"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(30)
    fake_drive.chunk_limit = None
    location = Location(fs, f"{fs.root}/checkpoints/run", "drive:checkpoints/run (API)")
    again = cs.Checkpointer(location, every=None, keep_last=3, local_dir=vm1)
    restored = again.restore()
    assert restored is not None and restored.step == 2  # noqa: PT018
    again.prepare()
    assert again.sync(60) == []
    again.close()
    fresh = cs.Checkpointer(location, local_dir=tmp_path / "vm2")
    restored = fresh.restore()
    assert restored is not None and restored.step == 2  # noqa: PT018
    assert all(why is None for _, _, why in fresh.verify())


def _uploading(fake_drive: Any, title: str) -> bool:
    """Whether an upload session of *title* has received some bytes."""
    with fake_drive.state.lock:
        return any(
            title in u["metadata"].get("title", "") and u["data"]
            for u in fake_drive.state.uploads.values()
        )


def test_copies_cut_short_through_the_drive_api_are_resent_or_removed(
    tmp_path: Path, fake_drive: Any, drive_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fs = drive_api
    location = Location(fs, f"{fs.root}/checkpoints/run", "drive:checkpoints/run (API)")
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")
    for step in range(3):
        ckpt.save(step, state_at(step))
    assert ckpt.sync(60) == []
    ckpt.close()
    # What a kill mid-upload leaves where the upload is not atomic (the mount's own client
    # uploading part of a file): step 2 cut short under its name, and a dead runtime's step 9.
    name = ckpt_file(tmp_path / "vm1", 2).name
    (item,) = fake_drive.find(name)
    with fake_drive.state.lock:
        whole = fake_drive.state.content[item["id"]]
        fake_drive.state.content[item["id"]] = whole[: len(whole) // 2]
        item["fileSize"] = str(len(whole) // 2)
    foreign = _layout.file_name(9)
    fs.pipe_file(f"{location.path}/{foreign}", whole[:100])
    again = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")
    assert again.restore() is not None
    again.prepare()
    assert again.sync(60) == []
    again.close()
    (item,) = fake_drive.find(name)
    assert fake_drive.read(item["id"]) == whole  # sent again whole
    assert foreign not in [p.rsplit("/", 1)[-1] for p in fs.ls(location.path)]  # removed
    caplog.clear()
    with caplog.at_level(logging.WARNING, "colabsession"):
        restored = cs.Checkpointer(location, local_dir=tmp_path / "vm2").restore()
    assert restored is not None and restored.step == 2  # noqa: PT018
    assert "skipping" not in caplog.text


class HistoryRefused(LocalFileSystem):  # type: ignore[misc]
    """A location that takes checkpoints but not (for now) the history: a kill, or a drop,
    between the two uploads of one round."""

    cachable = False
    refuse = True

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if self.refuse and "/history." in path and mode[0] in "wa":
            raise OSError(errno.EIO, "Input/output error")
        return super().open(path, mode, **kwargs)


def test_the_location_never_holds_a_checkpoint_ahead_of_its_history(tmp_path: Path) -> None:
    """Found by the script tests killed on new VMs under load: a checkpoint uploaded before the
    history of its steps, then a kill, left a new VM a history with a gap up to that step."""
    fs = HistoryRefused()
    options: dict[str, Any] = {"every": None, "local_dir": tmp_path / "vm1", "timeout": 1}
    ckpt = cs.Checkpointer(mirrored(tmp_path, fs), close_timeout=0.5, **options)
    for step in (1, 2, 3):
        ckpt.save(step, state_at(step), metrics={"loss": 1.0 / step})
    assert ckpt.sync(0.5) == [1, 2, 3]  # the history did not go up, so neither did they
    ckpt.close()
    assert ckpt_steps(tmp_path / "drive") == []
    fs.refuse = False
    later = cs.Checkpointer(mirrored(tmp_path, fs), local_dir=tmp_path / "vm1", every=None)
    assert later.restore() is not None
    later.save(4, state_at(4), metrics={"loss": 0.25})
    assert later.sync(10) == []
    later.close()
    new_vm = cs.Checkpointer(mirrored(tmp_path), local_dir=tmp_path / "vm2")
    restored = new_vm.restore()
    assert restored is not None and restored.step == 4  # noqa: PT018
    steps = [r["step"] for r in read_history(mirrored(tmp_path), tmp_path / "vm2")]
    assert steps == [1, 2, 3, 4]


# 22.2: restore follows the live lineage, however late the location hears of it ---------------


def _branch_while_drive_is_silent(tmp_path: Path, fs: FailingMountFS) -> dict[str, Any]:
    """A run saves 5, 10, 15 to ``mirrored(tmp_path, fs)``; restored at 5, it saves 6 and 7
    while Drive does not answer, so they stay local in vm1. Returns the Checkpointer options."""
    location = mirrored(tmp_path, fs)
    options: dict[str, Any] = {"every": None, "keep_last": 3, "local_dir": tmp_path / "vm1"}
    options.update(timeout=0.5, close_timeout=1)
    with cs.Checkpointer(location, **options) as first:
        for step in (5, 10, 15):
            first.save(step, state_at(step))
    second = cs.Checkpointer(location, **options)
    assert second.restore(step=5) is not None
    fs.eio = True  # Drive does not answer while the new branch saves
    second.save(6, state_at(6))
    second.save(7, state_at(7))
    second.close()
    fs.eio = False
    return options


def test_a_branch_saved_while_drive_was_silent_wins_once_it_answers(
    tmp_path: Path,
    faulty: FailingMountFS,  # noqa: F811
) -> None:
    _branch_while_drive_is_silent(tmp_path, faulty)
    # A reader that sees both branches: the one begun last is live, the old one abandoned.
    shutil.copytree(tmp_path / "vm1", tmp_path / "drive", dirs_exist_ok=True)
    reader = cs.Checkpointer(mirrored(tmp_path), local_dir=tmp_path / "vm3")
    assert reader.steps() == [5, 6, 7]
    restored = reader.restore()
    assert restored is not None and restored.step == 7  # noqa: PT018
    with pytest.raises(cs.CheckpointError, match="abandoned branch"):
        reader.restore(step=15)


def test_the_location_hears_of_a_branch_late_and_sets_the_old_one_aside(
    tmp_path: Path,
    faulty: FailingMountFS,  # noqa: F811
) -> None:
    options = _branch_while_drive_is_silent(tmp_path, faulty)  # Drive still has 10 and 15
    # The notebook runs again, Drive answers.
    third = cs.Checkpointer(mirrored(tmp_path, faulty), **options)
    restored = third.restore()
    assert restored is not None
    assert restored.step == 7  # never 15, of the abandoned branch
    third.save(8, state_at(8))
    assert third.sync(30) == []
    third.close()
    drive = tmp_path / "drive"
    assert ckpt_steps(drive) == [6, 7, 8]
    parked = sorted(p.name.split(".")[0] for p in drive.glob("parked-ckpt-*"))
    assert parked == ["parked-ckpt-000000000010", "parked-ckpt-000000000015"]
    fresh = cs.Checkpointer(mirrored(tmp_path), local_dir=tmp_path / "vm2").restore()
    assert fresh is not None and fresh.step == 8  # noqa: PT018


def test_checkpoints_without_a_lineage_still_restore_and_branch(tmp_path: Path) -> None:
    """Files of an older colabsession (no lineage in their manifests) are one branch, older
    than any other."""
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state_at(step))
    for path in tmp_path.glob("ckpt-*.ckpt"):  # as an older release wrote them
        _strip_lineage(path)
    again = cs.Checkpointer(tmp_path, every=None)
    restored = again.restore(step=2)
    assert restored is not None
    again.save(4, state_at(4))
    again.close()
    assert cs.Checkpointer(tmp_path).steps() == [1, 2, 4]
    latest = cs.Checkpointer(tmp_path).restore()
    assert latest is not None and latest.step == 4  # noqa: PT018


def test_a_branch_is_newer_than_what_it_restored_from_whatever_the_clocks_say(
    tmp_path: Path,
) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        assert ckpt.restore() is None  # a new run
        for step in (1, 2, 3):
            ckpt.save(step, state_at(step))
    for path in tmp_path.glob("ckpt-*.ckpt"):  # written on a runtime whose clock is an hour ahead
        _edit_manifest(path, lambda body: body["lineage"].update(started=body["time"] + 3600))
    again = cs.Checkpointer(tmp_path, every=None)
    assert again.restore(step=1) is not None
    again.save(2, state_at(22))
    again.close()
    restored = cs.Checkpointer(tmp_path).restore()
    assert restored is not None
    assert restored.step == 2
    assert restored.state["model"]["w"][0] == 22  # the new branch's, not the old one's 3


def _strip_lineage(path: Path) -> None:
    _edit_manifest(path, lambda body: body.pop("lineage"))


def _edit_manifest(path: Path, change: Any) -> None:
    data = path.read_bytes()
    length, _, magic = _layout.TRAILER.unpack(data[-_layout.TRAILER.size :])
    body = json.loads(data[-_layout.TRAILER.size - length : -_layout.TRAILER.size])
    change(body)
    new = json.dumps(body).encode()
    arrays = data[: -_layout.TRAILER.size - length]
    crc = crc32c(new)
    path.write_bytes(arrays + new + _layout.TRAILER.pack(len(new), crc, magic))


# 22.3: saves from several threads never mix two steps -------------------------------------------


def test_saves_with_waits_and_syncs_from_other_threads_never_mix_steps(tmp_path: Path) -> None:
    location = mirrored(tmp_path)
    ckpt = cs.Checkpointer(location, every=None, keep_last=100, local_dir=tmp_path / "vm1")
    done = threading.Event()
    errors: list[BaseException] = []

    def hammer(call: Any) -> None:
        try:
            while not done.is_set():
                call()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=hammer, args=(ckpt.wait,)),
        threading.Thread(target=hammer, args=(ckpt.wait,)),
        threading.Thread(target=hammer, args=(lambda: ckpt.sync(0),)),
    ]
    for thread in threads:
        thread.start()
    try:
        for step in range(40):
            ckpt.save(step, {"w": np.full(100_000, step, np.float64), "step": step})
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    ckpt.close()
    assert not errors
    for path in sorted((tmp_path / "vm1").glob("ckpt-*.ckpt")):
        restored = cs.Checkpointer(tmp_path / "vm1").restore(step=steps_in([path.name])[0])
        assert restored is not None
        w = restored.state["w"]
        assert (w == restored.state["step"]).all(), f"step {restored.step} mixes steps"


# 22.17: a listing through the Drive API reads manifests, not whole files ----------------------


def test_restore_through_the_drive_api_downloads_one_checkpoint(
    tmp_path: Path, fake_drive: Any, drive_api: Any
) -> None:
    fs = drive_api
    location = Location(fs, f"{fs.root}/checkpoints/run", "drive:checkpoints/run (API)")
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1") as ckpt:
        for step in range(3):
            ckpt.save(step, {"w": np.full(200_000, step, np.float64)})
    size = ckpt_file(tmp_path / "vm1", 2).stat().st_size
    before = fake_drive.state.served
    restored = cs.Checkpointer(location, local_dir=tmp_path / "vm2").restore()
    assert restored is not None and restored.step == 2  # noqa: PT018
    served = fake_drive.state.served - before
    assert served < 1.5 * size  # the newest whole, the others' last bytes only


# 21.3: a short run is never silently started over ------------------------------------------------


def test_a_history_without_a_checkpoint_says_training_starts_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = cs.Checkpointer(tmp_path, every=None, every_steps=1000)
    for step in range(41):
        ckpt.log(step, loss=1.0 / (step + 1))
    ckpt.close()  # killed before any checkpoint
    with caplog.at_level(logging.WARNING, "colabsession"):
        assert cs.Checkpointer(tmp_path).restore() is None
    assert "history of 41 logged steps (up to step 40) but no checkpoint" in caplog.text
    assert "starts over" in caplog.text


# The live lineage, rule by rule -----------------------------------------------------------------


class _Listed:
    def __init__(self, step: int, lineage: _layout.Lineage | None) -> None:
        self.step = step
        self.manifest = _layout.Manifest(
            step=step,
            time=0.0,
            session="s",
            metrics={},
            tree=None,
            arrays=[],
            size=0,
            crc32c=0,
            lineage=lineage,
        )

    def __repr__(self) -> str:
        return f"{self.step}"


def _live(entries: list[_Listed], head: _layout.Lineage | None = None) -> list[str]:
    """The live entries as "step:branch" ("-": no lineage)."""
    from colabsession._storage.lineage import split_live

    return [
        f"{e.step}:{e.manifest.lineage.branch if e.manifest.lineage else '-'}"
        for e in split_live(entries, head)[0]
    ]


def test_the_live_lineage_rules() -> None:
    Lineage = _layout.Lineage
    legacy = [_Listed(s, None) for s in (1, 2, 3)]
    a = Lineage("a", 10.0, fork_branch=None, fork_step=2)  # restored the legacy step 2
    b = Lineage("b", 20.0, fork_branch="a", fork_step=4)  # restored a's step 4
    on_a = [_Listed(s, a) for s in (3, 4, 5)]
    on_b = [_Listed(s, b) for s in (5, 6)]
    assert _live(legacy) == ["1:-", "2:-", "3:-"]  # files of an older release: one branch
    assert _live(legacy + on_a) == ["1:-", "2:-", "3:a", "4:a", "5:a"]
    everything = legacy + on_a + on_b
    assert _live(everything) == ["1:-", "2:-", "3:a", "4:a", "5:b", "6:b"]
    assert _live(everything[::-1]) == ["6:b", "5:b", "4:a", "3:a", "2:-", "1:-"]  # any order
    # A writer's own branch is live whatever the files say, before it has saved anything.
    assert _live(everything, head=Lineage("c", 5.0)) == []  # restarted: no ancestors
    assert _live(everything, head=Lineage("c", 5.0, fork_branch="a", fork_step=3)) == [
        "1:-",
        "2:-",
        "3:a",
    ]
    # restore() never called: the branch follows whatever came before it, whole.
    on_d = [_Listed(7, Lineage("d", 30.0, follows=True))]
    assert _live(everything + on_d) == ["1:-", "2:-", "3:a", "4:a", "5:b", "6:b", "7:d"]
