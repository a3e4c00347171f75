"""PyTorch in checkpoints and colabsession.torch: exact round trips and exact resumes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import colabsession as cs
from colabsession._core.optional import installed

torch = pytest.importorskip("torch")

from colabsession._training.torch import epoch_order  # noqa: E402
from colabsession.torch import (  # noqa: E402
    ResumableLoader,
    TrainingState,
    precision,
    rng_state,
    set_rng_state,
)

WORKER = Path(__file__).with_name("torch_worker.py")


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.uint8,
        torch.int64,
        torch.bool,
        torch.complex64,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ],
)
def test_tensors_of_every_dtype_roundtrip_exactly(
    dtype: object, roundtrip: Callable[..., Any]
) -> None:
    source = (torch.randn(3, 5) * 7).to(dtype)
    got = roundtrip({"t": source, "scalar": source[0, 0]})
    assert isinstance(got, dict)
    assert got["t"].dtype == dtype
    assert got["t"].shape == source.shape
    assert torch.equal(got["t"].view(torch.uint8), source.view(torch.uint8))  # bit for bit
    assert got["scalar"].shape == ()


def test_odd_tensors_roundtrip(roundtrip: Callable[..., Any]) -> None:
    base = torch.arange(24.0).reshape(4, 6)
    state = {
        "transposed": base.t(),
        "sliced": base[:, ::2],
        "conj": torch.randn(3, dtype=torch.complex64).conj(),
        "param": torch.nn.Parameter(torch.ones(2)),
        "empty": torch.empty(0, 3),
    }
    got = roundtrip(state)
    assert isinstance(got, dict)
    for key, value in state.items():
        assert torch.equal(got[key], value.detach().resolve_conj()), key
    assert not got["param"].requires_grad


def test_sparse_and_meta_tensors_are_refused(tmp_path: Path) -> None:
    with (
        cs.Checkpointer(tmp_path / "run", every=None) as ckpt,
        pytest.raises(cs.CheckpointError, match="dense"),
    ):
        ckpt.save(1, {"s": torch.eye(3).to_sparse()})
    with (
        cs.Checkpointer(tmp_path / "run2", every=None) as ckpt,
        pytest.raises(cs.CheckpointError, match="meta device"),
    ):
        ckpt.save(1, {"m": torch.empty(2, device="meta")})


def test_optimizer_scheduler_and_scaler_states_roundtrip(roundtrip: Callable[..., Any]) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    state = {
        "opt": optimizer.state_dict(),
        "sched": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    got = roundtrip(state)
    assert isinstance(got, dict)
    assert sorted(got["opt"]["state"]) == [0, 1]  # integer keys stay integers
    betas = got["opt"]["param_groups"][0]["betas"]
    assert isinstance(betas, tuple)  # tuples stay tuples
    assert betas == optimizer.state_dict()["param_groups"][0]["betas"]
    twin = torch.optim.AdamW(model.parameters(), lr=0.1)
    twin.load_state_dict(got["opt"])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(twin.state_dict()["state"][0][key], value)
    assert got["sched"] == scheduler.state_dict()
    assert got["scaler"] == scaler.state_dict()


def test_a_save_copies_the_tensors_so_training_may_go_on(tmp_path: Path) -> None:
    weight = torch.zeros(1000)
    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        for step in range(3):
            ckpt.save(step, {"w": weight})
            weight.add_(1.0)  # in place, while the save is written in the background
    for step in range(3):
        restored = cs.Checkpointer(tmp_path / "run", keep_last=3).restore(step)
        assert restored is not None
        assert torch.equal(restored.state["w"], torch.full((1000,), float(step)))


def test_restore_puts_tensors_on_the_device_asked_for(
    caplog: pytest.LogCaptureFixture, roundtrip: Callable[..., Any]
) -> None:
    got = roundtrip({"t": torch.ones(2)}, device="cpu")
    assert isinstance(got, dict)
    assert got["t"].device.type == "cpu"
    with pytest.raises(cs.ConfigError, match="not a device"):
        roundtrip({"t": torch.ones(2)}, device="sav ed")


def test_saved_device_missing_here_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from colabsession._storage import frameworks as _frameworks
    from colabsession._storage.frameworks import FrameworkArray

    stored = FrameworkArray("torch", np.arange(3, dtype=np.float32), "float32", "cuda:7")
    got = _frameworks.to_frameworks({"a": stored, "b": stored}, device="saved")
    assert got["a"].device.type == "cpu"
    assert sum("cuda:7" in r.message for r in caplog.records) == 1  # said once


def test_an_asked_for_device_this_runtime_lacks_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture, roundtrip: Callable[..., Any]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this runtime has a GPU")
    got = roundtrip({"a": torch.ones(2), "b": torch.zeros(3)}, device="cuda")
    assert isinstance(got, dict)
    assert got["a"].device.type == got["b"].device.type == "cpu"
    assert torch.equal(got["a"], torch.ones(2))
    assert sum("device=...) asked for cuda" in r.message for r in caplog.records) == 1


def test_a_tensor_stored_in_the_other_byte_order_comes_back_right(
    monkeypatch: pytest.MonkeyPatch, roundtrip: Callable[..., Any]
) -> None:
    """A checkpoint written on a big-endian machine (">f4", valid checksums) restores."""
    from colabsession._storage import frameworks as _frameworks

    native = _frameworks.host_view
    monkeypatch.setattr(
        _frameworks, "host_view", lambda leaf: native(leaf).astype(">" + native(leaf).dtype.str[1:])
    )
    source = {"f": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16)}
    got = roundtrip(source)
    assert isinstance(got, dict)
    for key, value in source.items():
        assert got[key].dtype == value.dtype
        assert torch.equal(got[key], value), key


def test_nested_tensors_and_dtensors_are_refused_with_advice(tmp_path: Path) -> None:
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    for async_save in (True, False):
        with (
            cs.Checkpointer(tmp_path / f"run{async_save}", every=None, async_save=async_save) as c,
            pytest.raises(cs.CheckpointError, match=r"nested tensor.*unbind"),
        ):
            c.save(1, {"n": nested})

    from torch.distributed import (  # type: ignore[attr-defined]
        HashStore,
        destroy_process_group,
        init_process_group,
    )
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    init_process_group("gloo", store=HashStore(), rank=0, world_size=1)
    try:
        sharded = distribute_tensor(torch.ones(4), DeviceMesh("cpu", [0]), [Replicate()])
        with (
            cs.Checkpointer(tmp_path / "dtensor", every=None) as ckpt,
            pytest.raises(cs.CheckpointError, match=r"DTensor.*full_state_dict"),
        ):
            ckpt.save(1, {"w": sharded, "plain": torch.ones(2)})
    finally:
        destroy_process_group()


def test_hostile_framework_records_are_refused() -> None:
    from colabsession._storage.serialize import check_tree

    for bad in (
        {"framework": "pickle", "array": 0, "dtype": "float32"},
        {"framework": "torch", "array": 5, "dtype": "float32"},
        {"framework": "torch", "array": 0, "dtype": "__import__('os')"},
        {"framework": "torch", "array": 0, "dtype": "float32", "device": ["cuda"]},
        {"framework": "torch", "array": 0},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - the message differs per fault
            check_tree({"$x": bad}, 1)


def test_a_dtype_name_that_is_not_a_dtype_is_refused() -> None:
    from colabsession._storage import frameworks as _frameworks
    from colabsession._storage.frameworks import FrameworkArray

    stored = FrameworkArray("torch", np.zeros(2, np.float32), "nn", None)  # torch.nn: a module
    with pytest.raises(cs.CheckpointError, match=r"torch\.nn"):
        _frameworks.to_frameworks([stored])


def test_a_tensor_stored_with_the_wrong_size_is_damaged() -> None:
    from colabsession._storage import frameworks as _frameworks
    from colabsession._storage.frameworks import FrameworkArray

    stored = FrameworkArray("torch", np.zeros(2, np.float64), "bfloat16", None)
    with pytest.raises(cs.CheckpointError, match="damaged"):
        _frameworks.to_frameworks([stored])


def test_plain_checkpoints_keep_the_old_format(tmp_path: Path) -> None:
    """Older releases read format 1: a state without framework arrays is still written so."""
    import json

    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        ckpt.save(1, {"w": np.ones(3)})
        ckpt.save(2, {"w": torch.ones(3)})
    versions = {}
    for path in (tmp_path / "run").glob("ckpt-*.ckpt"):
        data = path.read_bytes()
        length = int.from_bytes(data[-20:-12], "little")
        versions[path.name[:17]] = json.loads(data[-20 - length : -20])["version"]
    assert versions == {"ckpt-000000000001": 1, "ckpt-000000000002": 2}


# colabsession.torch ---------------------------------------------------------------------------


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    a, b = epoch_order(50, seed=3, epoch=2), epoch_order(50, seed=3, epoch=2)
    assert a.tolist() == b.tolist()
    assert sorted(a.tolist()) == list(range(50))
    assert a.tolist() != epoch_order(50, seed=3, epoch=3).tolist()
    assert epoch_order(4, seed=0, epoch=0, shuffle=False).tolist() == [0, 1, 2, 3]


def test_loader_resumes_at_the_next_batch() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = ResumableLoader(data, batch_size=3, shuffle=True, seed=5)
    first = [b[0].tolist() for b in loader]
    assert len(first) == 4
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert loader.epoch == 1
    assert loader.position == 0

    again = ResumableLoader(data, batch_size=3, shuffle=True, seed=5)
    iterator = iter(again)
    head = [next(iterator)[0].tolist() for _ in range(2)]
    saved = again.state_dict()
    resumed = ResumableLoader(data, batch_size=3, shuffle=True, seed=5)
    resumed.load_state_dict(saved)
    assert resumed.batches_left == 2
    assert len(resumed) == 4  # DataLoader's meaning: the batches of a whole epoch
    assert head + [b[0].tolist() for b in resumed] == first


def test_loader_defaults_and_len_are_dataloaders() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    plain = torch.utils.data.DataLoader(data, batch_size=3)
    loader = ResumableLoader(data, batch_size=3)
    assert [b[0].tolist() for b in loader] == [b[0].tolist() for b in plain]  # not shuffled
    assert len(ResumableLoader(data)) == len(torch.utils.data.DataLoader(data)) == 10
    shuffled = ResumableLoader(data, 3, True, seed=1)  # DataLoader's positional order
    assert shuffled.shuffle
    seen = []
    for _ in shuffled:
        seen.append((len(shuffled), shuffled.batches_left))
    assert seen == [(4, 3), (4, 2), (4, 1), (4, 0)]


def test_the_mnist_progress_line_survives_the_last_batch_and_a_resume() -> None:
    """pytorch/examples' progress line divides by len(train_loader): it never meets zero, on
    an epoch's last batch nor after a resume with one batch left."""
    data = torch.utils.data.TensorDataset(torch.arange(100))
    loader = ResumableLoader(data, batch_size=72, shuffle=True)

    def epoch(loader: ResumableLoader) -> list[str]:
        lines = []
        for batch_idx, (x,) in enumerate(loader, loader.position):
            lines.append(
                "[{}/{} ({:.0f}%)]".format(  # noqa: UP032 - as the script writes it
                    batch_idx * len(x), len(loader.dataset), 100.0 * batch_idx / len(loader)
                )
            )
        return lines

    assert epoch(loader) == ["[0/100 (0%)]", "[28/100 (50%)]"]
    iterator = iter(loader)
    next(iterator)
    resumed = ResumableLoader(data, batch_size=72, shuffle=True)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.batches_left == 1
    assert epoch(resumed) == ["[28/100 (50%)]"]


def test_loader_refuses_what_it_sets_and_other_data() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    with pytest.raises(cs.ConfigError, match="sets sampler itself"):
        ResumableLoader(data, batch_size=2, sampler=None)
    loader = ResumableLoader(data, batch_size=2)
    other = ResumableLoader(torch.utils.data.TensorDataset(torch.arange(11)), batch_size=2)
    with pytest.raises(cs.CheckpointError, match="10 samples"):
        other.load_state_dict(loader.state_dict())


def test_a_damaged_loader_or_training_state_is_refused() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = ResumableLoader(data, batch_size=2)
    good = loader.state_dict()
    for bad in ({**good, "position": -3}, {**good, "batch_size": 0}, {**good, "epoch": "1"}, {}):
        with pytest.raises(cs.CheckpointError, match="damaged"):
            loader.load_state_dict(bad)
    assert loader.position == 0
    state = TrainingState(loader=loader)
    for bad in ({"parts": {}}, {"parts": [], "step": 1, "epoch": 0}, {"parts": {}, "step": -1}):
        with pytest.raises(cs.CheckpointError, match="not saved from a TrainingState"):
            state.load_state_dict(bad)


def test_a_refused_checkpoint_changes_nothing(tmp_path: Path) -> None:
    """A checkpoint of another dataset, model or optimizer is refused before any part is loaded:
    the model and the optimizer are as they were."""

    def parts(samples: int, width: int) -> TrainingState:
        torch.manual_seed(samples + width)
        model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Linear(width, 1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        data = torch.utils.data.TensorDataset(torch.arange(samples))
        return TrainingState(model, optimizer, loader=ResumableLoader(data, batch_size=2))

    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        ckpt.save(1, parts(10, 8).state_dict())
    for other, match in ((parts(11, 8), "10 samples"), (parts(10, 6), "shape")):
        before = {k: v.clone() for k, v in other.parts["model"].state_dict().items()}
        moments = other.parts["optimizer"].state_dict()["state"][0]["exp_avg"].clone()
        rng = torch.get_rng_state()
        with pytest.raises(cs.CheckpointError, match=match):
            other.restore(cs.Checkpointer(tmp_path / "run", every=None))
        after = other.parts["model"].state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items())
        assert torch.equal(other.parts["optimizer"].state_dict()["state"][0]["exp_avg"], moments)
        assert torch.equal(torch.get_rng_state(), rng)
        assert other.step == 0

    # Another optimizer layout (one group split in two) is refused before loading too.
    other = parts(10, 8)
    model = other.parts["model"]
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters()}]
    split = torch.optim.AdamW(groups)
    state = TrainingState(model, split, loader=other.loader)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(cs.CheckpointError, match="parameter groups"):
        state.restore(cs.Checkpointer(tmp_path / "run", every=None))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_starting_the_loader_does_not_draw_from_torchs_generator() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = ResumableLoader(data, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


def test_rng_state_roundtrips_through_a_checkpoint(roundtrip: Callable[..., Any]) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    got = roundtrip(saved)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert isinstance(got, dict)
    set_rng_state(got)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def make_loop(
    tmp_path: Path, clock: cs.SessionClock | None = None
) -> tuple[TrainingState, cs.Checkpointer]:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = ResumableLoader(data, batch_size=4, shuffle=True, seed=0)
    state = TrainingState(model, optimizer, loader=loader)
    ckpt = cs.Checkpointer(tmp_path / "run", every=None, every_steps=100, clock=clock)
    return state, ckpt


def train(state: TrainingState, ckpt: cs.Checkpointer, epochs: int, hook: object = None) -> None:
    model, optimizer = state.parts["model"], state.parts["optimizer"]
    loader = state.loader
    assert loader is not None
    with ckpt:
        for _ in state.epochs(epochs, ckpt):
            for x, y in loader:
                loss = torch.nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                state.step += 1
                ckpt.maybe_save(state.step, state.state_dict, metrics={"loss": loss.item()})
                if callable(hook):
                    hook(state.step)


def test_a_first_interrupt_saves_at_the_step_and_stops(tmp_path: Path) -> None:
    state, ckpt = make_loop(tmp_path)

    def interrupt(step: int) -> None:
        if step == 13:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    train(state, ckpt, 3, interrupt)
    assert state.step == 14  # the save came at the next maybe_save, then the loop stopped
    assert signal.getsignal(signal.SIGINT) is before
    assert cs.Checkpointer(tmp_path / "run").latest_step() == 14

    resumed, ckpt = make_loop(tmp_path)
    train(resumed, ckpt, 3)
    assert resumed.step == 30
    reference, ckpt = make_loop(tmp_path / "ref")
    train(reference, ckpt, 3)
    for key, value in reference.parts["model"].state_dict().items():
        assert torch.equal(resumed.parts["model"].state_dict()[key], value), key


def test_a_second_interrupt_stops_at_once_without_saving_a_torn_step(tmp_path: Path) -> None:
    state, ckpt = make_loop(tmp_path)

    def interrupt(step: int) -> None:
        if step == 5:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(state, ckpt, 3, interrupt)
    assert cs.Checkpointer(tmp_path / "run").steps() == []  # nothing half-done was saved


def test_the_deadline_saves_and_stops(tmp_path: Path) -> None:
    now = [0.0]
    clock = cs.SessionClock(started=0.0, max_session=3600, _now=lambda: now[0])
    state, ckpt = make_loop(tmp_path, clock)

    def time_passes(step: int) -> None:
        now[0] = 3600.0 - 30 if step == 7 else now[0]

    train(state, ckpt, 3, time_passes)
    assert state.step == 8
    assert ckpt.should_stop
    assert cs.Checkpointer(tmp_path / "run").latest_step() == 8


def test_training_state_refuses_parts_without_state_dicts() -> None:
    with pytest.raises(cs.ConfigError, match="ema"):
        TrainingState(ema=object())


def test_precision_on_the_cpu_is_float32(capsys: pytest.CaptureFixture[str]) -> None:
    chosen = precision(cs.probe())
    assert isinstance(chosen, cs.Precision)
    assert chosen.device.type == "cpu"
    assert chosen.policy == "float32"
    assert str(chosen) == "float32"
    assert chosen.dtype is None
    assert "training on" in capsys.readouterr().out
    with chosen.autocast():
        pass
    assert not chosen.scaler().is_enabled()


@pytest.mark.parametrize("workers", [2])
def test_killed_at_random_steps_ends_bit_identical(tmp_path: Path, workers: int) -> None:
    """SIGKILL mid-epoch, several times, then run to the end: the weights equal those of a run
    never killed (Dropout, shuffled loader with workers, AdamW, a scheduler)."""

    def run(where: str, kill_at: int | None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(WORKER), str(tmp_path / where), str(tmp_path / f"{where}.pt")]
        argv += [str(kill_at) if kill_at is not None else "-", str(workers)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    reference = run("ref", None)
    assert reference.returncode == 0, reference.stderr
    kills = sorted(random.Random(7).sample(range(1, 48), 3))
    for kill_at in kills:
        killed = run("run", kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = run("run", None)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout
    a = torch.load(tmp_path / "ref.pt")
    b = torch.load(tmp_path / "run.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_mnist_example_killed_anywhere_ends_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount_table: Path
) -> None:
    """pytorch/examples' mnist/main.py as docs/pytorch.md adapts it (tests/mnist_main.py), with
    --batch-size 72 (each epoch's last batch partial): killed after a step with one batch of
    its epoch left, during a checkpoint write, and at a random step on a new VM, then run to
    the end on another new VM: the weights equal an uninterrupted run's, bit for bit, and the
    history holds each step once. The progress line divides by len(train_loader) throughout."""
    if not installed("sklearn"):  # the script reads its digits (the test extra has it)
        pytest.skip("needs scikit-learn")
    from tests.script_runs import fuse_mount_line, run_script

    args = ["--batch-size", "72", "--epochs", "3", "--save-model", "--log-interval", "5"]
    reference = run_script(
        "mnist_main.py", args, cwd=tmp_path / "ref", home=tmp_path / "ref-home",
        drive=tmp_path / "ref-drive",
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "[1200/1500 (95%)]" in reference.stdout  # the last batch (20 of 0-20), partial

    drive = tmp_path / "drive"
    randomly = random.Random(11)
    kills = [
        ("vm1", "step:21:pre"),  # saved at step 20: the resume has one batch of epoch 1 left
        ("vm1", "save:2"),
        ("vm2", f"step:{randomly.randrange(3, 30)}:{randomly.choice(['pre', 'post'])}"),
    ]
    for n, (vm, kill_at) in enumerate(kills):
        killed = run_script(
            "mnist_main.py", args, cwd=tmp_path / f"run{n}", home=tmp_path / vm, drive=drive,
            kill_at=kill_at,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
        assert "KILLED" in killed.stderr, kill_at
    finished = run_script(
        "mnist_main.py", args, cwd=tmp_path / "last", home=tmp_path / "vm3", drive=drive
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming" in finished.stdout
    a = torch.load(tmp_path / "ref" / "mnist_cnn.pt")
    b = torch.load(tmp_path / "last" / "mnist_cnn.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setenv("COLABSESSION_DRIVE", str(drive))
    with mount_table.open("a") as table:
        table.write(fuse_mount_line(drive))
    from colabsession._storage.history import read_history

    assert sorted(r["step"] for r in read_history("mnist")) == list(range(1, 64))


def test_the_loaders_stop_hook_is_private_and_its_old_name_deprecated() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    loader = ResumableLoader(data, batch_size=3)
    with pytest.warns(DeprecationWarning, match=r"ResumableLoader\.should_stop.*Checkpointer"):
        loader.should_stop = lambda: True
    assert len(list(loader)) == 1  # the old hook still ends the epoch after a batch
    with pytest.warns(DeprecationWarning, match=r"ResumableLoader\.should_stop"):
        assert loader.should_stop() is True


def test_precision_is_one_record_for_keras_and_torch() -> None:
    import torch

    cuda = cs.Precision("mixed_float16", "T4: float16 autocast", torch.device("cuda"))
    assert cuda.dtype is torch.float16
    assert cs.torch.Precision is cs.Precision
    assert cuda == cs.Precision("mixed_float16", "T4: float16 autocast", torch.device("cuda"))
    keras_side = cs.Precision("mixed_bfloat16", "a TPU")
    assert keras_side.dtype is torch.bfloat16
    with pytest.raises(cs.ConfigError, match=r"cs\.torch\.precision"):
        keras_side.autocast()
    with pytest.warns(DeprecationWarning, match=r"\.policy"):
        assert keras_side == "mixed_bfloat16"
    with pytest.raises(cs.ConfigError, match="unknown precision policy"):
        cs.Precision("float8", "no")  # type: ignore[arg-type]
