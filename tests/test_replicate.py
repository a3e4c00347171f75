"""The Replicator on its own: a local mirror, a location that fails as Drive does, and its rounds.

The location is a folder reached as an object store (files written whole under their final
names, as through the Drive API), so an upload cut short leaves a partial file under the final
name. Its clock is injected: a pause after a failure never makes a test wait."""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from colabsession._core.records import parse_record
from colabsession._drive.location import Location
from colabsession._storage import layout as _layout
from colabsession._storage.backends import Backend, Mount, ObjectStore
from colabsession._storage.history import TAIL_LIMIT, HistoryLog, parse_records
from colabsession._storage.layout import CutShort, HistoryTail, Manifest
from colabsession._storage.lease import NAME as LEASE
from colabsession._storage.lease import Lease, LeaseRecord
from colabsession._storage.replicate import Replicator
from colabsession._storage.retention import LatestN
from colabsession._storage.serialize import flatten
from colabsession._storage.store import Entry, Store


class FailingRemote(ObjectStore):
    """A location that can stop answering (``down``: every call fails as a dropped connection
    does) or drop an upload after ``cut_after`` bytes, leaving the partial file behind."""

    def __init__(self) -> None:
        super().__init__(LocalFileSystem())
        self.down = False
        self.cut_after: int | None = None
        self.uploads: list[str] = []

    def _fault(self) -> None:
        if self.down:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def names(self, folder: str) -> list[str]:
        self._fault()
        return super().names(folder)

    def sizes(self, folder: str) -> dict[str, int | None]:
        self._fault()
        return super().sizes(folder)

    def info(self, path: str) -> dict[str, Any]:
        self._fault()
        return super().info(path)

    def open(self, path: str) -> Any:
        self._fault()
        return super().open(path)

    def create(self, path: str) -> Any:
        self._fault()
        return super().create(path)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        self._fault()
        return super().read_range(path, start, end)

    def remove(self, path: str) -> None:
        self._fault()
        super().remove(path)

    def move(self, source: str, target: str) -> None:
        self._fault()
        super().move(source, target)

    def makedirs(self, folder: str) -> None:
        self._fault()
        super().makedirs(folder)

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> None:
        self.uploads.append(path.rsplit("/", 1)[-1])
        if self.cut_after is None:
            super().write_chunks(path, chunks)
            return
        with self.create(path) as f:
            f.write(b"".join(chunks)[: self.cut_after])
        raise OSError(errno.ECONNRESET, "Connection reset by peer")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def save(history: HistoryLog, local: Store, step: int, *, carry: bool = False) -> Entry:
    """Commit a checkpoint of *step* to *local*, with its history record before it; *carry*:
    with the records the location's history file lacks (as the Checkpointer commits them),
    else as a colabsession that carried none."""
    history.append({"step": step, "time": float(step), "session": "s", "loss": 1 / step})
    tree, arrays = flatten({"w": np.full(3, step, dtype=np.float32)})
    fields = {"step": step, "time": float(step), "session": "s", "metrics": {}, "tree": tree}
    if carry:
        fields["history"] = history.tail()
    return local.commit(_layout.file_name(step), lambda f: _layout.write(f, arrays, **fields))


class Run:
    """A run's local mirror, its location and a Replicator between them (keeping 2)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "remote"
        self.backend = FailingRemote()
        self.local = Store.local_disk(root / "local")
        self.remote = Store(
            Location(LocalFileSystem(), str(self.folder), "drive:run"),
            timeout=30,
            backend=self.backend,
        )
        self.history = HistoryLog(self.local, self.remote, session="s")
        self.history.start(None, truncate=False)
        self.lease = Lease(
            self.remote, owner="me", session="s", ttl=60, takeover=False, what="the run"
        )
        self.clock = Clock()
        self.replicator = Replicator(
            self.local,
            self.remote,
            history=self.history,
            lease=self.lease,
            policy=LatestN(2),
            monotonic=self.clock,
        )

    def save(self, step: int, *, carry: bool = False) -> Entry:
        return save(self.history, self.local, step, carry=carry)

    def at_location(self) -> list[int]:
        """The steps whole at the location, as a new reader sees them (nothing cached)."""
        fresh = Store(Location(LocalFileSystem(), str(self.folder), "drive:run"), timeout=30)
        return [e.step for e in fresh.entries()]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    made = Run(tmp_path)
    yield made
    made.replicator.stop()
    made.lease.release()


def test_a_round_copies_what_retention_keeps_and_the_history(run: Run) -> None:
    for step in (1, 2, 3):
        run.save(step)
    assert run.replicator.pending() == [2, 3]  # step 1 is not kept: never uploaded
    assert run.replicator.flush(30) == []
    assert run.at_location() == [2, 3]
    assert sorted(run.backend.uploads) == sorted(e.name for e in run.local.entries()[-2:])
    records, _ = run.history.read_remote()
    assert [r["step"] for r in records] == [1, 2, 3]
    lease = parse_record(LeaseRecord, (run.folder / LEASE).read_bytes())
    assert lease.owner == "me"  # the round took the lease at the location first


def test_a_copy_already_whole_at_the_location_is_not_sent_again(run: Run) -> None:
    entry = run.save(1)
    run.folder.mkdir()
    shutil.copy(run.local.path(entry.name), run.folder / entry.name)  # an earlier runtime's
    assert run.replicator.flush(30) == []
    assert run.backend.uploads == []


def test_a_location_that_does_not_answer_is_retried_after_a_pause(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    run.save(1)
    run.save(2)
    run.backend.down = True
    with caplog.at_level(logging.WARNING):
        assert run.replicator.flush(30) == [1, 2]
    assert "mount dropped" in (run.replicator.last_error or "")  # said so the user can act
    assert "[1, 2] are saved locally" in caplog.text
    assert "NOT yet on drive:run" in caplog.text
    assert run.replicator.backoff.failures == 1
    assert not run.replicator.backoff.due()  # pausing, by the injected clock

    run.backend.down = False
    run.clock.now += run.replicator.backoff.wait  # the pause is over; nothing really waited
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run.replicator.notify()  # the next save: the thread's own retry, not a flush
        deadline = time.monotonic() + 30  # a hang detector, not a speed assertion
        while "answers again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "drive:run answers again: caught up" in caplog.text
    assert run.replicator.pending() == []
    assert run.replicator.last_error is None
    assert run.replicator.backoff.failures == 0
    assert run.at_location() == [1, 2]


def test_a_flush_does_not_wait_for_the_pause(run: Run) -> None:
    run.save(1)
    run.backend.down = True
    assert run.replicator.flush(30) == [1]
    assert not run.replicator.backoff.due()
    run.backend.down = False
    assert run.replicator.flush(30) == []  # the last chance (close, sync) tries at once


def test_an_upload_cut_short_is_sent_again_whole(run: Run) -> None:
    run.save(1)
    newest = run.save(2)
    run.backend.cut_after = 100  # the connection drops 100 bytes into the first upload
    assert run.replicator.flush(30) == [1, 2]
    partial = run.folder / newest.name
    assert partial.stat().st_size == 100  # the newest goes first, and was cut short
    assert isinstance(run.remote.manifest(newest.name, warn=False), CutShort)
    assert run.at_location() == []  # a reader never takes it for a checkpoint

    run.backend.cut_after = None
    assert run.replicator.flush(30) == []
    assert run.at_location() == [1, 2]
    fresh = Store(Location(LocalFileSystem(), str(run.folder), "drive:run"), timeout=30)
    (second,) = [e for e in fresh.entries() if e.step == 2]
    np.testing.assert_array_equal(fresh.load(second)["w"], np.full(3, 2, dtype=np.float32))
    assert fresh.damaged() == []


def test_a_round_removes_what_no_local_copy_will_replace(run: Run) -> None:
    """Retention at the location: an older whole checkpoint past keep_last, and a copy cut short
    by a runtime killed mid-upload (of a step this mirror does not have), both go."""
    elsewhere = Run(run.folder.parent / "elsewhere")
    old, killed = elsewhere.save(1), elsewhere.save(9)
    run.folder.mkdir()
    shutil.copy(elsewhere.local.path(old.name), run.folder / old.name)
    data = Path(elsewhere.local.path(killed.name)).read_bytes()
    (run.folder / killed.name).write_bytes(data[: len(data) // 2])
    run.save(2)
    run.save(3)
    assert run.replicator.flush(30) == []
    assert sorted(p.name for p in run.folder.glob("ckpt-*")) == sorted(
        e.name for e in run.local.entries()
    )


def test_a_lost_lease_stops_uploading(run: Run) -> None:
    run.save(1)
    assert run.replicator.flush(30) == []
    # Another notebook takes the run over.
    other = LeaseRecord(owner="other", host="vm-2", pid=7, session="t", heartbeat=0.0, ttl=60)
    (run.folder / LEASE).write_bytes(other.to_json())
    run.save(2)
    assert run.replicator.flush(30) == [2]
    assert run.lease.lost is not None and "taken over" in run.lease.lost  # noqa: PT018
    assert run.at_location() == [1]  # nothing more written over the new writer's run
    lease = parse_record(LeaseRecord, (run.folder / LEASE).read_bytes())
    assert lease.owner == "other"  # and its lease is left alone


def test_a_lease_lost_before_a_round_uploads_nothing(run: Run) -> None:
    run.lease.lost = "the run was taken over by another notebook"
    run.save(1)
    assert run.replicator.flush(30) == [1]
    assert run.backend.uploads == []
    assert not run.folder.exists()


def test_the_entries_uploaded_keep_their_manifests(run: Run) -> None:
    entry = run.save(4)
    assert run.replicator.flush(30) == []
    found = run.remote.manifest(entry.name)
    assert isinstance(found, Manifest)
    assert (found.size, found.crc32c, found.step) == (
        entry.manifest.size,
        entry.manifest.crc32c,
        4,
    )


# The history carried in checkpoints (issue 25) -------------------------------------------------


def location_steps(folder: Path, vm: Path) -> list[int]:
    """The steps of the run's history as a new VM reads it, from the location alone."""
    fresh = Store(Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30)
    return [r["step"] for r in HistoryLog(Store.local_disk(vm), fresh, session="").newest()]


def test_a_kill_between_rounds_loses_no_history_record(run: Run, tmp_path: Path) -> None:
    """Each checkpoint carries the records the history file lacks, so a runtime that dies
    after any round (nothing more runs: no close) leaves a new VM every record the location
    was reported to hold, read from the location alone; the file is written once, not at
    every round."""
    vm = tmp_path / "vm2"
    for step in range(1, 6):
        run.save(step, carry=True)
        assert run.replicator.flush(30) == []
        assert location_steps(run.folder, vm) == list(range(1, step + 1))
    assert sorted(p.name for p in run.folder.glob("history.*")) == ["history.000001.jsonl"]
    # Logged after the last save: no checkpoint carries it, so a flush writes the file.
    run.history.append({"step": 6, "time": 6.0, "session": "s", "loss": 0.1})
    assert run.replicator.flush(30) == []
    assert location_steps(run.folder, vm) == list(range(1, 7))
    # The location cuts an upload short: a flush still leaves the records there.
    run.backend.cut_after = 100
    run.save(7, carry=True)
    assert run.replicator.flush(30) == [7]
    assert run.at_location() == [4, 5]  # step 7's copy is cut short (6 was a log() only)
    assert location_steps(run.folder, vm) == list(range(1, 8))


def test_close_writes_the_history_file_itself(run: Run) -> None:
    """close() brings the history file up to date though the checkpoints carry its records
    (a reader that predates the tails sees the file alone)."""
    for step in (1, 2, 3):
        run.save(step, carry=True)
        assert run.replicator.flush(30) == []
    assert run.replicator.flush(30, history=True) == []
    newest = max(run.folder.glob("history.*"))
    assert [r["step"] for r in parse_records(newest.read_bytes())[0]] == [1, 2, 3]


def test_records_a_resume_dropped_are_not_brought_back_by_tails(run: Run, tmp_path: Path) -> None:
    """A new runtime resuming from step 1 drops the later records and writes a new revision
    of the file; the tails of the checkpoints that carried them continue the older revision,
    and no reader merges them into the new one."""
    for step in (1, 2, 3):
        run.save(step, carry=True)
        assert run.replicator.flush(30) == []
    assert location_steps(run.folder, tmp_path / "vm2") == [1, 2, 3]
    remote = Store(Location(LocalFileSystem(), str(run.folder), "drive:run"), timeout=30)
    resumed = HistoryLog(Store.local_disk(tmp_path / "vm3"), remote, session="t")
    resumed.start(1, truncate=True)
    resumed.sync()
    assert location_steps(run.folder, tmp_path / "vm4") == [1]


def test_a_resume_on_the_same_runtime_writes_a_new_revision(tmp_path: Path) -> None:
    """restore() of an older step after saving, in one session, on the Drive mount (where
    the file is appended): the records past it go from the location too (the session's next
    sync writes a new revision whole, where it appended after the records it dropped)."""
    folder = tmp_path / "remote"
    remote = Store(
        Location(LocalFileSystem(), str(folder), "drive:run"),
        timeout=30,
        backend=Mount(LocalFileSystem(), durable=False),
    )
    remote.makedirs()
    history = HistoryLog(Store.local_disk(tmp_path / "local"), remote, session="s")
    history.start(None, truncate=False)
    for step in (1, 2, 3):
        history.append({"step": step, "time": float(step), "session": "s"})
    history.sync()
    history.start(1, truncate=True)
    history.sync()
    assert location_steps(folder, tmp_path / "vm2") == [1]
    history.append({"step": 2, "time": 9.0, "session": "s", "loss": 0.2})
    history.sync()
    assert location_steps(folder, tmp_path / "vm3") == [1, 2]


def commit_carrying(store: Store, step: int, tail: HistoryTail | None) -> None:
    tree, arrays = flatten({"w": np.zeros(2, dtype=np.float32)})
    fields = {"step": step, "time": float(step), "session": "s", "metrics": {}, "tree": tree}
    store.commit(
        _layout.file_name(step), lambda f: _layout.write(f, arrays, history=tail, **fields)
    )


def test_tails_read_from_the_location_are_validated(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tail's lines are read as the file's are (a damaged line skipped); a tail of a newer
    format, or continuing another revision (another number, or the same number written by
    another writer), is left out; a checkpoint of an older colabsession carries none and
    reads as before."""
    run.remote.makedirs()
    run.save(1)
    run.history.sync()  # revision 1 with step 1
    mine = run.history.tail()  # continues revision 1 (its number and its header's mark)
    assert mine is not None
    line = '{"step": %d, "time": %d.0, "session": "s"}\n'
    damaged = '{"step": "2"}\n' + line % (2, 2)
    commit_carrying(run.remote, 2, dataclasses.replace(mine, lines=damaged))
    commit_carrying(run.remote, 3, dataclasses.replace(mine, lines=line % (3, 3), version=2))
    commit_carrying(run.remote, 4, dataclasses.replace(mine, lines=line % (4, 4), revision=7))
    other = dataclasses.replace(mine, lines=line % (5, 5), mark="0" * 12)  # another revision 1
    commit_carrying(run.remote, 5, other)
    commit_carrying(run.remote, 6, None)
    with caplog.at_level(logging.WARNING):
        assert location_steps(run.folder, tmp_path / "vm2") == [1, 2]
    assert "newer format" in caplog.text
    assert "damaged line" in caplog.text


def test_a_nan_loss_is_carried_like_any_record(run: Run, tmp_path: Path) -> None:
    """A record with a NaN (a diverged loss) is carried and read back as NaN; a flush finds
    it carried (the lines compare equal) and appends nothing."""
    run.save(1, carry=True)
    assert run.replicator.flush(30) == []
    run.history.append({"step": 2, "time": 2.0, "session": "s", "loss": float("nan")})
    commit_carrying(run.local, 2, run.history.tail())
    assert run.replicator.flush(30) == []
    assert sorted(p.name for p in run.folder.glob("history.*")) == ["history.000001.jsonl"]
    fresh = Store(Location(LocalFileSystem(), str(run.folder), "drive:run"), timeout=30)
    records = HistoryLog(Store.local_disk(tmp_path / "vm2"), fresh, session="").newest()
    assert [r["step"] for r in records] == [1, 2]
    assert math.isnan(records[-1]["loss"])


class HoldingStore(ObjectStore):
    """The Drive API's way (each sync writes a revision whole), holding a write while
    ``hold`` is set, until ``release``."""

    def __init__(self) -> None:
        super().__init__(LocalFileSystem())
        self.hold, self.entered, self.release = (threading.Event() for _ in range(3))

    def write(self, path: str, data: bytes) -> None:
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        super().write(path, data)


def test_no_tail_is_carried_while_a_revision_is_written(tmp_path: Path) -> None:
    """A checkpoint committed while a sync writes a new revision whole carries no tail (the
    new revision is written from the records as they were when it began, and supersedes
    the one a tail would continue): it goes up after the next sync."""
    backend = HoldingStore()
    remote = Store(
        Location(LocalFileSystem(), str(tmp_path / "remote"), "drive:run"),
        timeout=30,
        backend=backend,
    )
    remote.makedirs()
    history = HistoryLog(Store.local_disk(tmp_path / "local"), remote, session="s")
    history.start(None, truncate=False)
    history.sync()
    history.append({"step": 1, "time": 1.0, "session": "s"})
    assert history.tail() is not None
    backend.hold.set()
    syncing = threading.Thread(target=history.sync)
    syncing.start()
    try:
        assert backend.entered.wait(30)
        history.append({"step": 2, "time": 2.0, "session": "s"})
        assert history.tail() is None
    finally:
        backend.release.set()
        syncing.join(30)
    tail = history.tail()  # after it: step 2, continuing the new revision
    assert tail is not None
    assert [r["step"] for r in parse_records(tail.lines.encode())[0]] == [2]
    assert not history.sync_needed([tail])


def test_a_tail_too_large_is_not_carried(run: Run) -> None:
    """Records past TAIL_LIMIT bytes are not carried (the manifest stays small): that
    checkpoint goes up after the file is appended."""
    assert run.history.tail() is None  # the session's revision is not written yet
    assert run.history.sync_needed([None])
    run.remote.makedirs()
    run.history.sync()
    run.history.append({"step": 1, "time": 1.0, "session": "s", "note": "x" * TAIL_LIMIT})
    assert run.history.tail() is None
    run.history.sync()
    run.history.append({"step": 2, "time": 2.0, "session": "s", "loss": 0.5})
    tail = run.history.tail()
    assert tail is not None
    assert not run.history.sync_needed([tail])


# Operations on the Drive mount ---------------------------------------------------------------


class CountingMount(Mount):
    """The Drive mount's backend, recording each file operation asked of it and of its file
    system, nested ones included (a look-up a backend method adds shows here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.durable = False  # (fsspec tokenizes the file system's arguments: its repr)
        super().__init__(CountingFS(self), durable=False)

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or name not in _BACKEND_METHODS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, str(args[0]).rsplit("/", 1)[-1] if args else ""))
            return attr(*args, **kwargs)

        return counted


class CountingFS(LocalFileSystem):  # type: ignore[misc]
    cachable = False

    def __init__(self, owner: CountingMount) -> None:
        super().__init__()
        self.owner = owner

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in _FS_METHODS:
            owner = object.__getattribute__(self, "owner")

            def counted(*args: Any, **kwargs: Any) -> Any:
                owner.calls.append((f"fs.{name}", str(args[0]).rsplit("/", 1)[-1]))
                return attr(*args, **kwargs)

            return counted
        return attr


_BACKEND_METHODS = {
    name for name in dir(Backend) if not name.startswith("_") and callable(getattr(Backend, name))
}
_FS_METHODS = {
    "info", "ls", "open", "cat_file", "rm_file", "rm", "mv", "makedirs", "exists", "isfile",
    "isdir", "size", "find", "touch", "cp_file",
}  # fmt: skip


def mount_rounds(
    tmp_path: Path, *, carry: bool, saves: int = 5
) -> tuple[list[list[tuple[str, str]]], dict[int, str], Store]:
    """The file operations asked of the mount in each round of a flush after a save of steps
    1..*saves* (checkpoints carrying their history, or not); the checkpoints' names by step,
    and the location."""
    backend = CountingMount()
    folder = tmp_path / "remote"
    local = Store.local_disk(tmp_path / "local")
    remote = Store(
        Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30, backend=backend
    )
    history = HistoryLog(local, remote, session="s")
    history.start(None, truncate=False)
    lease = Lease(remote, owner="me", session="s", ttl=3600, takeover=False, what="the run")
    replicator = Replicator(
        local, remote, history=history, lease=lease, policy=LatestN(2), monotonic=Clock()
    )
    names = {}
    try:
        rounds = []
        for step in range(1, saves + 1):
            names[step] = save(history, local, step, carry=carry).name
            backend.calls.clear()
            assert replicator.flush(30) == []
            rounds.append(list(backend.calls))
    finally:
        replicator.stop()
        lease.release()
    return rounds, names, remote


def test_a_checkpoint_costs_three_file_operations_on_the_mount(tmp_path: Path) -> None:
    """Per checkpoint in the steady state (issue 25): the lease looked at, the checkpoint
    written (carrying the history records the history file lacks: no append), the oldest
    deleted; nothing looked up beforehand (each is one system call: on the Drive mount 1, 5
    and 2 round trips, what benchmarks/drive_ops.py counts). Nothing may add to them: at
    100 ms a round trip, each is a tenth of a second of catch-up per checkpoint."""
    rounds, names, remote = mount_rounds(tmp_path, carry=True)
    assert ("write", "history.000001.jsonl") in rounds[0]  # the session's revision, once
    for step, calls in enumerate(rounds[2:], start=3):
        assert calls == [
            ("info", LEASE),
            ("fs.info", LEASE),
            ("write_chunks", names[step]),  # os.open, os.write, os.close
            ("remove", names[step - 2]),
            ("fs.rm_file", names[step - 2]),
        ], calls
    # The file has the first record only; the location has them all.
    assert parse_records(remote.read("history.000001.jsonl"))[0][-1]["step"] == 1
    fresh = Store(Location(LocalFileSystem(), remote.root, "drive:run"), timeout=30)
    reader = HistoryLog(Store.local_disk(tmp_path / "vm2"), fresh, session="")
    assert [r["step"] for r in reader.newest()] == [1, 2, 3, 4, 5]


def test_a_checkpoint_that_carries_no_history_is_preceded_by_an_append(tmp_path: Path) -> None:
    """A checkpoint without the history records in it (committed by an older colabsession,
    on this VM's disk) goes up after the history file is appended, as before: the location
    never holds a checkpoint ahead of its history."""
    rounds, names, _ = mount_rounds(tmp_path, carry=False)
    for step, calls in enumerate(rounds[2:], start=3):
        assert calls == [
            ("info", LEASE),
            ("fs.info", LEASE),
            ("append", "history.000001.jsonl"),  # os.open, os.write, os.close
            ("write_chunks", names[step]),
            ("remove", names[step - 2]),
            ("fs.rm_file", names[step - 2]),
        ], calls


def test_a_heartbeat_looks_at_the_lease_rather_than_reading_it(tmp_path: Path) -> None:
    """The heartbeat renews the lease after a look at it (a read only when someone else wrote
    it since), and makes the run's folder only when it is gone."""
    backend = CountingMount()
    folder = tmp_path / "remote"
    remote = Store(
        Location(LocalFileSystem(), str(folder), "drive:run"), timeout=30, backend=backend
    )
    lease = Lease(remote, owner="me", session="s", ttl=0.3, takeover=False, what="the run")
    lease.acquire()
    try:
        backend.calls.clear()
        deadline = time.monotonic() + 30  # a hang detector, not a speed assertion
        while ("replace", LEASE) not in backend.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        lease.stop_heartbeat()
        beat = backend.calls[: backend.calls.index(("replace", LEASE)) + 1]
        assert beat == [("info", LEASE), ("fs.info", LEASE), ("replace", LEASE)]
        shutil.rmtree(folder)  # deleted by hand meanwhile: the lease makes it again
        lease.write()
        assert parse_record(LeaseRecord, (folder / LEASE).read_bytes()).owner == "me"
    finally:
        lease.release()
