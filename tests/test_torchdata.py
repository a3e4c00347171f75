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


def make_loop(
    folder: Path, dropout: bool = False, generator: bool = False, **loader_options: Any
) -> tuple[TrainingState, cs.Checkpointer]:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5 if dropout else 0.0),
        torch.nn.Linear(8, 1),
    )
    optimizer = (torch.optim.Adam if dropout else torch.optim.SGD)(model.parameters(), lr=0.01)
    if generator:
        loader_options["generator"] = torch.Generator().manual_seed(1)
    loader = stateful.StatefulDataLoader(data, batch_size=4, shuffle=True, **loader_options)
    state = TrainingState(model, optimizer, loader=loader)
    return state, cs.Checkpointer(folder, every=None, every_steps=1000)


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


def check_resume(folder: Path, stop_at: int | tuple[int, ...], **options: Any) -> None:
    """Train 3 epochs uninterrupted, and again stopped at each of *stop_at* and resumed: the same
    batches in the same order, and bit-identical weights."""
    reference, ckpt = make_loop(folder / "reference", **options)
    order = train(reference, ckpt, 3)
    assert reference.step == 30

    seen: list[float] = []
    for stop in (stop_at,) if isinstance(stop_at, int) else stop_at:
        stopped, ckpt = make_loop(folder / "run", **options)  # a new process builds it afresh
        seen += train(stopped, ckpt, 3, stop_at=stop)
        assert cs.Checkpointer(folder / "run").latest_step() == stop
    resumed, ckpt = make_loop(folder / "run", **options)
    assert seen + train(resumed, ckpt, 3) == order  # each batch once, in the same order
    assert resumed.step == 30
    for key, value in weights(reference).items():
        assert torch.equal(weights(resumed)[key], value), key


@pytest.mark.parametrize("stop_at", [13, 20])  # inside the second epoch; after its last batch
def test_stopped_mid_epoch_resumes_bit_exact(tmp_path: Path, stop_at: int) -> None:
    check_resume(tmp_path, stop_at)


@pytest.mark.parametrize(
    "options",
    [{}, {"generator": True}, {"num_workers": 2}],
    ids=["global-generator", "own-generator", "two-workers"],
)
def test_a_step_with_dropout_resumes_bit_exact(tmp_path: Path, options: dict[str, Any]) -> None:
    # Each epoch's iterator draws its workers' base seed (from the loader's generator, or torch's
    # global one) when it starts; a resumed run must end where the uninterrupted one does, so
    # that draw may not shift the dropout masks after the random states are put back.
    check_resume(tmp_path, (7, 13), dropout=True, **options)


def test_a_plain_dataloader_is_refused_with_advice() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(4, 1))
    with pytest.raises(cs.ConfigError, match="StatefulDataLoader"):
        TrainingState(loader=torch.utils.data.DataLoader(data))


def test_a_damaged_random_state_of_the_loader_is_refused_before_loading(tmp_path: Path) -> None:
    state, _ = make_loop(tmp_path, generator=True)
    saved = state.state_dict()
    saved["rng"]["loader"] = saved["rng"]["loader"][:5]
    saved["step"] = 7
    with pytest.raises(cs.CheckpointError, match="loader is damaged"):
        state.load_state_dict(saved)
    assert state.step == 0
