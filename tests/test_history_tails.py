"""Attacks on the history carried in checkpoints (issue 25): a restore, a kill, a takeover, a
hostile or damaged tail, a location down then back, read as a new VM reads the location.

Each test holds a guarantee: the location's history (its newest complete revision with the
tails that continue it) never shows records a restore dropped, never loses a record the
location was reported to hold, and never trusts what a checkpoint carries beyond a record's
shape."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

import colabsession as cs
from colabsession._drive.location import Location
from colabsession._storage import layout as _layout
from colabsession._storage.backends import Mount
from colabsession._storage.history import HistoryLog, read_history
from colabsession._storage.layout import HistoryTail
from colabsession._storage.lease import Lease
from colabsession._storage.replicate import Replicator
from colabsession._storage.retention import LatestN
from colabsession._storage.serialize import crc32c
from colabsession._storage.store import Store

from .test_checkpoint import state_at
from .test_replicate import Clock, FailingRemote, Run, commit_carrying, save


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    made = Run(tmp_path)
    yield made
    made.replicator.stop()
    made.lease.release()


def location_history(folder: Path, vm: Path) -> list[tuple[int, Any]]:
    """(step, loss) of each record of the run's history as a new VM reads it from the
    location alone."""
    fresh = Store(Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30)
    reader = HistoryLog(Store.local_disk(vm), fresh, session="")
    return [(r["step"], r.get("loss")) for r in reader.newest()]


class HoldingMount(Mount):
    """The Drive mount (the history file appended), holding a whole write while ``hold`` is
    set, until ``release``."""

    def __init__(self) -> None:
        super().__init__(LocalFileSystem(), durable=False)
        self.hold, self.entered, self.release = (threading.Event() for _ in range(3))

    def write(self, path: str, data: bytes) -> None:
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        super().write(path, data)


def test_a_restore_while_a_revision_is_written_drops_what_it_uploads(tmp_path: Path) -> None:
    """restore() of an older step (its first save calls HistoryLog.start) while the
    replicator writes the session's revision whole: that revision holds the records the
    restore dropped, so the next sync writes another whole, rather than appending after
    them (the new records of those steps were never sent, and the file showed the old)."""
    backend = HoldingMount()
    folder = tmp_path / "remote"
    remote = Store(
        Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30, backend=backend
    )
    remote.makedirs()
    history = HistoryLog(Store.local_disk(tmp_path / "local"), remote, session="s")
    history.start(None, truncate=False)
    for step in (1, 2, 3, 4):
        history.append({"step": step, "time": float(step), "session": "s", "loss": "old"})
    backend.hold.set()
    syncing = threading.Thread(target=history.sync)
    syncing.start()
    try:
        assert backend.entered.wait(30)
        history.start(2, truncate=True)  # the first save after restore(2)
    finally:
        backend.hold.clear()
        backend.release.set()
        syncing.join(30)
    assert history.tail() is None  # nothing continues the revision of dropped records
    for step in (3, 4, 5):
        history.append({"step": step, "time": 10.0 + step, "session": "s", "loss": "new"})
    history.sync()
    expected = [(1, "old"), (2, "old"), (3, "new"), (4, "new"), (5, "new")]
    assert location_history(folder, tmp_path / "vm2") == expected
    assert len(list(folder.glob("history.*.jsonl"))) == 2  # written anew, not in place


def test_a_tail_with_a_time_no_float_can_hold_is_skipped(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A carried record whose time is an integer too large for a float, or not finite, is
    a damaged line: skipped with a warning, where it made every reader (cs.history, the
    resume of the run) fail with an OverflowError, or outrank every other record."""
    run.remote.makedirs()
    run.save(1)
    run.history.sync()
    mine = run.history.tail()
    assert mine is not None
    huge = '{"step": 2, "time": 1%s, "session": "s"}\n' % ("0" * 400)
    endless = '{"step": 3, "time": Infinity, "session": "s"}\n'
    good = '{"step": 4, "time": 4.0, "session": "s"}\n'
    commit_carrying(run.remote, 4, dataclasses.replace(mine, lines=huge + endless + good))
    with caplog.at_level(logging.WARNING):
        assert [s for s, _ in location_history(run.folder, tmp_path / "vm2")] == [1, 4]
    assert "damaged line" in caplog.text
    resumed = HistoryLog(Store.local_disk(tmp_path / "vm3"), run.remote, session="t")
    resumed.start(4, truncate=True)  # a new runtime resumes the run
    assert [r["step"] for r in resumed.records] == [1, 4]


class ManifestsDown(FailingRemote):
    """A location whose checkpoints' manifests cannot be read while ``manifests_down`` (a
    read timing out), its listing and history file still answering."""

    def __init__(self) -> None:
        super().__init__()
        self.manifests_down = False

    def read_manifest(self, path: str, name: str, size: int | None) -> Any:
        if self.manifests_down:
            raise TimeoutError(f"reading {name} timed out")
        return super().read_manifest(path, name, size)


@pytest.mark.parametrize("fault", ["down", "manifests"])
def test_a_resume_that_cannot_read_the_location_loses_no_record(
    run: Run, tmp_path: Path, fault: str
) -> None:
    """A new runtime resumes (restore from the location) and the location stops answering,
    or its checkpoints' manifests cannot be read, as the first save begins writing: the
    session's revision, written once the location answers, still holds every record of the
    run up to the restored step (it held this session's alone, or the file's without what
    the checkpoints carried, and superseded them for good)."""
    for step in (1, 2, 3):
        run.save(step, carry=True)
        assert run.replicator.flush(30) == []
    backend = ManifestsDown()
    remote = Store(
        Location(LocalFileSystem(), str(run.folder), "drive:run"), timeout=30, backend=backend
    )
    resumed = HistoryLog(Store.local_disk(tmp_path / "vm2"), remote, session="t")
    backend.down, backend.manifests_down = fault == "down", fault == "manifests"
    resumed.start(2, truncate=True)  # the first save after restore(2) on the new runtime
    with pytest.raises((OSError, TimeoutError)):  # the round fails, and is tried again
        resumed.sync()
    assert sorted(p.name for p in run.folder.glob("history.*")) == ["history.000001.jsonl"]
    backend.down = backend.manifests_down = False
    resumed.append({"step": 3, "time": 30.0, "session": "t", "loss": "new"})
    resumed.sync()
    assert [s for s, _ in location_history(run.folder, tmp_path / "vm3")] == [1, 2, 3]
    assert location_history(run.folder, tmp_path / "vm3")[-1] == (3, "new")
    assert [r["step"] for r in resumed.records] == [1, 2, 3]


def test_over_the_drive_api_a_killed_writer_leaves_every_record(
    tmp_path: Path, drive_api: Any
) -> None:
    """Over the Drive API (each history sync a new revision whole): a runtime that dies after
    a sync (no close) leaves every record it logged, read from the location alone; a new one
    that takes the run over, restores an older step and saves again, then dies too, leaves
    the records up to that step and its own after it, not the dropped ones."""
    fs = drive_api
    location = Location(fs, f"{fs.root}/checkpoints/run", "drive:checkpoints/run (Drive API)")
    first = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=2)
    second = None
    try:
        for step in range(4):
            first.save(step, state_at(step), metrics={"loss": float(step)})
            assert first.sync() == []
            steps = [r["step"] for r in read_history(location, tmp_path / "reader")]
            assert steps == list(range(step + 1))
        second = cs.Checkpointer(
            location, every=None, local_dir=tmp_path / "vm2", keep_last=2, takeover=True
        )
        restored = second.restore(2)
        assert restored is not None
        second.save(3, state_at(3), metrics={"loss": 30.0})
        second.save(4, state_at(4), metrics={"loss": 40.0})
        assert second.sync() == []
        read = [(r["step"], r["loss"]) for r in read_history(location, tmp_path / "reader2")]
        assert read == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    finally:
        for ckpt in (first, second):
            if ckpt is not None:
                with contextlib.suppress(cs.ColabSessionError):
                    ckpt.close()


class TakenOverDuring(FailingRemote):
    """A location where, while the first checkpoint upload runs, ``during`` runs (another
    notebook takes the run over and writes)."""

    def __init__(self) -> None:
        super().__init__()
        self.during: Callable[[], None] | None = None

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> None:
        during, self.during = self.during, None
        if during is not None and "ckpt-" in path:
            during()
        super().write_chunks(path, chunks)


def test_a_writer_taken_over_during_an_upload_writes_no_history_after_it(
    tmp_path: Path,
) -> None:
    """Notebook A uploads a checkpoint (minutes, for a large one) while notebook B takes the
    run over and writes its own revision of the history and a checkpoint carrying its
    records; A's round then brings the history file up to date (a record logged after its
    save): it looks at the lease first and stops, rather than writing its revision over
    B's (the Drive API's way: a revision of the same number) and hiding B's records."""
    run = Run(tmp_path)
    backend = TakenOverDuring()
    run.backend = backend
    run.remote = run.history.remote = run.replicator.remote = run.lease.store = Store(
        Location(LocalFileSystem(), str(run.folder), "drive:run"), timeout=30, backend=backend
    )
    other = HistoryLog(Store.local_disk(tmp_path / "vm2"), run.remote, session="t")
    taker = Lease(run.remote, owner="b", session="t", ttl=60, takeover=True, what="the run")
    try:
        run.save(1, carry=True)
        assert run.replicator.flush(30) == []

        def take_over() -> None:
            taker.acquire()
            other.start(None, truncate=False)
            other.append({"step": 2, "time": 20.0, "session": "t", "loss": "b"})
            other.sync()
            other.append({"step": 3, "time": 30.0, "session": "t", "loss": "b"})
            commit_carrying(run.remote, 3, other.tail())

        backend.during = take_over
        run.save(2, carry=True)
        run.history.append({"step": 2, "time": 2.5, "session": "s", "loss": "after the save"})
        run.replicator.flush(30)
        assert location_history(run.folder, tmp_path / "vm3") == [(1, 1.0), (2, "b"), (3, "b")]
        assert run.lease.lost is not None
    finally:
        run.replicator.stop()
        run.lease.release()
        taker.release()


def test_a_location_down_a_while_then_back_loses_no_record(run: Run, tmp_path: Path) -> None:
    """The location does not answer while records past SYNC_AT (then past TAIL_LIMIT) pile
    up: the checkpoints committed meanwhile carry them while they fit, then none; once it
    answers, one flush leaves it every record (the file appended before a checkpoint that
    carries none), and a runtime killed then leaves them all, retention having removed the
    checkpoints that carried the older ones."""
    run.save(1, carry=True)
    assert run.replicator.flush(30) == []
    run.backend.down = True
    note = "x" * 3000
    for step in range(2, 10):
        run.history.append({"step": step, "time": float(step), "session": "s", "note": note})
        run.save(step, carry=True)
        assert run.replicator.flush(30) != []
    carried = [e.manifest.history for e in run.local.entries()]
    assert carried[-1] is None  # past TAIL_LIMIT: carried by none
    run.backend.down = False
    assert run.replicator.flush(30) == []
    assert run.at_location() == [8, 9]
    assert [s for s, _ in location_history(run.folder, tmp_path / "vm2")] == list(range(1, 10))
    run.save(10, carry=True)  # and the next one carries what the file lacks again
    assert run.replicator.flush(30) == []
    assert [s for s, _ in location_history(run.folder, tmp_path / "vm3")] == list(range(1, 11))


class CutAppend(Mount):
    """The Drive mount, where an append is cut short after ``cut_after`` bytes (a kill, or the
    mount dropping, mid-write) while that is set."""

    def __init__(self) -> None:
        super().__init__(LocalFileSystem(), durable=False)
        self.cut_after: int | None = None

    def append(self, path: str, data: bytes) -> None:
        if self.cut_after is None:
            super().append(path, data)
            return
        super().append(path, data[: self.cut_after])
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")


@pytest.mark.parametrize("cut_after", [1, 30, 60, 120])
def test_an_append_cut_short_loses_no_carried_record(tmp_path: Path, cut_after: int) -> None:
    """An append to the history file cut short (a torn line at its end) after checkpoints
    carrying those records went up: a new VM reads every record (the torn line skipped, the
    carried ones merged), the next append after it too, and a new runtime resuming writes
    them all into its revision."""
    backend = CutAppend()
    folder = tmp_path / "remote"
    remote = Store(
        Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30, backend=backend
    )
    remote.makedirs()
    history = HistoryLog(Store.local_disk(tmp_path / "local"), remote, session="s")
    history.start(None, truncate=False)
    history.append({"step": 1, "time": 1.0, "session": "s"})
    history.sync()
    for step in (2, 3, 4):
        history.append({"step": step, "time": float(step), "session": "s", "loss": 0.5})
    commit_carrying(remote, 4, history.tail())
    backend.cut_after = cut_after
    with pytest.raises(OSError, match="not connected"):
        history.sync()
    assert [s for s, _ in location_history(folder, tmp_path / "vm2")] == [1, 2, 3, 4]
    backend.cut_after = None
    history.append({"step": 5, "time": 5.0, "session": "s"})
    history.sync()  # after the torn line: a leading newline keeps it apart
    assert [s for s, _ in location_history(folder, tmp_path / "vm3")] == [1, 2, 3, 4, 5]
    resumed = HistoryLog(Store.local_disk(tmp_path / "vm4"), remote, session="t")
    resumed.start(4, truncate=True)
    resumed.sync()
    assert [s for s, _ in location_history(folder, tmp_path / "vm5")] == [1, 2, 3, 4]


class Frozen(OSError):
    """What a location says to a runtime that no longer exists: nothing more reaches it."""


class DiesAfter(Mount):
    """The Drive mount, where the runtime dies at the ``dies_at``-th change (counted from 0;
    None: never): that write lands in part, and from then on nothing more reaches the location
    (every change fails), as after a SIGKILL at that instant; or, with *recovers*, the mount
    drops that change only (part of it landing) and answers again."""

    def __init__(self, dies_at: int | None, *, recovers: bool = False) -> None:
        super().__init__(LocalFileSystem(), durable=False)
        self.dies_at, self.changes, self.recovers = dies_at, 0, recovers

    def _change(self) -> bool:
        """Whether this change is the one cut short by the kill (raises after it)."""
        if self.dies_at is not None and self.changes > self.dies_at and not self.recovers:
            raise Frozen("the runtime is gone")
        self.changes += 1
        return self.changes - 1 == self.dies_at

    def write(self, path: str, data: bytes) -> None:
        if self._change():
            super().write(path, data[: len(data) // 2])
            raise Frozen("killed mid-write")
        super().write(path, data)

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> None:
        if self._change():
            super().write_chunks(path, [b"".join(chunks)[:100]])
            raise Frozen("killed mid-upload")
        super().write_chunks(path, chunks)

    def append(self, path: str, data: bytes) -> None:
        if self._change():
            super().append(path, data[: len(data) * 3 // 4])
            raise Frozen("killed mid-append")
        super().append(path, data)

    def replace(self, path: str, data: bytes) -> None:
        if self._change():
            raise Frozen("killed before the rename")
        super().replace(path, data)

    def remove(self, path: str) -> None:
        if self._change():
            raise Frozen("killed")
        super().remove(path)

    def move(self, source: str, target: str) -> None:
        if self._change():
            raise Frozen("killed")
        super().move(source, target)


def a_session_killed_at(root: Path, dies_at: int | None, *, recovers: bool = False) -> int:
    """Saves of steps 1..6 (each flushed), a record logged after the fourth, a record of 9 KiB
    at the fifth (past SYNC_AT: the file is appended) and close()'s flush, on a location where
    the runtime dies at the *dies_at*-th change (see DiesAfter); the changes made."""
    backend = DiesAfter(dies_at, recovers=recovers)
    remote = Store(
        Location(LocalFileSystem(), str(root / "remote"), "drive:run"),
        timeout=30,
        backend=backend,
    )
    local = Store.local_disk(root / "local")
    history = HistoryLog(local, remote, session="s")
    history.start(None, truncate=False)
    lease = Lease(remote, owner="me", session="s", ttl=3600, takeover=False, what="the run")
    replicator = Replicator(
        local, remote, history=history, lease=lease, policy=LatestN(2), monotonic=Clock()
    )
    try:
        for step in range(1, 7):
            if step == 5:
                big = {"step": step, "time": 5.0, "session": "s", "note": "x" * (9 << 10)}
                history.append(big)
            save(history, local, step, carry=True)
            replicator.flush(30)
            if step == 4:
                history.append({"step": 4, "time": 4.5, "session": "s", "val_loss": 0.4})
                replicator.flush(30)
        replicator.flush(30, history=True)
    finally:
        replicator.stop()
        with contextlib.suppress(OSError):
            lease.release()
    return backend.changes


@pytest.mark.parametrize("recovers", [False, True], ids=["killed", "mount-drops-once"])
def test_a_kill_at_any_change_of_the_location_leaves_a_history_without_gaps(
    tmp_path: Path, recovers: bool
) -> None:
    """The runtime dies at each change it makes to the location in turn (part of that one
    landing), or the mount drops that change only: read from the location alone, the history
    holds every record up to the newest checkpoint there, each once, with its last values;
    and a new runtime resuming from that checkpoint writes those records into its revision."""
    changes = a_session_killed_at(tmp_path / "whole", None)
    assert changes > 10
    for dies_at in range(changes):
        root = tmp_path / str(dies_at)
        a_session_killed_at(root, dies_at, recovers=recovers)
        folder = root / "remote"
        fresh = Store(Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30)
        newest = max((e.step for e in fresh.entries(warn=False)), default=0)
        records = HistoryLog(Store.local_disk(root / "vm2"), fresh, session="").newest()
        steps = [r["step"] for r in records]
        assert steps[: steps.index(newest) + 1 if newest else 0] == list(range(1, newest + 1))
        assert len(steps) == len(set(steps)), (dies_at, steps)
        if newest >= 4:
            (fourth,) = [r for r in records if r["step"] == 4]
            assert fourth.get("val_loss") == 0.4 or newest == 4, (dies_at, fourth)
        resumed = HistoryLog(Store.local_disk(root / "vm3"), fresh, session="t")
        resumed.start(newest, truncate=True)
        resumed.sync()
        again = HistoryLog(Store.local_disk(root / "vm4"), fresh, session="").newest()
        assert [r["step"] for r in again] == list(range(1, newest + 1)), dies_at


def test_a_tail_of_a_format_this_release_cannot_read_leaves_the_checkpoint_readable(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint whose history tail is of a newer format that changed its fields (its
    version says so: "a reader skips a newer one") restores as before; only the tail is left
    out, with a warning. It was skipped as damaged whole: the arrays lost to this release."""
    run.remote.makedirs()
    run.save(1)
    run.history.sync()
    mine = run.history.tail()
    assert mine is not None
    commit_carrying(run.remote, 2, mine)
    (path,) = run.folder.glob("ckpt-000000000002.*")
    data = path.read_bytes()
    length, _, magic = _layout.TRAILER.unpack(data[-_layout.TRAILER.size :])
    start = len(data) - _layout.TRAILER.size - length
    body = json.loads(data[start : -_layout.TRAILER.size])
    body["history"] = {"revision": 1, "mark": mine.mark, "lines": ["a line"], "version": 2}
    new = json.dumps(body).encode()
    path.write_bytes(data[:start] + new + _layout.TRAILER.pack(len(new), crc32c(new), magic))
    fresh = Store(Location(LocalFileSystem(), str(run.folder), "drive:run"), timeout=30)
    with caplog.at_level(logging.WARNING):
        (entry,) = fresh.entries()
    assert entry.manifest.history is None
    assert "history records of a format" in caplog.text
    assert fresh.load(entry)["w"].tolist() == [0.0, 0.0]
    assert [s for s, _ in location_history(run.folder, tmp_path / "vm2")] == [1]


def test_a_restore_in_the_session_then_saves_then_a_kill(tmp_path: Path) -> None:
    """A Checkpointer on a mirrored location (the history file appended, as on the mount)
    restores an older step after saving and saves again; after each sync() a kill leaves a
    new VM the history up to the restored step and the new records after it, never the
    dropped ones (nor their losses), and the resume takes the new branch."""
    drive = tmp_path / "drive"
    location = Location(LocalFileSystem(), str(drive), "drive:run")
    ckpt = cs.Checkpointer(location, every=None, keep_last=3, local_dir=tmp_path / "vm1")

    def after_a_kill(name: str) -> list[tuple[int, Any]]:
        copy = tmp_path / f"killed-{name}"
        shutil.copytree(drive, copy)
        found = read_history(Location(LocalFileSystem(), str(copy), "drive:run"), copy / "vm")
        return [(r["step"], r["loss"]) for r in found]

    try:
        for step in range(1, 7):
            ckpt.save(step, state_at(step), metrics={"loss": float(step)})
            assert ckpt.sync(10) == []
        assert after_a_kill("before") == [(s, float(s)) for s in range(1, 7)]
        restored = ckpt.restore(4)
        assert restored is not None
        ckpt.save(5, state_at(5), metrics={"loss": 50.0})
        assert ckpt.sync(10) == []
        expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
        assert after_a_kill("restored") == expected
        ckpt.log(6, loss=60.0)
        ckpt.save(7, state_at(7), metrics={"loss": 70.0})
        assert ckpt.sync(10) == []
        assert after_a_kill("after") == [*expected, (6, 60.0), (7, 70.0)]
        shutil.copytree(drive, tmp_path / "resumed")
        resumed = cs.Checkpointer(
            Location(LocalFileSystem(), str(tmp_path / "resumed"), "drive:run"),
            every=None,
            local_dir=tmp_path / "vm2",
        )
        again = resumed.restore()
        assert again is not None
        assert again.step == 7
        resumed.close()
    finally:
        ckpt.close()


@pytest.mark.parametrize("old", ["history.jsonl", "history.000003.jsonl"])
def test_a_run_of_an_older_release_is_continued_with_tails(
    run: Run, tmp_path: Path, old: str
) -> None:
    """A location an older colabsession wrote (0.1's single file, or a revision whose header
    has no mark, and checkpoints carrying nothing): a tail naming that revision's number
    (hostile, or a mark-less match) merges into nothing; the session's own revision then
    carries a mark, and its tails merge into it."""
    run.folder.mkdir()
    header = '{"kind": "colabsession-history", "version": 1, "revision": 3, "base": 2}\n'
    lines = '{"step": 1, "time": 1.0, "session": "o"}\n{"step": 2, "time": 2.0, "session": "o"}\n'
    (run.folder / old).write_text(lines if old == "history.jsonl" else header + lines)
    stray = '{"step": 9, "time": 9.0, "session": "x"}\n'
    revision = 0 if old == "history.jsonl" else 3
    commit_carrying(run.remote, 2, HistoryTail(revision=revision, mark="", lines=stray))
    assert [s for s, _ in location_history(run.folder, tmp_path / "vm2")] == [1, 2]
    run.history.start(None, truncate=False)
    run.history.sync()
    run.history.append({"step": 3, "time": 3.0, "session": "s"})
    commit_carrying(run.remote, 3, run.history.tail())
    assert [s for s, _ in location_history(run.folder, tmp_path / "vm3")] == [1, 2, 3]
