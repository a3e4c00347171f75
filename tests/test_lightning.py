"""cs.lightning.SessionCheckpoint: a Lightning Trainer that saves through colabsession, stops
for the deadline, keeps the history, and resumes a run killed mid-epoch exactly."""

from __future__ import annotations

import signal
import sys
import types
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import colabsession as cs

from .script_runs import run_script
from .test_checkpoint import FakeClock

torch = pytest.importorskip("torch")
L: Any = pytest.importorskip("lightning")
pytest.importorskip("torchdata.stateful_dataloader")


class Model(L.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, index: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> Any:
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    return torch.utils.data.DataLoader(data, batch_size=4)


def trainer(session: Any, epochs: int = 2) -> Any:
    return L.Trainer(
        max_epochs=epochs,
        callbacks=[session],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_a_run_saves_its_end_keeps_its_history_and_notifies(tmp_path: Path, mocker: Any) -> None:
    post = mocker.patch("requests.post")
    session = cs.lightning.SessionCheckpoint(
        tmp_path / "run", every=None, notify="https://hooks.example/x"
    )
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer(session).fit(Model(), loader(), ckpt_path=session.ckpt_path())
    assert session.ckpt.closed
    assert {s: signal.getsignal(s) for s in before} == before  # the notebook's handlers again
    assert cs.Checkpointer(tmp_path / "run").steps() == [8]  # the end of training
    rows = cs.history(tmp_path / "run")
    assert [(r["step"], r["epoch"]) for r in rows] == [(4, 1), (8, 2)]
    assert all("loss" in r for r in rows)
    assert post.call_args.kwargs["json"]["event"] == "finished"

    # The same cell again: the run is done, Lightning trains nothing more.
    again = cs.lightning.SessionCheckpoint(tmp_path / "run", every=None)
    fit = trainer(again)
    fit.fit(Model(), loader(), ckpt_path=again.ckpt_path())
    assert fit.global_step == 8
    with pytest.raises(cs.CheckpointError, match="make a new"):
        trainer(again).fit(Model(), loader())


def test_the_deadline_saves_and_stops_the_trainer(tmp_path: Path, mocker: Any) -> None:
    post = mocker.patch("requests.post")
    runtime = types.ModuleType("google.colab.runtime")
    runtime.unassign = mock.Mock()  # type: ignore[attr-defined]
    mocker.patch.dict(sys.modules, {"google.colab.runtime": runtime})
    session = cs.lightning.SessionCheckpoint(
        tmp_path / "run",
        clock=FakeClock(30),  # 30 s left: the first step saves and stops
        notify="https://hooks.example/x",
        release_when_done=True,
    )
    fit = trainer(session)
    fit.fit(Model(), loader(), ckpt_path=session.ckpt_path())
    assert fit.global_step == 1
    assert session.ckpt.should_stop
    assert cs.Checkpointer(tmp_path / "run").steps() == [1]
    assert post.call_args.kwargs["json"]["event"] == "deadline"
    runtime.unassign.assert_not_called()  # the run is not done


def test_sigterm_saves_at_the_step_and_stops(tmp_path: Path, mocker: Any) -> None:
    post = mocker.patch("requests.post")

    class Terminated(Model):
        def training_step(self, batch: Any, index: int) -> Any:
            if self.global_step == 2:
                signal.raise_signal(signal.SIGTERM)  # Colab ending the runtime, say
            return super().training_step(batch, index)

    session = cs.lightning.SessionCheckpoint(
        tmp_path / "run", every=None, notify="https://hooks.example/x"
    )
    fit = trainer(session)
    fit.fit(Terminated(), loader(), ckpt_path=session.ckpt_path())
    assert fit.global_step == 3
    assert cs.Checkpointer(tmp_path / "run").steps() == [3]
    assert post.call_args.kwargs["json"]["event"] == "deadline"


def test_a_failure_is_notified(tmp_path: Path, mocker: Any) -> None:
    post = mocker.patch("requests.post")

    class Broken(Model):
        def training_step(self, batch: Any, index: int) -> Any:
            raise RuntimeError("out of memory")

    session = cs.lightning.SessionCheckpoint(
        tmp_path / "run", every=None, notify="https://hooks.example/x"
    )
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError):
        trainer(session).fit(Broken(), loader(), ckpt_path=session.ckpt_path())
    assert session.ckpt.closed  # its lease released: the next cell can take the run
    assert signal.getsignal(signal.SIGINT) is before
    payload = post.call_args.kwargs["json"]
    assert payload["event"] == "failed"
    assert "out of memory" in payload["error"]


def test_killed_mid_epoch_resumes_bit_exact(tmp_path: Path) -> None:
    """A run SIGKILLed in its second epoch, resumed on a new VM from what reached Drive, ends
    with the parameters of a run never interrupted (torchdata's StatefulDataLoader, dropout:
    the callback saves and puts back the random states Lightning leaves out). The resumed
    process then trains the uninterrupted run itself (one Lightning import for both)."""
    drive = tmp_path / "drive"
    killed = run_script(
        "lightning_train.py",
        [str(tmp_path / "resumed.pt"), "stateful", "2"],
        cwd=tmp_path / "b",
        home=tmp_path / "vm-b",
        drive=drive,
        kill_at="step:13:pre",
    )
    assert "KILLED" in killed.stderr, killed.stderr[-2000:]
    resumed = run_script(
        "lightning_train.py",
        [str(tmp_path / "resumed.pt"), "stateful", "2", str(tmp_path / "whole.pt")],
        cwd=tmp_path / "b",
        home=tmp_path / "vm-c",  # a new VM: only what reached Drive is left
        drive=drive,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step = int(resumed.stdout.split("resuming drive:checkpoints/lit at step ")[1].split()[0])
    assert step % 10, "the resume should be inside an epoch (10 batches each)"
    expected = torch.load(tmp_path / "whole.pt")
    got = torch.load(tmp_path / "resumed.pt")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
