"""The Replicator on its own: a local mirror, a location that fails as Drive does, and its rounds.

The location is a folder reached as an object store (files written whole under their final
names, as through the Drive API), so an upload cut short leaves a partial file under the final
name. Its clock is injected: a pause after a failure never makes a test wait."""

from __future__ import annotations

import errno
import logging
import shutil
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
from colabsession._storage.history import HistoryLog
from colabsession._storage.layout import CutShort, Manifest
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


def save(history: HistoryLog, local: Store, step: int) -> Entry:
    """Commit a checkpoint of *step* to *local*, with its history record before it."""
    history.append({"step": step, "time": float(step), "session": "s", "loss": 1 / step})
    tree, arrays = flatten({"w": np.full(3, step, dtype=np.float32)})
    fields = {"step": step, "time": float(step), "session": "s", "metrics": {}, "tree": tree}
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

    def save(self, step: int) -> Entry:
        return save(self.history, self.local, step)

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


def test_a_checkpoint_costs_four_file_operations_on_the_mount(tmp_path: Path) -> None:
    """Per checkpoint in the steady state (issue 25): the lease looked at, the history
    appended, the checkpoint written, the oldest deleted; nothing looked up beforehand (each
    is one system call: on the Drive mount 1, 3-4, 5 and 2 round trips). Nothing may add to
    them: at 100 ms a round trip, each is a tenth of a second of catch-up per checkpoint."""
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
    try:
        rounds = []
        for step in range(1, 6):
            save(history, local, step)
            backend.calls.clear()
            assert replicator.flush(30) == []
            rounds.append(list(backend.calls))
        names = {e.step: e.name for e in local.entries()}
        for step, calls in enumerate(rounds[2:], start=3):
            assert calls == [
                ("info", LEASE),
                ("fs.info", LEASE),
                ("append", "history.000001.jsonl"),  # os.open, os.write, os.close
                ("write_chunks", names[step]),  # the same
                ("remove", names[step - 2]),
                ("fs.rm_file", names[step - 2]),
            ], calls
    finally:
        replicator.stop()
        lease.release()


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
