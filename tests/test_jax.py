"""JAX arrays, optax states and flax structs in checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import colabsession as cs
from colabsession._core.optional import installed

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8", "bool"])
def test_jax_arrays_come_back_as_jax_arrays(dtype: str, roundtrip: Callable[..., Any]) -> None:
    source = (jnp.arange(12).reshape(3, 4) * 1.5).astype(dtype)
    got = roundtrip({"a": source}, device="saved")
    assert isinstance(got["a"], jax.Array)
    assert got["a"].dtype == source.dtype
    np.testing.assert_array_equal(np.asarray(got["a"]), np.asarray(source))
    assert got["a"].devices() == source.devices()


def test_a_donated_array_is_refused_with_advice(tmp_path: Path) -> None:
    array = jnp.ones(3)
    array.delete()
    with (
        cs.Checkpointer(tmp_path / "run", every=None) as ckpt,
        pytest.raises(cs.CheckpointError, match="donated"),
    ):
        ckpt.save(1, {"a": array})


def test_a_save_does_not_hold_buffers_a_jitted_step_donates(tmp_path: Path) -> None:
    step = jax.jit(lambda x: x + 1, donate_argnums=0)
    x = jnp.zeros(1000)
    with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
        for i in range(3):
            ckpt.save(i, {"x": x})
            x = step(x)  # deletes the array just given to save
    restored = cs.Checkpointer(tmp_path / "run", keep_last=3).restore(2)
    assert restored is not None
    np.testing.assert_array_equal(np.asarray(restored.state["x"]), np.full(1000, 2.0))


def test_an_array_donated_before_the_writer_fetches_it_is_saved_as_it_was() -> None:
    from colabsession._storage.serialize import flatten, host_arrays

    step = jax.jit(lambda x: x + 1, donate_argnums=0)
    x = jnp.arange(1000, dtype=jnp.float32)
    _, leaves = flatten({"x": x})  # what an async save takes in the training thread
    assert not isinstance(leaves[0], np.ndarray)  # not fetched in the training thread
    assert isinstance(leaves[0].array, jax.Array)  # a copy on the device
    assert leaves[0].array is not x
    y = step(x)  # donates x before the writer has fetched anything
    (saved,) = host_arrays(leaves)  # the writer thread's fetch
    np.testing.assert_array_equal(saved, np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(y), np.arange(1000, dtype=np.float32) + 1)
    assert leaves[0].array is None  # the device copy is let go once fetched


def test_optax_state_is_rebuilt_with_like(tmp_path: Path, roundtrip: Callable[..., Any]) -> None:
    optax = pytest.importorskip("optax")
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    state = {"params": params, "opt": opt_state}

    plain = roundtrip(state)
    assert type(plain["opt"][1][0]) is tuple  # without like=: named tuples as plain tuples

    got = cs.Checkpointer(tmp_path / "run").restore(like=state)
    assert got is not None
    assert jax.tree_util.tree_structure(got.state) == jax.tree_util.tree_structure(state)
    for a, b in zip(
        jax.tree_util.tree_leaves(got.state), jax.tree_util.tree_leaves(state), strict=True
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tx.update(grads, got.state["opt"], got.state["params"])  # optax takes it back


def test_like_refuses_another_structure(tmp_path: Path, roundtrip: Callable[..., Any]) -> None:
    roundtrip({"w": jnp.ones(3)})
    ckpt = cs.Checkpointer(tmp_path / "run")
    with pytest.raises(cs.CheckpointError, match=r"float32 \(4,\)"):
        ckpt.restore(like={"w": jnp.ones(4)})
    with pytest.raises(cs.CheckpointError, match="lacks"):
        ckpt.restore(like={"w": jnp.ones(3), "b": jnp.ones(1)})


def test_flax_struct_is_saved_and_rebuilt(tmp_path: Path, roundtrip: Callable[..., Any]) -> None:
    struct = pytest.importorskip("flax.struct")

    @struct.dataclass
    class State:
        step: Any
        params: Any
        apply: Any = struct.field(pytree_node=False)

    state = State(step=jnp.asarray(3), params={"w": jnp.ones(2)}, apply=print)  # type: ignore[call-arg]
    roundtrip(state)
    got = cs.Checkpointer(tmp_path / "run").restore(like=state)
    assert got is not None
    assert isinstance(got.state, State)
    assert got.state.apply is print
    assert int(got.state.step) == 3


def test_distribution_spans_every_device() -> None:
    """cs.distribution() on Keras' JAX backend, with two (forced) host devices, in a process of
    its own: the backend and the device count are fixed when JAX and Keras start."""
    if not installed("keras"):  # looked up, not imported: Keras would import TensorFlow here
        pytest.skip("needs Keras")
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "KERAS_BACKEND": "jax",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    code = "import colabsession as cs; print(cs.distribution().device_mesh.devices.size)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "2"
