"""cs.hf: a transformers Trainer kept and resumed through colabsession."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import colabsession as cs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from colabsession._storage.history import read_history  # noqa: E402
from colabsession._storage.serialize import FileBytes  # noqa: E402
from colabsession._training import hf  # noqa: E402

WORKER = Path(__file__).with_name("hf_worker.py")


def test_killed_trainer_resumes_bit_identical(tmp_path: Path) -> None:
    """SIGKILL at random steps, each run in a fresh output_dir (as on a new runtime): the final
    weights equal those of a run never killed, and the loss history has every step once."""

    def run(where: str, kill_at: int | None, n: int) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(WORKER), str(tmp_path / where), str(tmp_path / f"out{n}")]
        argv += [str(tmp_path / f"{where}.pt"), str(kill_at) if kill_at else "-"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    reference = run("ref", None, 0)
    assert reference.returncode == 0, reference.stderr[-3000:]
    for n, kill_at in enumerate(sorted(random.Random(3).sample(range(6, 24), 2)), 1):
        killed = run("run", kill_at, n)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    finished = run("run", None, 9)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming" in finished.stdout
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "run.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_history(str(tmp_path / "run"))]
    assert sorted(steps) == list(range(1, 25))


def test_unsafe_names_in_a_checkpoint_are_refused(tmp_path: Path) -> None:
    data = np.zeros(3, np.uint8)
    for name in ("../evil", "/etc/passwd", "a/../../b", "a\\b", "", "./x"):
        state = {"format": hf.FORMAT, "files": {name: data}}
        with pytest.raises(cs.CheckpointError, match="unsafe"):
            hf.write_folder(state, tmp_path / "checkpoint-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounts"]  # (the fixture's)
    with pytest.raises(cs.CheckpointError, match=r"not saved by cs\.hf"):
        hf.write_folder({"w": data}, tmp_path / "checkpoint-1")


def test_a_folder_roundtrips_and_replaces_a_torn_one(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "sub" / "rng.pth").write_bytes(b"")
    target = tmp_path / "out" / "checkpoint-5"
    target.mkdir(parents=True)
    (target / "torn").write_bytes(b"cut short")
    hf.write_folder(hf.read_folder(source), target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "model.safetensors",
        "sub",
        "sub/rng.pth",
    ]
    assert sorted(p.name for p in target.parent.iterdir()) == ["checkpoint-5"]


def test_a_save_hands_the_folder_over_by_links_and_outlives_its_rotation(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "checkpoint-7"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 1000)
    (folder / "sub" / "rng.pth").write_bytes(b"")
    staging = tmp_path / "out" / hf.STAGING / "7"
    state = hf.hand_over(folder, staging)
    # Nothing read in the training thread: the writer reads the links in the background.
    assert all(isinstance(f, FileBytes) for f in state["files"].values())
    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        shutil.rmtree(folder)  # the Trainer rotating its checkpoints away before the write
        ckpt.save(7, state)
    restored = cs.Checkpointer(tmp_path / "run").restore()
    assert restored is not None
    hf.write_folder(restored.state, folder)
    assert (folder / "model.safetensors").read_bytes() == b"weights" * 1000
    assert (folder / "sub" / "rng.pth").read_bytes() == b""


def test_a_file_rewritten_while_it_is_saved_fails_the_save(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(b"x" * 100)
    state = hf.hand_over(folder, tmp_path / "out" / hf.STAGING / "3")
    (folder / "optimizer.pt").write_bytes(b"y" * 10)  # in place: the same inode as the link
    ckpt = cs.Checkpointer(tmp_path / "run", every=None, async_save=False)
    with pytest.raises(cs.CheckpointError, match="changed while it was saved"):
        ckpt.save(3, state)
    ckpt.close()
    assert cs.Checkpointer(tmp_path / "run").steps() == []


def test_train_refuses_what_cannot_work(tmp_path: Path) -> None:
    class Args:
        output_dir = "/content/drive/MyDrive/out"

    class Trainer:
        args = Args()

    with pytest.raises(cs.ConfigError, match="local folder"):
        hf.train(Trainer(), tmp_path / "run")
    with pytest.raises(cs.ConfigError, match="resume_from_checkpoint"):
        hf.train(Trainer(), tmp_path / "run", resume_from_checkpoint=True)


def test_a_restore_cut_short_is_cleaned_up_and_a_write_fault_is_explained(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for left in (".checkpoint-5.1a2b3c4d.partial", ".checkpoint-5.old-9f8e7d6c"):
        (out / left / "sub").mkdir(parents=True)
    state = {"format": hf.FORMAT, "files": {"model.bin": np.ones(4, np.uint8)}}
    hf.write_folder(state, out / "checkpoint-5")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-5"]

    # A file and a folder of one name (a damaged list), or a full disk: an error that says so.
    clash = {"format": hf.FORMAT, "files": {"a/b": np.ones(1, np.uint8), "a": np.ones(1, np.uint8)}}
    with pytest.raises(cs.CheckpointError, match="cannot write the checkpoint"):
        hf.write_folder(clash, out / "checkpoint-6")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-5"]


def hf_history(tmp_path: Path) -> Path:
    """A run's history as cs.hf logs a Trainer's: a loss every 2 of 6 steps per epoch, an
    evaluation at each epoch's end (with its timing figures), 3 epochs."""

    class State:
        is_world_process_zero = True
        global_step = 0

    state = State()
    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        callback = hf.SessionCallback(ckpt)
        for step in range(1, 19):
            state.global_step = step
            logs: dict[str, float] = {}
            if step % 2 == 0:
                logs = {
                    "loss": 1 / step,
                    "grad_norm": 0.5,
                    "learning_rate": 1e-3,
                    "epoch": step / 6,
                }
                callback.on_log(None, state, None, logs=logs)
            if step % 6 == 0:
                evaluation = {
                    "eval_loss": 1.5 / step + (0.1 if step == 18 else 0.0),
                    "eval_runtime": 0.1,
                    "eval_samples_per_second": 480.0,
                    "eval_steps_per_second": 60.0,
                    "epoch": step / 6,
                }
                callback.on_log(None, state, None, logs=evaluation)
        summary = {"train_runtime": 3.0, "train_loss": 0.2, "total_flos": 1e6, "epoch": 3.0}
        callback.on_log(None, state, None, logs=summary)
    return tmp_path / "run"


def test_the_trainers_epochs_are_shown_as_it_logs_them(tmp_path: Path) -> None:
    """The Trainer logs its epoch as progress from the start (0.5, ..., 3.0): shown so, not
    shifted by one as Keras' 0-based epoch index is (the last evaluation read "epoch 4" of 3)."""
    from colabsession._storage.history import for_display, read_history

    records = for_display(read_history(hf_history(tmp_path)))
    evaluations = [r for r in records if "eval_loss" in r]
    assert [r["epoch"] for r in evaluations] == [1.0, 2.0, 3.0]
    assert max(r["epoch"] for r in records) == 3.0
    assert [r["step"] for r in records] == list(range(2, 19, 2))  # each step once


def test_the_trainers_history_plots_by_step_with_eval_beside_training(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    axes = cs.plot_history(hf_history(tmp_path))
    assert [a.get_ylabel() for a in axes] == ["loss", "grad_norm", "learning_rate"]
    assert axes[-1].get_xlabel() == "step"
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert list(lines["training"].get_xdata()) == list(range(2, 19, 2))
    assert list(lines["evaluation"].get_xdata()) == [6, 12, 18]  # eval_loss beside loss
    axes[0].figure.savefig(tmp_path / "history.png")  # (to look at)


def test_the_tutorial_killed_on_new_vms_ends_with_the_same_best_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount_table: Path
) -> None:
    """The transformers text-classification tutorial as docs/huggingface.md adapts it
    (tests/hf_finetune.py: evaluate and save each epoch, load_best_model_at_end by accuracy,
    save_total_limit=2), where epoch 3 of 5 is best: killed during a checkpoint write, at a
    random step and while the Trainer writes its own folder, each time on a new VM (a fresh
    output_dir and local mirror), then run to the end on another. The best checkpoint is kept
    on Drive and comes back, so the final weights equal an uninterrupted run's bit for bit;
    output_dir keeps save_total_limit folders; the history holds each step once."""
    from colabsession._storage.history import read_history
    from tests.script_runs import fuse_mount_line, run_script

    def run(n: int, drive: str, kill_at: str | None = None) -> Any:
        return run_script(
            "hf_finetune.py", [], cwd=tmp_path / f"vm{n}", home=tmp_path / f"home{n}",
            drive=tmp_path / drive, kill_at=kill_at,
        )  # fmt: skip

    reference = run(0, "ref-drive")
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "best 24 40" in reference.stdout  # epoch 3 of 5 is the best
    # During the write of step 32, then after it (once it is saved) at a random step, then
    # during the Trainer's own write of its next folder.
    kills = ["save:4", f"step:{random.Random(5).randrange(9, 16)}:post", "torch-save:2"]
    for n, kill_at in enumerate(kills, 1):
        killed = run(n, "drive", kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
        assert "KILLED" in killed.stderr, kill_at
        shutil.rmtree(tmp_path / f"vm{n}")  # the VM is gone, and its output_dir with it
        shutil.rmtree(tmp_path / f"home{n}")
    finished = run(9, "drive")
    assert finished.returncode == 0, finished.stderr[-3000:]
    a, b = torch.load(tmp_path / "vm0" / "final.pt"), torch.load(tmp_path / "vm9" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Replication is in the background: a kill soon after the save of step 32 may leave Drive
    # with step 24 as its newest (under load it does). Either way the run ends bit for bit as
    # the reference; the best, when older than the step resumed from, comes back beside it.
    resumed = re.search(r"resuming \S+ at step (\d+)", finished.stdout)
    assert resumed is not None, finished.stdout
    if int(resumed.group(1)) > 24:
        assert "(the best so far, step 24, restored too)" in finished.stdout
    assert "best 24 40" in finished.stdout
    output = sorted(p.name for p in (tmp_path / "vm9" / "my_awesome_model").iterdir())
    assert output == ["checkpoint-24", "checkpoint-40"]  # save_total_limit=2, the best kept
    monkeypatch.setenv("COLABSESSION_DRIVE", str(tmp_path))
    with mount_table.open("a") as table:
        table.write(fuse_mount_line(tmp_path / "drive"))
        table.write(fuse_mount_line(tmp_path / "ref-drive"))
    steps = [r["step"] for r in read_history("drive:drive/checkpoints/my_awesome_model")]
    expected = [r["step"] for r in read_history("drive:ref-drive/checkpoints/my_awesome_model")]
    assert steps == expected == sorted(set(steps))


def test_the_best_checkpoint_is_kept_by_the_trainers_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cs.hf.train keeps the best checkpoint by metric_for_best_model, its direction from
    greater_is_better; an output_dir that keeps every folder is pointed out."""
    made: list[cs.Checkpointer] = []

    class Args:
        output_dir = str(tmp_path / "out")
        metric_for_best_model = "accuracy"
        greater_is_better = True
        save_total_limit = None

    class Trainer:
        args = Args()

        def add_callback(self, callback: Any) -> None:
            made.append(callback.ckpt)

        def remove_callback(self, callback: Any) -> None:
            pass

        def train(self, resume_from_checkpoint: Any = None) -> None:
            pass

    hf.train(Trainer(), tmp_path / "run")
    (ckpt,) = made
    assert (ckpt.keep_best, ckpt.monitor, ckpt.mode) == (1, "eval_accuracy", "max")
    assert hf.best_metric_name(Args()) == "eval_accuracy"
    assert "save_total_limit=2" in capsys.readouterr().out


class _FakeTrainer:
    """Just what cs.hf.train reads of a Trainer: its args, its callbacks and train()."""

    def __init__(self, output_dir: Path, metric: str | None = None) -> None:
        from types import SimpleNamespace

        self.args = SimpleNamespace(
            output_dir=str(output_dir),
            save_total_limit=2,
            metric_for_best_model=metric,
            greater_is_better=True,
        )
        self.callbacks: list[Any] = []
        self.seen: list[Any] = []

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)
        self.seen.append(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callbacks.remove(callback)

    def train(self, resume_from_checkpoint: Any = None, **kwargs: Any) -> Any:
        return kwargs


def test_train_takes_the_checkpointers_keyword_arguments_with_its_defaults(
    tmp_path: Path,
) -> None:
    trainer = _FakeTrainer(tmp_path / "out", metric="accuracy")
    assert hf.train(trainer, tmp_path / "run", every=None, trial="t") == {"trial": "t"}
    ckpt = trainer.seen[-1].ckpt
    assert ckpt.keep_last == 3  # Checkpointer's default (2 before this release)
    assert (ckpt.keep_best, ckpt.monitor, ckpt.mode) == (1, "eval_accuracy", "max")
    assert ckpt.every is None
    hf.train(trainer, tmp_path / "run", keep_last=1, monitor="eval_loss", mode="min")
    ckpt = trainer.seen[-1].ckpt
    assert (ckpt.keep_last, ckpt.keep_best, ckpt.monitor) == (1, None, "eval_loss")


def test_train_takes_a_checkpointer_as_its_run_and_ckpt_is_deprecated(tmp_path: Path) -> None:
    trainer = _FakeTrainer(tmp_path / "out")
    mine = cs.Checkpointer(tmp_path / "run", every=None, keep_last=1)
    hf.train(trainer, mine)
    assert trainer.seen[-1].ckpt is mine
    assert mine.closed  # the wrapper closes it at the end, as its own
    again = cs.Checkpointer(tmp_path / "run", every=None)
    with pytest.warns(DeprecationWarning, match=r"cs\.hf\.train\(ckpt=\.\.\.\).*run="):
        hf.train(trainer, ckpt=again)  # type: ignore[call-arg]
    assert trainer.seen[-1].ckpt is again
    with pytest.raises(cs.ConfigError, match="Checkpointer and Checkpointer options"):
        hf.train(trainer, cs.Checkpointer(tmp_path / "run"), keep_last=2)
