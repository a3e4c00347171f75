"""torchdata's StatefulDataLoader in a TrainingState: a run stopped inside an epoch resumes at
the next batch, ending with the same weights as a run never stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import colabsession as cs

torch = pytest.importorskip("torch")
stateful = pytest.importorskip("torchdata.stateful_dataloader")

from colabsession.torch import TrainingState  # noqa: E402


def make_loop(folder: Path, **options: Any) -> tuple[TrainingState, cs.Checkpointer]:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    # No dropout: a resumed epoch's iterator draws its workers' base seed from torch's global
    # generator (as every DataLoader's does), after the random states are put back, so a step
    # that draws random numbers would differ; ResumableLoader never draws from it.
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = stateful.StatefulDataLoader(data, batch_size=4, shuffle=True)
    state = TrainingState(model, optimizer, loader=loader)
    return state, cs.Checkpointer(folder, every=None, every_steps=1000, **options)


def train(
    state: TrainingState, ckpt: cs.Checkpointer, epochs: int, stop_at: int = -1
) -> list[float]:
    """Train; return each batch's first input (the data order)."""
    model, optimizer = state.parts["model"], state.parts["optimizer"]
    seen = []
    with ckpt:
        for _ in state.epochs(epochs, ckpt):
            for x, y in state.loader:
                seen.append(float(x[0, 0]))
                loss = torch.nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                state.step += 1
                if state.step == stop_at:
                    ckpt.request_stop("a test stops here")
                ckpt.maybe_save(state.step, state.state_dict, metrics={"loss": loss.item()})
                if ckpt.should_stop:
                    break
    return seen


def weights(state: TrainingState) -> dict[str, Any]:
    return dict(state.parts["model"].state_dict())


@pytest.mark.parametrize("stop_at", [13, 20])  # inside the second epoch; after its last batch
def test_stopped_mid_epoch_resumes_bit_exact(tmp_path: Path, stop_at: int) -> None:
    reference, ckpt = make_loop(tmp_path / "reference")
    order = train(reference, ckpt, 3)
    assert reference.step == 30

    stopped, ckpt = make_loop(tmp_path / "run")
    first = train(stopped, ckpt, 3, stop_at=stop_at)
    assert cs.Checkpointer(tmp_path / "run").latest_step() == stop_at

    resumed, ckpt = make_loop(tmp_path / "run")  # a new process would build all this afresh
    assert first + train(resumed, ckpt, 3) == order  # each batch once, in the same order
    assert resumed.step == 30
    for key, value in weights(reference).items():
        assert torch.equal(weights(resumed)[key], value), key


def test_a_plain_dataloader_is_refused_with_advice() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(4, 1))
    with pytest.raises(cs.ConfigError, match="StatefulDataLoader"):
        TrainingState(loader=torch.utils.data.DataLoader(data))
