from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import colabsession as cs
from colabsession._core.optional import installed
from colabsession._storage import layout as _layout
from colabsession._storage.history import read_history
from colabsession._storage.store import Store
from colabsession.drive import Location


def state_at(step: int, size: int = 10) -> dict[str, Any]:
    return {
        "model": {"w": np.full((size,), step, np.float32), "b": np.arange(3) + step},
        "optimizer": [np.float64(step / 2), np.array([[step]], np.int8)],
        "epoch": step // 4,
        "name": "run",
        "lr": 1e-3,
        "nothing": None,
        "inf": float("inf"),
    }


def assert_state(state: Any, step: int) -> None:
    np.testing.assert_array_equal(state["model"]["w"], np.full((10,), step, np.float32))
    assert state["model"]["w"].dtype == np.float32
    np.testing.assert_array_equal(state["model"]["b"], np.arange(3) + step)
    assert float(state["optimizer"][0]) == step / 2
    assert state["optimizer"][1].dtype == np.int8
    assert state["epoch"] == step // 4
    assert (state["name"], state["lr"], state["nothing"]) == ("run", 1e-3, None)
    assert state["inf"] == float("inf")


def steps_in(names: Any) -> list[int]:
    """The steps of the checkpoint files among *names* (paths or names)."""
    found = (_layout.parse_name(str(n).rstrip("/").rsplit("/", 1)[-1]) for n in names)
    return sorted(step for step in found if step is not None)


def ckpt_steps(path: Path) -> list[int]:
    return steps_in(p.name for p in path.iterdir())


def ckpt_file(path: Path, step: int) -> Path:
    (found,) = path.glob(f"ckpt-{step:012d}.*.ckpt")
    return found


class FakeClock(cs.SessionClock):
    def __init__(self, remaining: float) -> None:
        self.now_value = 0.0
        super().__init__(started=0.0, max_session=remaining, _now=lambda: self.now_value)


class FlakyFS(MemoryFileSystem):  # type: ignore[misc]
    """An in-memory "Drive" whose mount can drop."""

    protocol = "flaky"
    cachable = False
    broken = False

    def _check(self) -> None:
        if self.broken:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def __getattribute__(self, name: str) -> Any:
        if name in ("ls", "cat_file", "pipe_file", "put_file", "makedirs", "rm_file", "rm", "info"):
            object.__getattribute__(self, "_check")()
        return object.__getattribute__(self, name)


# Saving and restoring -----------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path / "run", every=None, async_save=False) as ckpt:
        assert ckpt.restore() is None
        ckpt.save(7, state_at(7), metrics={"loss": np.float32(0.5), "acc": 0.9})
    restored = cs.Checkpointer(tmp_path / "run").restore()
    assert restored is not None
    assert restored.step == 7
    assert_state(restored.state, 7)
    assert restored.metrics == {"loss": 0.5, "acc": 0.9}
    assert restored.session
    (info,) = cs.Checkpointer(tmp_path / "run").checkpoints()
    assert (info.step, info.metrics) == (7, {"loss": 0.5, "acc": 0.9})
    assert ckpt_file(tmp_path / "run", 7).read_bytes()[-8:] == _layout.MAGIC
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_async_save_copies_the_state(tmp_path: Path) -> None:
    ckpt = cs.Checkpointer(tmp_path / "run", every=None)
    state = state_at(1)
    ckpt.save(1, state)
    state["model"]["w"][:] = 99  # the caller goes on training in place
    ckpt.close()
    restored = cs.Checkpointer(tmp_path / "run").restore()
    assert restored is not None
    assert_state(restored.state, 1)


def test_newest_valid_wins_and_explicit_step(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None, keep_last=5) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state_at(step))
    ckpt = cs.Checkpointer(tmp_path)
    assert ckpt.steps() == [1, 2, 3]
    assert ckpt.latest_step() == 3
    restored = ckpt.restore(step=2)
    assert restored is not None
    assert_state(restored.state, 2)
    with pytest.raises(cs.CheckpointError, match=r"no checkpoint of step 9.*\[1, 2, 3\]"):
        ckpt.restore(step=9)


def test_same_step_saved_twice_is_replaced(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(5, state_at(5))
        ckpt.save(5, state_at(6))
    restored = cs.Checkpointer(tmp_path).restore()
    assert restored is not None
    assert_state(restored.state, 6)
    assert ckpt_steps(tmp_path) == [5]


def test_bad_state_is_a_clear_error(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        with pytest.raises(cs.CheckpointError, match=r"state\['model'\] is a object"):
            ckpt.save(1, {"model": object()})
        with pytest.raises(cs.CheckpointError, match="keys must be strings or integers"):
            ckpt.save(1, {(1, 2): np.zeros(2)})
        with pytest.raises(cs.CheckpointError, match="without pickle"):
            ckpt.save(1, {"x": np.array([{}, 1], dtype=object)})
    with pytest.raises(cs.ConfigError):
        cs.Checkpointer(tmp_path, keep_last=0)


# Damaged checkpoints --------------------------------------------------------------------------


@pytest.fixture
def three(tmp_path: Path) -> Path:
    with cs.Checkpointer(tmp_path, every=None, keep_last=5) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state_at(step))
    return tmp_path


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_manifest(path: Path, change: Any) -> None:
    """Replace the manifest of a checkpoint file by ``change(dict)``, keeping the file valid
    otherwise (a well-formed but wrong manifest, as a hostile writer on Drive could make)."""
    import struct

    data = path.read_bytes()
    length, _, magic = _layout.TRAILER.unpack(data[-_layout.TRAILER.size :])
    start = len(data) - _layout.TRAILER.size - length
    manifest = json.loads(data[start : start + length])
    body = json.dumps(change(manifest)).encode()
    crc = cs_crc(body)
    path.write_bytes(data[:start] + body + struct.pack("<QI8s", len(body), crc, magic))


def cs_crc(data: bytes) -> int:
    from colabsession._storage.serialize import crc32c

    return crc32c(data)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: _truncate(f, 100),
        lambda f: _truncate(f, f.stat().st_size - 3),
        lambda f: _flip(f, 10),
        lambda f: _flip(f, f.stat().st_size - 30),
        lambda f: f.write_bytes(b""),
        lambda f: _rewrite_manifest(f, lambda m: {**m, "step": 2}),
        lambda f: _rewrite_manifest(f, lambda m: {k: v for k, v in m.items() if k != "tree"}),
        lambda f: _rewrite_manifest(f, lambda m: {**m, "arrays": {"renamed": m["arrays"]}}),
        lambda f: _rewrite_manifest(f, lambda m: {**m, "tree": {"$a": 99}}),
        lambda f: _rewrite_manifest(f, lambda m: {**m, "version": 99}),
        lambda f: _rewrite_manifest(f, lambda m: [m]),
        lambda f: _rewrite_manifest(f, lambda m: None),
        lambda f: _rewrite_manifest(
            f, lambda m: {**m, "arrays": [{**a, "dtype": "O"} for a in m["arrays"]]}
        ),
        lambda f: _rewrite_manifest(
            f, lambda m: {**m, "arrays": [{**a, "offset": -64} for a in m["arrays"]]}
        ),
    ],
    ids=[
        "truncated",
        "trailer-cut",
        "bit-flipped-array",
        "bit-flipped-manifest",
        "empty",
        "step-differs-from-name",
        "missing-field",
        "wrong-type",
        "array-out-of-range",
        "newer-format",
        "a-list",
        "null",
        "object-dtype",
        "negative-offset",
    ],
)
def test_damaged_newest_is_skipped_with_a_warning(
    three: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    damage(ckpt_file(three, 3))
    with caplog.at_level(logging.WARNING, "colabsession"):
        restored = cs.Checkpointer(three).restore()
    assert restored is not None
    assert restored.step == 2
    assert_state(restored.state, 2)
    assert "skipping checkpoint" in caplog.text
    with pytest.raises(cs.CheckpointError, match="step 3"):
        cs.Checkpointer(three).restore(step=3)
    from colabsession._cli import main

    assert main(["ckpt", "verify", str(three)]) == 1  # never a KeyError
    assert main(["ckpt", "list", str(three)]) == 0


def test_verify_reports_damage(three: Path) -> None:
    _flip(ckpt_file(three, 2), 5)
    results = cs.Checkpointer(three).verify()
    assert [(step, problem is None) for step, _, problem in results] == [
        (1, True),
        (2, False),
        (3, True),
    ]
    assert "checksum" in (results[1][2] or "")
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1], cs.CheckpointStatus)
    assert results[1].step == 2
    assert results[1].where.endswith(ckpt_file(three, 2).name)
    assert "checksum" in (results[1].problem or "")


# Retention ------------------------------------------------------------------------------------


def test_keep_last(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None, keep_last=2) as ckpt:
        for step in range(6):
            ckpt.save(step, state_at(step))
    assert ckpt_steps(tmp_path) == [4, 5]


def test_keep_best(tmp_path: Path) -> None:
    losses = [0.9, 0.2, 0.5, 0.7, 0.8, 0.6]
    with cs.Checkpointer(tmp_path, every=None, keep_last=2, keep_best=1) as ckpt:
        for step, loss in enumerate(losses):
            ckpt.save(step, state_at(step), metrics={"loss": loss})
    assert ckpt_steps(tmp_path) == [1, 4, 5]


def test_keep_best_max_mode(tmp_path: Path) -> None:
    with cs.Checkpointer(
        tmp_path, every=None, keep_last=1, keep_best=1, monitor="acc", mode="max"
    ) as ckpt:
        for step, acc in enumerate([0.5, 0.9, 0.7]):
            ckpt.save(step, state_at(step), metrics={"acc": acc})
    assert ckpt_steps(tmp_path) == [1, 2]


def test_keep_every(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None, keep_last=1, keep_every="1h") as ckpt:
        for step in range(4):
            ckpt.save(step, state_at(step))
    kept = ckpt_steps(tmp_path)
    assert 0 in kept  # the first of its hour
    assert 3 in kept  # the newest
    assert len(kept) <= 3


# Local first, the location second -------------------------------------------------------------


def test_remote_location_and_fresh_machine(tmp_path: Path) -> None:
    location = f"memory://{tmp_path.name}/run"
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1") as ckpt:
        for step in (1, 2):
            ckpt.save(step, state_at(step), metrics={"loss": 1.0 / step})
    fs = MemoryFileSystem()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"/{tmp_path.name}/run", detail=False))
    assert steps_in(names) == [1, 2]
    # One history revision per upload: one or two, depending on whether the background
    # replication of step 1 finished before step 2 was saved (the one before stays as a fallback).
    others = [n for n in names if not n.startswith("ckpt-")]
    assert others in (["history.000001.jsonl"], ["history.000001.jsonl", "history.000002.jsonl"])
    # A new runtime: empty local disk; the checkpoint comes from the location.
    fresh = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2")
    restored = fresh.restore()
    assert restored is not None
    assert restored.step == 2
    assert restored.where.startswith("memory://")
    (listed,) = [c for c in fresh.checkpoints() if c.step == 2]
    assert isinstance(listed, cs.CheckpointInfo)
    assert listed.where == restored.where
    with pytest.warns(DeprecationWarning, match="Checkpoint.where"):
        assert restored.source == restored.where
    assert_state(restored.state, 2)
    assert [r["step"] for r in read_history(location, tmp_path / "vm2")] == [1, 2]


def test_dropped_location_keeps_training_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fs = FlakyFS()
    location = Location(fs, f"/{tmp_path.name}/run", "flaky-drive:run")
    ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "local", keep_last=5)
    ckpt.save(1, state_at(1))
    assert ckpt.sync(timeout=10) == []  # on the location
    FlakyFS.broken = True
    try:
        with caplog.at_level(logging.WARNING, "colabsession"):
            ckpt.save(2, state_at(2))
            ckpt.wait()  # training goes on: no exception
            assert ckpt.sync(timeout=10) == [2]  # the replicator failed and said so
        assert "NOT yet on flaky-drive:run" in caplog.text
        assert "cs.drive.ensure()" in caplog.text
        assert 2 in ckpt_steps(tmp_path / "local")
        restored = ckpt.restore()  # the location is down: the local copy serves
        assert restored is not None
        assert restored.step == 2
    finally:
        FlakyFS.broken = False
    ckpt.save(3, state_at(3))
    ckpt.close()
    assert steps_in(fs.ls(location.path, detail=False)) == [1, 2, 3]


def test_remote_trailer_is_the_commit_marker(tmp_path: Path) -> None:
    location = f"memory://{tmp_path.name}/run"
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1") as ckpt:
        ckpt.save(1, state_at(1))
        ckpt.save(2, state_at(2))
    fs = MemoryFileSystem()
    path = next(p for p in fs.ls(f"/{tmp_path.name}/run", detail=False) if "000002." in p)
    fs.pipe_file(path, fs.cat_file(path)[:-40])  # upload cut short
    restored = cs.Checkpointer(location, local_dir=tmp_path / "vm2").restore()
    assert restored is not None
    assert restored.step == 1


# When to save -------------------------------------------------------------------------------


def test_every_steps(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None, every_steps=3, keep_last=10) as ckpt:
        saved = [step for step in range(10) if ckpt.maybe_save(step, state_at(step))]
    assert saved == [2, 5, 8]


def test_every_interval(tmp_path: Path) -> None:
    now = [0.0]
    ckpt = cs.Checkpointer(tmp_path, every="5min", async_save=False, _monotonic=lambda: now[0])
    saved = []
    for step in range(120):  # a step every 10 s
        now[0] = 10.0 * step
        if ckpt.maybe_save(step, state_at(step)):
            saved.append(now[0])
    ckpt.close()
    # At once, then as long as the run had gone on (at least 30 s), then every 5 minutes.
    assert saved == [0, 30, 60, 120, 240, 480, 780, 1080]


def test_a_short_run_is_saved_early_and_a_resume_waits_its_interval(tmp_path: Path) -> None:
    """A notebook run shorter than ``every`` and killed before its end has checkpoints to
    resume from (issue 21.3); a resumed run does not save again at its first step."""
    now = [0.0]
    ckpt = cs.Checkpointer(tmp_path, _monotonic=lambda: now[0])  # every="10min", the default
    for step in range(41):  # 41 epochs of 5 s each, then the runtime dies
        now[0] = 5.0 * step
        ckpt.maybe_save(step, state_at(step))
    ckpt.wait()
    again = cs.Checkpointer(tmp_path, _monotonic=lambda: now[0])
    restored = again.restore()
    assert restored is not None
    assert restored.step >= 20  # not started over: at most about half the work is lost
    assert not again.maybe_save(restored.step + 1, state_at(restored.step + 1))
    again.close()


def test_deadline_forces_a_final_save_and_stop(tmp_path: Path) -> None:
    clock = FakeClock(remaining=3600)
    ckpt = cs.Checkpointer(tmp_path, every=None, clock=clock, margin_floor="2min")
    assert not ckpt.maybe_save(0, state_at(0))
    clock.now_value = 3600 - 200
    assert not ckpt.maybe_save(1, state_at(1))
    clock.now_value = 3600 - 100  # inside the 2 min margin
    assert ckpt.maybe_save(2, state_at(2))
    assert ckpt.should_stop
    assert not ckpt.maybe_save(3, state_at(3))  # no saves after the final one
    ckpt.close()
    assert cs.Checkpointer(tmp_path).latest_step() == 2


def test_margin_grows_with_slow_saves(tmp_path: Path) -> None:
    ckpt = cs.Checkpointer(tmp_path, every=None, margin_floor=1)
    ckpt.save_policy.took(40.0)
    assert ckpt.margin == pytest.approx(120.0)
    ckpt.close()


def test_keyboard_interrupt_saves_the_last_state(tmp_path: Path) -> None:
    def train() -> None:
        with cs.Checkpointer(tmp_path, every=None) as ckpt:
            for step in range(5):
                ckpt.maybe_save(step, state_at(step))
                if step == 3:
                    raise KeyboardInterrupt  # the notebook's stop button

    with pytest.raises(KeyboardInterrupt):
        train()
    assert cs.Checkpointer(tmp_path).latest_step() == 3


def test_sigterm_saves_at_the_next_step_and_stops(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        assert not ckpt.maybe_save(0, state_at(0))
        os.kill(os.getpid(), signal.SIGTERM)
        assert ckpt.maybe_save(1, state_at(1))
        assert ckpt.should_stop
    assert signal.getsignal(signal.SIGTERM) == previous
    assert cs.Checkpointer(tmp_path).latest_step() == 1


# One writer per run ---------------------------------------------------------------------------


def test_second_writer_is_refused(tmp_path: Path) -> None:
    first = cs.Checkpointer(tmp_path, every=None, lease_ttl=0.6)
    first.save(1, state_at(1))
    first.wait()
    second = cs.Checkpointer(tmp_path, every=None)
    with pytest.raises(cs.LeaseError, match=r"another notebook.*takeover=True") as refused:
        second.save(2, state_at(2))
    assert refused.value.holder == f"host {socket.gethostname()}, pid {os.getpid()}"
    assert refused.value.run == str(tmp_path)
    taker = cs.Checkpointer(tmp_path, every=None, takeover=True)
    taker.save(2, state_at(2))
    taker.wait()
    with pytest.raises(cs.LeaseError, match="taken over") as lost:  # a stat of the lease: at once
        first.save(3, state_at(3))
    assert lost.value.holder is not None
    assert lost.value.run == str(tmp_path)
    assert cs.Checkpointer(tmp_path).steps() == [1, 2]  # the usurped writer wrote nothing
    taker.close()
    with cs.Checkpointer(tmp_path, every=None) as last:  # released on close
        last.save(4, state_at(4))


def test_silent_writer_loses_the_lease(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from colabsession._storage.lease import LeaseRecord

    with cs.Checkpointer(tmp_path, every=None) as first:
        first.save(1, state_at(1))
    # A writer on another VM whose runtime died just after a heartbeat: its lease stays.
    silent = LeaseRecord(
        owner="gone", host="another-vm", pid=412, session="s", heartbeat=time.time(), ttl=0.6
    )
    (tmp_path / "lease.json").write_bytes(silent.to_json())
    second = cs.Checkpointer(tmp_path, every=None, lease_ttl=0.6)
    second.save(2, state_at(2))  # waits for the silent lease to expire, then writes
    second.close()
    assert "waiting up to" in capsys.readouterr().out
    assert cs.Checkpointer(tmp_path).steps() == [1, 2]


def test_crashed_kernel_on_this_machine_releases_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from colabsession._storage.lease import LeaseRecord

    lease = LeaseRecord(
        owner="gone",
        host=__import__("socket").gethostname(),
        pid=2**22 + 12345,
        session="s",
        heartbeat=time.time(),
        ttl=5,  # short, so that a regression costs seconds, not the suite
    )
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "lease.json").write_bytes(lease.to_json())
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(1, state_at(1))
    # No wait: the lease names a process of this machine that no longer exists.
    assert "waiting up to" not in capsys.readouterr().out


# History -------------------------------------------------------------------------------------


def test_history_is_continuous_after_a_resume(tmp_path: Path) -> None:
    first = cs.Checkpointer(tmp_path, every=None, every_steps=2)
    for step in range(6):
        first.maybe_save(step, state_at(step), metrics={"loss": 10.0 - step})
    first.log(6, loss=4.0, val_loss=4.5)
    first.wait()  # killed here: steps 1, 3, 5 saved, history runs to 6
    assert [r["step"] for r in read_history(tmp_path)] == [0, 1, 2, 3, 4, 5, 6]

    # The next notebook takes over the lease the killed one never released.
    second = cs.Checkpointer(tmp_path, every=None, every_steps=2, takeover=True)
    restored = second.restore()
    assert restored is not None
    assert restored.step == 5
    for step in range(6, 8):
        second.maybe_save(step, state_at(step), metrics={"loss": 10.0 - step})
    second.close()
    records = read_history(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 6, 7]  # step 6 once
    assert records[6]["loss"] == 4.0 and "val_loss" not in records[6]  # noqa: PT018
    assert all({"step", "time", "session", "loss"} <= set(r) for r in records)


def test_log_and_save_of_one_step_make_one_record(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.log(1, val_loss=0.3)
        ckpt.save(1, state_at(1), metrics={"loss": 0.2})
    (record,) = read_history(tmp_path)
    assert (record["loss"], record["val_loss"]) == (0.2, 0.3)


def test_cs_history_and_plot(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None, every_steps=1) as ckpt:
        for step in range(3):
            ckpt.maybe_save(step, state_at(step), metrics={"loss": 1.0 / (step + 1)})
    found = cs.history(tmp_path)
    assert isinstance(found, cs.History)
    assert [r["step"] for r in found] == [0, 1, 2]
    assert found.column("step") == [0, 1, 2]
    assert [r["step"] for r in found.rows] == [0, 1, 2]
    assert found.metrics == ["loss"]
    assert found[-1]["loss"] == pytest.approx(1 / 3)
    assert len(found) == 3
    assert "3 records" in repr(found)
    if installed("pandas"):
        frame = found.to_pandas()
        assert list(frame["step"]) == [0, 1, 2]
        assert str(frame["time"].dtype).startswith("datetime64")
        # The DataFrame it returned before 1.0, for a release: its columns and methods warn.
        with pytest.warns(DeprecationWarning, match=r"to_pandas\(\)\['step'\]"):
            assert list(found["step"]) == [0, 1, 2]
        with pytest.warns(DeprecationWarning, match=r"to_pandas\(\)\.columns"):
            assert "loss" in found.columns
        with pytest.raises(AttributeError):
            found.no_such_attribute  # noqa: B018
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    axes = cs.plot_history(tmp_path)
    assert [a.get_ylabel() for a in axes] == ["loss"]
    assert [line.get_label() for line in axes[0].get_lines()] == ["training"]


# Killed at random instants -------------------------------------------------------------------


@pytest.mark.parametrize("mirror", [False, True], ids=["direct", "local-then-location"])
def test_sigkill_at_random_instants_never_loses_the_last_checkpoint(
    tmp_path: Path, mirror: bool
) -> None:
    rng = random.Random(1234)
    location = tmp_path / "drive" / "run"
    extra = [str(tmp_path / "local")] if mirror else []
    worker = str(Path(__file__).with_name("ckpt_worker.py"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    newest = -1
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, worker, str(location), *extra],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("started")
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        reader = cs.Checkpointer(location, every=None, local_dir=extra[0] if extra else None)
        restored = reader.restore()
        if restored is None:
            # Killed before its first save was committed (an fsync on a busy disk can take longer
            # than the pause): allowed only while nothing was ever committed.
            assert newest == -1
            continue
        assert restored.step >= newest  # never goes back
        newest = restored.step
        np.testing.assert_array_equal(restored.state["w"], np.full(300_000, restored.step))
        assert restored.state["meta"] == {"step": restored.step}
        # The history (appended locally, appended or rewritten at the location, truncated at
        # each resume) holds every step up to the restored one, once, whatever the kill cut.
        steps = [r["step"] for r in read_history(location, extra[0] if extra else None)]
        assert steps[: restored.step + 1] == list(range(restored.step + 1))
        if extra:  # a new VM, from the location alone: every step up to its newest checkpoint
            there = [e.step for e in Store.local_disk(location).entries(warn=False)]
            alone = [r["step"] for r in read_history(location, tmp_path / "new-vm")]
            if there:
                assert alone[: max(there) + 1] == list(range(max(there) + 1))
    assert newest > 0


# Command line -------------------------------------------------------------------------------


def test_cli(three: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from colabsession._cli import main

    assert main(["ckpt", "list", str(three)]) == 0
    assert "ckpt-000000000003" in capsys.readouterr().out
    assert main(["ckpt", "verify", str(three)]) == 0
    assert capsys.readouterr().out.count(" ok ") == 3
    _flip(ckpt_file(three, 1), 3)
    assert main(["ckpt", "verify", "--json", str(three)]) == 1
    assert json.loads(capsys.readouterr().out)[0]["problem"]
    assert main(["ckpt", "history", str(three)]) == 0
    pytest.importorskip("matplotlib")
    out = tmp_path / "h.png"
    assert main(["ckpt", "plot", str(three), "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_history_is_the_same_type_without_pandas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colabsession._storage import history as history_module

    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.log(1, loss=0.5)
        ckpt.log(2, loss=0.25)
    monkeypatch.setattr(
        history_module, "installed", lambda module: module != "pandas" and installed(module)
    )
    found = cs.history(tmp_path)
    assert isinstance(found, cs.History)
    assert found.column("loss") == [0.5, 0.25]
    with pytest.warns(DeprecationWarning, match="History.column"):
        assert found["loss"] == [0.5, 0.25]  # a column, as the DataFrame gave it
    with pytest.raises(AttributeError):
        found.columns  # noqa: B018


def test_state_given_as_a_function_is_gathered_only_when_saving(tmp_path: Path) -> None:
    calls = []

    def gather() -> dict[str, Any]:
        calls.append(1)
        return state_at(len(calls))

    with cs.Checkpointer(tmp_path, every=None, every_steps=5) as ckpt:
        for step in range(10):
            ckpt.maybe_save(step, gather)
    assert len(calls) == 2


def test_plot_leaves_out_the_epoch_counter(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.log(10, epoch=0, loss=0.5)
        ckpt.log(20, epoch=1, loss=0.25)
    axes = cs.plot_history(tmp_path)
    assert [a.get_ylabel() for a in axes] == ["loss"]
    assert axes[0].get_xlabel() == "epoch"
    assert list(axes[0].get_lines()[0].get_xdata()) == [1, 2]  # as Keras prints "Epoch 1/20"


def test_plot_panels_and_every_resume_marked(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.log(10, epoch=0, loss=0.5, val_loss=0.6, accuracy=0.7, val_accuracy=0.6)
    with cs.Checkpointer(tmp_path, every=None) as ckpt:  # resumed on the same runtime
        ckpt.log(20, epoch=1, loss=0.25, val_loss=0.3, accuracy=0.8, val_accuracy=0.7)
    axes = cs.plot_history(tmp_path)
    assert [a.get_ylabel() for a in axes] == ["loss", "accuracy"]  # loss first
    labels = [line.get_label() for line in axes[0].get_lines()]
    assert labels[:2] == ["training", "validation"]
    marks = [line for line in axes[1].get_lines() if line.get_linestyle() == ":"]
    assert len(marks) == 1  # the resume, in every panel
    assert "resumed" in [t.get_text() for t in axes[0].get_legend().get_texts()]
    epochs = [e for e in cs.history(tmp_path).column("epoch") if e is not None]
    assert epochs == [1, 2]
