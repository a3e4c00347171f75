"""Checkpoints out of colabsession's format and back: safetensors plus JSON, torch.save."""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import colabsession as cs
from colabsession._cli import main

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _state() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {
        "model": {
            "fc.weight": torch.randn(3, 4, generator=gen).to(torch.bfloat16),
            "fc.bias": torch.randn(3, generator=gen, dtype=torch.float64),
            "steps": torch.arange(5),
            "mask": torch.tensor([True, False, True]),
            "half": torch.randn(2, generator=gen).half(),
            "empty": torch.zeros(0, 3),
        },
        "optimizer": {
            "state": {0: {"exp_avg": torch.randn(2, generator=gen), "step": torch.tensor(3.0)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "numpy": np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3),
        "numpy_f16": np.linspace(0, 1, 4, dtype=np.float16),
        "scalar": np.float32(1.5),
        "floats": [0.1, float("nan"), float("inf"), -0.0],
        "big": 2**80,
        "text": "epoch 3",
        "none": None,
        "flag": True,
        "$dollar": 1,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.default_rng(7).bit_generator.state,
        "python_rng": random.Random(3).getstate(),
    }


def _same(a: Any, b: Any, where: str = "state") -> None:
    """Equal bit for bit, with the same types and dtypes."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.reshape(-1).view(torch.uint8).tolist() == b.reshape(-1).view(torch.uint8).tolist()
    elif isinstance(a, (np.ndarray, np.generic)):
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), where
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), where
    else:
        assert a == b, where


def _saved(run: str, state: Any, step: int = 7) -> None:
    with cs.Checkpointer(run, every=None) as ckpt:
        ckpt.save(step, state, metrics={"loss": 0.25})


def test_safetensors_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = _state()
    _saved("source", state)
    out = cs.export_checkpoint("source", tmp_path / "model.safetensors")
    assert out == tmp_path / "model.safetensors"
    record = json.loads((tmp_path / "model.json").read_text())
    assert (record["kind"], record["step"], record["metrics"]) == (
        "colabsession-export",
        7,
        {"loss": 0.25},
    )
    # Any safetensors reader sees the tensors by their place in the state, with their dtype.
    tensors = safetensors_torch.load_file(out)
    assert tensors["model.fc.weight"].dtype == torch.bfloat16
    assert torch.equal(
        tensors["optimizer.state.0.exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )
    assert cs.import_checkpoint(out, "copy") == 7
    restored = cs.Checkpointer("copy", every=None).restore()
    assert restored is not None
    assert (restored.step, restored.metrics) == (7, {"loss": 0.25})
    _same(state, restored.state)


def test_torch_round_trip_is_bit_exact_for_tensors(tmp_path: Path) -> None:
    state = {k: v for k, v in _state().items() if k not in ("numpy", "numpy_f16", "scalar")}
    state["numpy_rng"] = random.Random(1).getstate()  # numpy's state holds no arrays either way
    _saved("source", state, step=12)
    out = cs.export_checkpoint("source", tmp_path / "ckpt.pt", step=12)
    loaded = torch.load(out, weights_only=True)
    _same(state, loaded)
    assert cs.import_checkpoint(out, "copy", step=40) == 40
    restored = cs.Checkpointer("copy", every=None).restore()
    assert restored is not None
    assert restored.step == 40
    _same(state, restored.state)


def test_torch_export_turns_numpy_arrays_into_tensors(tmp_path: Path) -> None:
    _saved("source", {"bf16": np.arange(3, dtype=ml_dtypes.bfloat16), "s": np.float32(2.5)})
    loaded = torch.load(cs.export_checkpoint("source", tmp_path / "x.pt"), weights_only=True)
    assert loaded["bf16"].dtype == torch.bfloat16
    assert loaded["bf16"].tolist() == [0.0, 1.0, 2.0]
    assert loaded["s"].dtype == torch.float32
    assert loaded["s"].item() == 2.5


def test_a_safetensors_file_of_another_tool_imports_as_a_dict_of_tensors(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(2, 2).to(torch.bfloat16), "b": torch.arange(3, dtype=torch.int32)}
    safetensors_torch.save_file(tensors, tmp_path / "hub.safetensors")
    assert cs.import_checkpoint(tmp_path / "hub.safetensors", "fine-tune") == 0
    restored = cs.Checkpointer("fine-tune", every=None).restore()
    assert restored is not None
    _same(dict(sorted(tensors.items())), dict(sorted(restored.state.items())))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-3],  # cut short
        lambda data: struct.pack("<Q", 1 << 40) + data[8:],  # a header longer than the file
        lambda data: data.replace(b'"BF16"', b'"XX16"', 1),  # an unknown dtype
        lambda data: data.replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1),
    ],
)
def test_a_damaged_safetensors_file_is_refused_and_nothing_written(
    tmp_path: Path, damage: Any
) -> None:
    _saved("source", {"w": torch.ones(4, dtype=torch.bfloat16), "b": torch.ones(2)})
    out = cs.export_checkpoint("source", tmp_path / "m.safetensors")
    out.write_bytes(damage(out.read_bytes()))
    with pytest.raises(cs.CheckpointError, match="not a valid safetensors file"):
        cs.import_checkpoint(out, "copy")
    assert cs.Checkpointer("copy", every=None).steps() == []


def test_a_json_that_does_not_describe_the_file_is_refused(tmp_path: Path) -> None:
    _saved("source", {"w": torch.ones(4)})
    out = cs.export_checkpoint("source", tmp_path / "m.safetensors")
    side = tmp_path / "m.json"
    record = json.loads(side.read_text())
    for change in (
        {"tensors": ["elsewhere"]},
        {"tree": {"w": {"$a": 5}}},
        {"tree": {"w": {"$evil": 0}}},
        {"step": "seven"},
    ):
        side.write_text(json.dumps({**record, **change}))
        with pytest.raises(cs.CheckpointError, match="does not describe"):
            cs.import_checkpoint(out, "copy")


def test_a_torch_file_with_code_is_refused(tmp_path: Path) -> None:
    torch.save({"f": math.floor}, tmp_path / "bad.pt")  # weights_only refuses any global
    with pytest.raises(cs.CheckpointError, match="weights_only"):
        cs.import_checkpoint(tmp_path / "bad.pt", "copy")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(cs.CheckpointError, match=r"not a torch\.save file"):
        cs.import_checkpoint(tmp_path / "junk.pt", "copy")


def test_import_never_sets_aside_a_runs_checkpoints(tmp_path: Path) -> None:
    _saved("source", {"w": torch.ones(1)})
    out = cs.export_checkpoint("source", tmp_path / "m.safetensors")
    with pytest.raises(cs.CheckpointError, match="has checkpoints already"):
        cs.import_checkpoint(out, "source", step=1)
    assert cs.Checkpointer("source", every=None).steps() == [7]


def test_cli_export_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = {"w": torch.randn(3, dtype=torch.bfloat16), "n": 3}
    _saved("source", state)
    out = tmp_path / "m.safetensors"
    assert main(["ckpt", "export", "source", str(out)]) == 0
    assert "m.json" in capsys.readouterr().out
    assert main(["ckpt", "import", str(out), "copy", "--step", "9"]) == 0
    assert "step 9" in capsys.readouterr().out
    assert main(["ckpt", "export", "copy", str(tmp_path / "m.bin"), "--to", "torch"]) == 0
    assert main(["ckpt", "import", str(tmp_path / "m.bin"), "again", "--from", "torch"]) == 0
    capsys.readouterr()
    restored = cs.Checkpointer("again", every=None).restore()
    assert restored is not None
    assert restored.step == 0
    _same(state, restored.state)
    assert main(["ckpt", "export", "nowhere", str(out)]) == 1
    assert "no run at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["ckpt", "export", "source", str(out), "--step", "-1"])
    assert exited.value.code == 2
