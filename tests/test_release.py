"""release_when_done (issue #28): the Colab runtime is released only once the run's last
checkpoint is confirmed at its location, never before; outside Colab nothing is released."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import colabsession as cs
from colabsession._training.finish import release_when_safe

from .fake_drive_api import FakeDrive
from .test_checkpoint import FakeClock, state_at
from .test_drive_confirm import linked, run_on_mount  # noqa: F401 (a fixture)


@pytest.fixture
def colab_runtime(monkeypatch: pytest.MonkeyPatch) -> mock.Mock:
    """``google.colab.runtime`` as Colab has it, its ``unassign()`` recorded."""
    runtime = types.ModuleType("google.colab.runtime")
    unassign = mock.Mock(name="runtime.unassign")
    runtime.unassign = unassign  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.colab.runtime", runtime)
    return unassign


def test_released_once_drive_confirms_the_last_checkpoint(
    linked: Any,  # noqa: F811
    colab_runtime: mock.Mock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt = cs.Checkpointer(run_on_mount(linked), every=None, local_dir=tmp_path / "vm")
    with ckpt:
        ckpt.save(0, state_at(0))
        ckpt.save(1, state_at(1))
    assert ckpt.drive_states()[1] == "on Drive (confirmed by Drive)"
    assert release_when_safe(ckpt)
    colab_runtime.assert_called_once_with()
    assert "releasing the runtime" in capsys.readouterr().out


def test_kept_when_drive_never_confirms(
    linked: Any,  # noqa: F811
    fake_drive: FakeDrive,
    colab_runtime: mock.Mock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    linked.uploads = "held"  # on the mount, never reaching Drive (colabtools #287)
    fake_drive.fail(100, 400, "badRequest", match="/upload/")  # nor through the API
    ckpt = cs.Checkpointer(
        run_on_mount(linked), every=None, local_dir=tmp_path / "vm", close_timeout=5
    )
    with ckpt:
        ckpt.save(0, state_at(0))
    assert not release_when_safe(ckpt)
    colab_runtime.assert_not_called()
    out = capsys.readouterr().out
    assert "not releasing the runtime" in out
    assert "written to the mount, not yet confirmed by Drive" in out


def test_kept_when_the_run_lives_on_the_vm(
    isolated: Path, colab_runtime: mock.Mock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        ckpt.save(0, state_at(0))
    assert not release_when_safe(ckpt)
    colab_runtime.assert_not_called()
    assert "a folder of this VM" in capsys.readouterr().out


def test_outside_colab_it_says_it_would_and_does_nothing(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cs.Checkpointer("run", every=None) as ckpt:  # the folder standing in for Drive
        ckpt.save(0, state_at(0))
    assert not release_when_safe(ckpt)
    assert "not on Colab, so there is no runtime to release" in capsys.readouterr().out


def bucket(tmp_path: Path) -> str:
    """A location that is not the Drive mount (a bucket): a checkpoint copied there is safe."""
    return f"memory://release/{tmp_path.name}"


def test_the_epochs_loop_releases_after_its_last_epoch(
    isolated: Path, colab_runtime: mock.Mock, mocker: Any, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    post = mocker.patch("requests.post")
    model = torch.nn.Linear(2, 1)
    state = TrainingState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with cs.Checkpointer(bucket(tmp_path), every=None) as ckpt:
        for _ in state.epochs(2, ckpt, notify="https://hooks.example/x", release_when_done=True):
            state.step += 1
    assert ckpt.closed
    assert ckpt.steps() == [2]  # the final state, saved before the runtime goes
    colab_runtime.assert_called_once_with()
    assert post.call_args.kwargs["json"]["event"] == "finished"


def test_the_epochs_loop_keeps_the_runtime_after_a_deadline_stop(
    isolated: Path, colab_runtime: mock.Mock, mocker: Any
) -> None:
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    post = mocker.patch("requests.post")
    model = torch.nn.Linear(2, 1)
    state = TrainingState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    ckpt = cs.Checkpointer("run", every=None, clock=FakeClock(30))
    with ckpt:
        for _ in state.epochs(5, ckpt, notify="https://hooks.example/x", release_when_done=True):
            state.step += 1
            ckpt.maybe_save(state.step, state.state_dict)
    assert state.step == 1
    colab_runtime.assert_not_called()
    assert post.call_args.kwargs["json"]["event"] == "deadline"


def test_hf_train_notifies_and_releases_once_safe(
    isolated: Path, colab_runtime: mock.Mock, mocker: Any, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    from colabsession._training import hf

    post = mocker.patch("requests.post")

    class Trainer:
        args = types.SimpleNamespace(
            output_dir=str(tmp_path / "out"), save_total_limit=2, metric_for_best_model=None
        )
        fail = False

        def add_callback(self, callback: Any) -> None:
            self.callback = callback

        def remove_callback(self, callback: Any) -> None:
            pass

        def train(self, resume_from_checkpoint: Any = None) -> str:
            if self.fail:
                raise RuntimeError("CUDA out of memory")
            self.callback.ckpt.save(7, state_at(7))  # as the Trainer's on_save does
            return "done"

    broken = Trainer()
    broken.fail = True
    with pytest.raises(RuntimeError):
        hf.train(broken, bucket(tmp_path), notify="https://hooks.example/x", release_when_done=True)
    assert post.call_args.kwargs["json"]["event"] == "failed"
    colab_runtime.assert_not_called()

    result = hf.train(
        Trainer(), bucket(tmp_path), notify="https://hooks.example/x", release_when_done=True
    )
    assert result == "done"
    payload = post.call_args.kwargs["json"]
    assert (payload["event"], payload["step"]) == ("finished", 7)
    colab_runtime.assert_called_once_with()
