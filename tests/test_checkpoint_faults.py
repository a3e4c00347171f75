"""The checkpoint storage core under faults: each failure of issue 14 as a test."""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

import colabsession as cs
from colabsession._storage import layout as _layout
from colabsession._storage.history import parse_records, read_history
from colabsession._storage.lease import Lease
from colabsession._storage.store import Store
from colabsession.drive import Location

from .fake_drive_api import user_credentials
from .test_checkpoint import ckpt_steps, state_at, steps_in


class FailingMountFS(LocalFileSystem):  # type: ignore[misc]
    """A local file system that can hang (a stuck Drive mount), answer EIO, or be full.

    Each switch models one real behaviour: ``hang`` blocks every operation until released
    (a FUSE mount whose daemon stopped answering), ``eio`` fails them as a dropped mount does,
    ``full`` fails writes with ENOSPC (Drive's quota, or the VM's disk)."""

    cachable = False

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.released = threading.Event()
        self.eio = False
        self.full = False

    def _fault(self, writing: bool = False) -> None:
        if self.hang.is_set():
            self.released.wait(60)
        if self.eio:
            raise OSError(errno.EIO, "Input/output error")
        if writing and self.full:
            raise OSError(errno.ENOSPC, "No space left on device")

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self._fault(writing="w" in mode or "a" in mode)
        return super().open(path, mode, **kwargs)

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        self._fault()
        return super().ls(path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        self._fault()
        return super().info(path, **kwargs)

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        self._fault()
        return super().cat_file(path, start=start, end=end, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._fault(writing=True)
        super().makedirs(path, exist_ok=exist_ok)

    def rm_file(self, path: str) -> None:
        self._fault()
        super().rm_file(path)

    def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        self._fault(writing=True)
        super().mv(path1, path2, **kwargs)


@pytest.fixture
def faulty() -> Iterator[FailingMountFS]:
    fs = FailingMountFS()
    yield fs
    fs.released.set()


def in_thread(func: Any, limit: float = 60.0) -> Any:
    """Run *func* in a thread; fail the test if it has not returned within *limit* seconds (a
    hang detector, far above any normal duration, not a speed assertion)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(func())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"{func} hung"
    if errors:
        raise errors[0]
    return result[0] if result else None


# 1. The history is never rewritten in place; a revision cut short is never read ----------------


def test_history_revision_cut_short_falls_back_to_the_whole_one(tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    location = Location(LocalFileSystem(), str(drive), "drive:run")
    first = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")
    for step in range(5):
        first.save(step, state_at(step), metrics={"loss": 1.0 / (step + 1)})
    first.close()
    second = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2")
    assert second.restore() is not None
    second.save(5, state_at(5), metrics={"loss": 0.1})
    second.close()
    revisions = sorted(drive.glob("history.*.jsonl"))
    assert [p.name for p in revisions] == ["history.000001.jsonl", "history.000002.jsonl"]
    # The second runtime was killed while writing its revision: half of it reached Drive.
    newest = revisions[-1]
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 3])
    steps = [r["step"] for r in read_history(location, tmp_path / "vm3")]
    assert steps == [0, 1, 2, 3, 4]  # the whole earlier revision, never the torn one
    newest.write_bytes(b"")
    assert [r["step"] for r in read_history(location, tmp_path / "vm3")] == [0, 1, 2, 3, 4]


def test_a_kill_after_any_sync_keeps_every_record_on_the_location(tmp_path: Path) -> None:
    """Issue 25: the history file at the location is not appended at every checkpoint (each
    carries the records the file lacks). What the location holds when sync() returns (a copy
    of the folder then: a kill at that instant) gives a new VM every record so far."""
    drive = tmp_path / "drive"
    location = Location(LocalFileSystem(), str(drive), "drive:run")
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")

    def after_a_kill(n: int) -> list[int]:
        copy = tmp_path / f"killed-{n}"
        shutil.copytree(drive, copy)
        found = read_history(Location(LocalFileSystem(), str(copy), "drive:run"), copy / "vm")
        return [r["step"] for r in found]

    for step in range(4):
        ckpt.save(step, state_at(step), metrics={"loss": 1.0 / (step + 1)})
        assert ckpt.sync(10) == []
        assert after_a_kill(step) == list(range(step + 1))
    (revision,) = drive.glob("history.*.jsonl")
    assert len(parse_records(revision.read_bytes())[0]) < 4  # the file alone lacks some
    ckpt.log(4, loss=0.1)  # carried by no checkpoint: the sync appends the file
    assert ckpt.sync(10) == []
    assert after_a_kill(4) == [0, 1, 2, 3, 4]
    ckpt.save(5, state_at(5), metrics={"loss": 0.05})
    assert ckpt.sync(10) == []
    assert after_a_kill(5) == [0, 1, 2, 3, 4, 5]
    assert len(parse_records(revision.read_bytes())[0]) == 5  # step 5 is carried only
    ckpt.close()  # the file itself is brought up to date
    assert [r["step"] for r in parse_records(revision.read_bytes())[0]] == [0, 1, 2, 3, 4, 5]


def test_torn_append_keeps_the_records_after_it(tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    location = Location(LocalFileSystem(), str(drive), "drive:run")
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")
    ckpt.save(0, state_at(0), metrics={"loss": 1.0})
    assert ckpt.sync(10) == []
    (revision,) = drive.glob("history.*.jsonl")
    with open(revision, "ab") as f:
        f.write(b'{"step": 1, "lo')  # an append cut short by a kill
    ckpt.save(2, state_at(2), metrics={"loss": 0.5})
    ckpt.close()
    assert [r["step"] for r in read_history(location, tmp_path / "vm2")] == [0, 2]


# 2. The lease -----------------------------------------------------------------------------------


def clocked_lease(
    store: Store, clock: list[float], *, owner: str = "me", ttl: float, limit: float = math.inf
) -> Lease:
    """The lease of a writer whose wall clock is *clock*: its sleeps move that clock on, and a
    wait longer than *limit* fails the test instead of running (almost) for ever.

    Example: ``clocked_lease(Store.local_disk(tmp_path), [time.time()], ttl=60).acquire()``."""
    start = clock[0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        assert clock[0] - start <= limit, f"{owner} waited {clock[0] - start:.0f} s"

    return Lease(
        store,
        owner=owner,
        session=owner,
        ttl=ttl,
        takeover=False,
        what="the run",
        now=lambda: clock[0],
        sleep=sleep,
    )


def test_empty_lease_counts_as_held_not_free(tmp_path: Path) -> None:
    (tmp_path / "lease.json").write_bytes(b"")  # caught mid-write by an older version
    clock = [time.time()]
    lease = clocked_lease(Store.local_disk(tmp_path), clock, ttl=3600)
    start = clock[0]
    lease.acquire()  # waits out the unknown holder's ttl (fake time) before taking it
    assert clock[0] - start >= 3600
    assert json.loads((tmp_path / "lease.json").read_text())["owner"] == "me"
    lease.release()


def test_close_after_a_failed_save_releases_the_lease(
    tmp_path: Path, faulty: FailingMountFS
) -> None:
    location = Location(faulty, str(tmp_path / "run"), "run")
    ckpt = cs.Checkpointer(location, every=None)
    ckpt.save(1, state_at(1))
    ckpt.wait()
    faulty.full = True
    ckpt.save(2, state_at(2))
    with pytest.raises(cs.CheckpointError, match="no space left"):
        ckpt.close()
    faulty.full = False
    assert not (tmp_path / "run" / "lease.json").exists()
    with cs.Checkpointer(location, every=None) as again:  # no LeaseError naming our own pid
        again.save(3, state_at(3))


def test_full_disk_at_the_first_save_is_a_clear_error(
    tmp_path: Path, faulty: FailingMountFS
) -> None:
    faulty.full = True
    location = Location(faulty, str(tmp_path / "run"), "run")
    ckpt = cs.Checkpointer(location, every=None)
    with pytest.raises(cs.CheckpointError, match=r"free disk space|no space left"):
        ckpt.save(1, state_at(1))
    ckpt.close()
    assert not (tmp_path / "run" / "lease.json").exists()  # no 0-byte lease left behind


# 3. A stuck mount or a silent API server delays replication only --------------------------------


def test_stuck_mount_never_blocks_saving_or_restoring(
    tmp_path: Path, faulty: FailingMountFS, caplog: pytest.LogCaptureFixture
) -> None:
    location = Location(faulty, str(tmp_path / "drive"), "drive:run")
    options: dict[str, Any] = {"every": None, "local_dir": tmp_path / "local"}
    options.update(timeout=0.3, close_timeout=0.5)
    ckpt = cs.Checkpointer(location, **options)
    ckpt.save(1, state_at(1))
    assert ckpt.sync(10) == []
    faulty.hang.set()  # the mount stops answering
    with caplog.at_level(logging.WARNING, "colabsession"):
        in_thread(lambda: ckpt.save(2, state_at(2), metrics={"loss": 0.5}))
        in_thread(ckpt.wait)
        assert 2 in ckpt_steps(tmp_path / "local")  # the local commit happened
        restored = in_thread(ckpt.restore)
        assert restored is not None
        assert restored.step == 2  # from the local copy
        in_thread(ckpt.close)
        # A fresh Checkpointer on the stuck location: the first save does not hang either.
        other = cs.Checkpointer(location, **{**options, "local_dir": tmp_path / "local2"})
        in_thread(lambda: other.save(1, state_at(1)))
        in_thread(other.close)
    assert "NOT on drive:run" in caplog.text
    assert "[2]" in caplog.text
    faulty.hang.clear()
    faulty.released.set()


def test_silent_drive_api_server_bounds_restore(tmp_path: Path) -> None:
    pytest.importorskip("pydrive2")

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections, never answers
    try:
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}/"
        fs = cs.drive.connect(
            credentials=user_credentials(),
            api_endpoint=endpoint,
            use_for_drive=False,
            timeout=0.5,  # the folder check gives up: connected all the same
        )
        location = Location(fs, f"{fs.root}/run", "drive:run (Drive API)")
        ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "local", timeout=0.5)
        assert in_thread(ckpt.restore) is None
        ckpt.close()
    finally:
        server.close()


def test_drive_api_round_trip(tmp_path: Path, drive_api: Any) -> None:
    fs = drive_api
    location = Location(fs, f"{fs.root}/checkpoints/run", "drive:checkpoints/run (Drive API)")
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=2) as ckpt:
        for step in range(4):
            ckpt.save(step, state_at(step), metrics={"loss": 1.0 / (step + 1)})
    assert steps_in(fs.ls(location.path, detail=False)) == [2, 3]
    fresh = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2")
    restored = fresh.restore()
    assert restored is not None
    assert restored.step == 3
    assert restored.where.startswith("drive:checkpoints/run (Drive API)")
    assert [r["step"] for r in read_history(location, tmp_path / "vm2")] == [0, 1, 2, 3]
    fresh.close()


# 5, 6. Every dtype round-trips; reserved keys are escaped ---------------------------------------


def test_every_dtype_and_structure_round_trips(tmp_path: Path) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    kinds = [
        ml_dtypes.bfloat16,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e5m2,
        ml_dtypes.int4,
        np.float16,
        np.complex128,
        np.bool_,
        np.uint64,
        "datetime64[ms]",
        "<U4",
        ">i4",
    ]
    arrays = {str(np.dtype(k)): np.arange(6).astype(k).reshape(2, 3) for k in kinds}
    state = {
        "arrays": arrays,
        "scalar": np.float64(2.5),
        "zero-d": np.array(3, np.int32),
        "empty": np.zeros((0, 4), np.float32),
        "strided": np.arange(20, dtype=np.float32)[::3],
        "tuple": (1, "two", None),
        "int keys": {0: {"exp_avg": np.ones(2)}, 7: "x"},
        "$a": 0,
        "$$dollars": {"$t": [1, 2]},
        "__colabsession_array__": "a user key",
        "nan": float("nan"),
    }
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(1, state)
    restored = cs.Checkpointer(tmp_path).restore()
    assert restored is not None
    got = restored.state
    for name, array in arrays.items():
        assert got["arrays"][name].dtype == array.dtype, name
        np.testing.assert_array_equal(got["arrays"][name].view(np.uint8), array.view(np.uint8))
    assert isinstance(got["scalar"], np.float64) and got["scalar"] == 2.5  # noqa: PT018
    assert got["zero-d"].shape == () and got["zero-d"].dtype == np.int32  # noqa: PT018
    assert got["empty"].shape == (0, 4)
    np.testing.assert_array_equal(got["strided"], np.arange(20, dtype=np.float32)[::3])
    assert got["tuple"] == (1, "two", None)
    assert set(got["int keys"]) == {0, 7}
    np.testing.assert_array_equal(got["int keys"][0]["exp_avg"], np.ones(2))
    assert got["$a"] == 0
    assert got["$$dollars"] == {"$t": [1, 2]}
    assert got["__colabsession_array__"] == "a user key"
    assert np.isnan(got["nan"])
    got["arrays"]["float16"][0, 0] = 9  # writable, as the user's own arrays were


# 7. keep_best never keeps NaN as best -----------------------------------------------------------


def test_keep_best_ranks_nan_last(tmp_path: Path) -> None:
    losses = [0.5, float("nan"), 0.9, 0.8]
    with cs.Checkpointer(tmp_path, every=None, keep_last=1, keep_best=1) as ckpt:
        for step, loss in enumerate(losses):
            ckpt.save(step, state_at(step), metrics={"loss": loss})
    assert ckpt_steps(tmp_path) == [0, 3]


# 8. Saving after restoring an older step abandons the newer ones --------------------------------


@pytest.mark.parametrize("mirrored", [False, True], ids=["direct", "mirrored"])
def test_branch_after_restoring_an_older_step(tmp_path: Path, mirrored: bool) -> None:
    drive = tmp_path / "drive"
    location: Any = Location(LocalFileSystem(), str(drive), "drive:run") if mirrored else drive
    local: dict[str, Any] = {"local_dir": tmp_path / "local"} if mirrored else {}
    with cs.Checkpointer(location, every=None, keep_last=3, **local) as ckpt:
        for step in (5, 10, 15):
            ckpt.save(step, state_at(step), metrics={"loss": float(step)})
    ckpt = cs.Checkpointer(location, every=None, keep_last=3, **local)
    restored = ckpt.restore(step=10)
    assert restored is not None
    ckpt.save(11, state_at(11), metrics={"loss": 11.0})
    ckpt.save(12, state_at(12), metrics={"loss": 12.0})
    ckpt.close()
    again = cs.Checkpointer(location, every=None, **local).restore()
    assert again is not None
    assert again.step == 12  # never 15, from the abandoned branch
    assert ckpt_steps(drive) == [10, 11, 12]  # 15 set aside, not kept in place of 10
    assert [p.name.split(".")[0] for p in drive.glob("parked-ckpt-*")] == [
        "parked-ckpt-000000000015"
    ]
    assert [r["step"] for r in read_history(location, **local)] == [5, 10, 11, 12]
    local_dir = Path(local.get("local_dir", drive))
    parked = [p.read_text() for p in local_dir.glob("parked-history.*.jsonl")]
    assert len(parked) == 1  # the abandoned branch's history is set aside too, never lost
    assert '"step": 15' in parked[0]


# 9. A lost lease stops every write at once ------------------------------------------------------


def test_lost_lease_stops_log_and_metrics_at_once(tmp_path: Path) -> None:
    first = cs.Checkpointer(tmp_path, every=None, every_steps=100)
    first.save(1, state_at(1), metrics={"loss": 1.0})
    first.wait()
    taker = cs.Checkpointer(tmp_path, every=None, takeover=True)
    taker.save(2, state_at(2), metrics={"loss": 0.5})
    taker.wait()
    with pytest.raises(cs.LeaseError, match="taken over"):
        first.log(3, loss=0.4)
    with pytest.raises(cs.LeaseError, match="taken over"):
        first.maybe_save(4, state_at(4), metrics={"loss": 0.3})
    first.close()
    taker.close()
    records = read_history(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5)]


# 10. Steps -------------------------------------------------------------------------------------


def test_integer_like_steps_are_taken_and_others_refused_at_once(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(np.int64(100), state_at(1))
        ckpt.wait()
        for bad in (True, 1.0, -1, "3", np.float32(2)):
            with pytest.raises(cs.ConfigError, match="step"):
                ckpt.save(bad, state_at(1))  # type: ignore[arg-type]
    assert cs.Checkpointer(tmp_path).steps() == [100]


# 11, 12. The history's own faults ---------------------------------------------------------------


def test_invalid_utf8_in_the_history_is_skipped(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(1, state_at(1), metrics={"loss": 1.0})
    with open(tmp_path / "history.jsonl", "ab") as f:
        f.write(b'{"step": 2, "loss": "\xff"}\n')
    assert [r["step"] for r in read_history(tmp_path)] == [1]
    cs.history(tmp_path)
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.log(3, loss=0.5)
        ckpt.save(3, state_at(3), metrics={"acc": 0.9})
    assert [r["step"] for r in read_history(tmp_path)] == [1, 3]


def test_metrics_may_not_take_the_records_own_names(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        for name in ("step", "time", "session"):
            with pytest.raises(cs.ConfigError, match=f"may not be called '{name}'"):
                ckpt.log(1, **{name: 1.0})
            with pytest.raises(cs.ConfigError, match=name):
                ckpt.save(1, state_at(1), metrics={name: 1.0})
    assert ckpt_steps(tmp_path) == []


# 13. A normal exit saves the tail of the run -----------------------------------------------------


def test_leaving_with_normally_saves_the_last_state(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every="10min") as ckpt:
        for step in range(5):
            ckpt.maybe_save(step, lambda step=step: state_at(step), metrics={"loss": 1.0})
    assert cs.Checkpointer(tmp_path).steps() == [0, 4]  # the first step's save, and the exit's


def test_an_error_in_the_loop_saves_nothing(tmp_path: Path) -> None:
    def train() -> None:
        with cs.Checkpointer(tmp_path, every="10min") as ckpt:
            for step in range(5):
                ckpt.maybe_save(step, state_at(step))
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        train()
    assert cs.Checkpointer(tmp_path).steps() == [0]  # the first step's save only, none at exit


# 14. One rule for run names and locations ---------------------------------------------------------


def test_one_rule_for_run_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from colabsession._runtime.runtime import default_drive_root

    monkeypatch.chdir(tmp_path)
    runs = default_drive_root() / "checkpoints"
    assert cs.Checkpointer("my-run").location.path == str(runs / "my-run")
    assert cs.Checkpointer("exp/v2").location.path == str(runs / "exp" / "v2")
    assert cs.Checkpointer("./exp").location.path == str(tmp_path / "exp")
    assert cs.Checkpointer(tmp_path / "p").location.path == str(tmp_path / "p")
    assert cs.Checkpointer("drive:other/x").location.path == str(default_drive_root() / "other/x")
    for bad in ("", "a/../b", "a\\b"):
        with pytest.raises(cs.ConfigError, match="run name"):
            cs.Checkpointer(bad)
    with cs.Checkpointer("my-run", every=None) as ckpt:
        ckpt.save(1, state_at(1), metrics={"loss": 1.0})
    from colabsession._cli import main

    assert main(["ckpt", "list", "my-run"]) == 0
    assert not (tmp_path / "my-run").exists()  # never the working folder
    assert [r["step"] for r in read_history("my-run")] == [1]


# 15. Every error is a ColabSessionError that says what to do --------------------------------------


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = cs.Checkpointer(Path("/proc/no-such-place/run"), every=None)
    with pytest.raises(cs.CheckpointError, match="cannot write"):
        ckpt.save(1, state_at(1))
    ckpt.close()


def test_eio_on_the_location_is_reported_not_raised(
    tmp_path: Path, faulty: FailingMountFS, caplog: pytest.LogCaptureFixture
) -> None:
    location = Location(faulty, str(tmp_path / "drive"), "drive:run")
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "local", close_timeout=5)
    faulty.eio = True
    with caplog.at_level(logging.WARNING, "colabsession"):
        ckpt.save(1, state_at(1))
        assert ckpt.sync(5) == [1]
        faulty.eio = False
        ckpt.save(2, state_at(2))
        assert ckpt.sync(5) in ([], [1, 2])  # caught up, or waiting out its pause
    ckpt.close()
    assert "Input/output error" in caplog.text


def test_memory_location_keeps_nothing_torn(tmp_path: Path) -> None:
    """Every file at the location is either a whole checkpoint, the history, or parked."""
    location = f"memory://{tmp_path.name}/run"
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=2) as ckpt:
        for step in range(6):
            ckpt.save(step, state_at(step), metrics={"loss": 1.0})
    fs = MemoryFileSystem()
    for path in fs.ls(f"/{tmp_path.name}/run", detail=False):
        name = path.rsplit("/", 1)[-1]
        if _layout.parse_name(name) is not None:
            data = fs.cat_file(path)
            assert data[-8:] == _layout.MAGIC
        else:
            assert name.startswith("history.")
            assert json.loads(fs.cat_file(path).split(b"\n")[0])["kind"] == "colabsession-history"
