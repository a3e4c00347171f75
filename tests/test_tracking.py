"""The history as TensorBoard event files, and one W&B run across sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import colabsession as cs
from colabsession._storage.tracking import EVENTS, WANDB

ROOT = Path(__file__).resolve().parents[1]


def _scalars(logdir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, float]]]:
    # TensorBoard's stand-in for TensorFlow's file API: its reader would import TensorFlow,
    # which only the tests marked tensorflow may do in-process.
    notf = types.ModuleType("tensorboard.compat.notf")
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", notf)
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _train(run: str, steps: range, *, restore: bool = False) -> None:
    with cs.Checkpointer(run, every=None) as ckpt:
        if restore:
            ckpt.restore()
        for step in steps:
            ckpt.log(step, loss=1.0 / (step + 1), epoch=step // 2)
            if step % 2:
                ckpt.save(step, {"step": step}, metrics={"val_loss": 2.0 / (step + 1)})


def test_history_to_tensorboard_reads_back_and_is_regenerated_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "tb" / "my-run"
    _train("my-run", range(4))
    had_tensorflow = "tensorflow" in sys.modules
    path = cs.history("my-run").to_tensorboard(logdir)
    assert ("tensorflow" in sys.modules) == had_tensorflow  # seconds to import, not needed
    assert path == logdir / EVENTS
    first = _scalars(logdir, monkeypatch)
    assert [s for s, _ in first["loss"]] == list(range(4))
    assert [v for _, v in first["loss"]] == pytest.approx([1.0 / (s + 1) for s in range(4)])
    assert [s for s, _ in first["val_loss"]] == [1, 3]
    assert "epoch" not in first
    assert "time" not in first

    # A new session resumes from step 3 and goes on: the file is written again, whole, and
    # TensorBoard reads one file with every step once.
    _train("my-run", range(4, 7), restore=True)
    cs.history("my-run").to_tensorboard(logdir)
    assert sorted(os.listdir(logdir)) == [EVENTS]
    assert [s for s, _ in _scalars(logdir, monkeypatch)["loss"]] == list(range(7))


def test_wandb_id_is_kept_with_the_run_across_runtimes(tmp_path: Path) -> None:
    location = f"memory://{tmp_path.name}/run"
    first = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1")
    run_id = cs.wandb_id(first)
    assert len(run_id) == 8
    assert cs.wandb_id(first) == run_id
    # Another runtime: an empty local disk, the same location.
    assert cs.wandb_id(cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2")) == run_id
    assert cs.wandb_id("other") != run_id


def test_a_damaged_wandb_record_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = cs.wandb_id("r")
    folder = cs.Checkpointer("r", every=None).local_dir
    record = json.loads((folder / WANDB).read_text())
    for bad in ({**record, "id": "../../x"}, {**record, "kind": "other"}, "[1, 2"):
        (folder / WANDB).write_text(bad if isinstance(bad, str) else json.dumps(bad))
        assert cs.wandb_id("r") != run_id
        assert "skipping" in caplog.text
        run_id = json.loads((folder / WANDB).read_text())["id"]


def test_wandb_offline_run_continues_in_a_new_session(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    script = textwrap.dedent(
        """
        import sys
        import colabsession as cs
        wb = cs.wandb_init("my-run", project="p", dir=sys.argv[1], settings={"console": "off"})
        wb.log({"loss": float(sys.argv[2])}, step=int(sys.argv[2]))
        print("ID", wb.id)
        wb.finish()
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
    }
    (tmp_path / "wandb").mkdir()
    ids = []
    for step in (1, 2):  # two sessions: two processes, the same run folder
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "wandb"), str(step)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        ids.append(done.stdout.split("ID ")[1].split()[0])
    assert ids[0] == ids[1]
    runs = sorted(p.name for p in (tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all(name.endswith(f"-{ids[0]}") for name in runs)
