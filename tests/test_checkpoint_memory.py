"""Saves within a memory budget and restores that hold nothing of the file."""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import colabsession as cs
from colabsession._core.errors import ConfigError
from colabsession._storage.async_writer import AsyncWriter
from colabsession._storage.layout import Damaged
from colabsession._storage.serialize import (
    ArrayInfo,
    array_paths,
    flatten,
    map_arrays,
    read_arrays_from,
    unflatten,
    write_arrays,
)
from colabsession._storage.store import Store

KB = 1 << 10


def arrays(count: int, size: int, value: float = 0.0) -> dict[str, Any]:
    return {f"a{i}": np.full(size // 8, value + i, dtype=np.float64) for i in range(count)}


def drain(writer: AsyncWriter, leaves: list[Any]) -> None:
    for _ in writer.arrays(leaves):
        pass


def write_slowly(
    writer: AsyncWriter, leaves: list[Any], got: list[Any], gate: threading.Event
) -> None:
    """A writer that copies what it is given, after *gate* opens: the caller's copies must
    wait for room until then."""
    gate.wait(30)
    for array in writer.arrays(leaves):
        got.append(np.array(array, copy=True))


def test_a_state_over_the_budget_is_staged_within_it_and_saved_exactly() -> None:
    writer = AsyncWriter(background=True, budget=250 * KB, _available=lambda: 1 << 40)
    state = arrays(8, 100 * KB)
    expected = {k: v.copy() for k, v in state.items()}
    got: list[Any] = []
    gate = threading.Event()
    with writer.lock:
        _tree, leaves = writer.stage(state)
        threading.Timer(0.05, gate.set).start()  # the caller blocks until the writer has begun
        writer.submit(lambda: write_slowly(writer, leaves, got, gate))
    for value in state.values():
        value.fill(-1.0)  # training goes on: the save must not see it
    assert writer.wait() is None
    assert [g.tobytes() for g in got] == [e.tobytes() for e in expected.values()]
    assert 0 < writer.peak <= 250 * KB
    assert writer.held == 0  # over the budget: nothing kept for the next save


def test_an_array_larger_than_the_budget_is_written_from_the_callers_own() -> None:
    writer = AsyncWriter(background=True, budget=150 * KB, _available=lambda: 1 << 40)
    state = {"small": np.arange(1000.0), "big": np.arange(40_000.0), "after": np.ones(10)}
    expected = [v.copy() for v in state.values()]
    got: list[Any] = []
    gate = threading.Event()
    gate.set()
    with writer.lock:
        _tree, leaves = writer.stage(state)
        writer.submit(lambda: write_slowly(writer, leaves, got, gate))
        # submit returned: the big array is written already, the others copied
        assert len(got) >= 2
    state["big"].fill(-1.0)
    assert writer.wait() is None
    assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    assert writer.peak <= 150 * KB


def test_a_state_within_the_budget_keeps_its_buffers_only_while_it_fits() -> None:
    free = [10 << 20]
    writer = AsyncWriter(background=True, _available=lambda: free[0])  # 80% of what is free
    state = arrays(4, 100 * KB)
    for _ in range(2):
        with writer.lock:
            _tree, leaves = writer.stage(state)
            writer.submit(lambda: drain(writer, leaves))  # noqa: B023
        assert writer.wait() is None
        assert writer.held == 400 * KB
        assert writer.peak == 400 * KB
    free[0] = 50 * KB  # the machine ran short: the kept buffers (ours) count as free
    with writer.lock:
        _tree, leaves = writer.stage(state)
        writer.submit(lambda: drain(writer, leaves))
    assert writer.wait() is None
    assert writer.held == 0
    assert writer.peak <= int(0.8 * 450 * KB)
    writer.release()
    assert writer.held == 0


def test_a_failed_write_never_leaves_the_caller_waiting_for_room() -> None:
    writer = AsyncWriter(background=True, budget=150 * KB, _available=lambda: 1 << 40)

    def fail() -> None:
        raise OSError("disk full")

    with writer.lock:
        writer.stage(arrays(8, 100 * KB))
        writer.submit(fail)
    assert isinstance(writer.wait(), OSError)
    assert writer.held == 0


def test_checkpointer_memory_budget_saves_exactly_one_step(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path / "run", memory_budget="300KiB") as ckpt:
        assert ckpt.memory_budget == 300 * KB
        state = arrays(10, 100 * KB)
        for step in range(3):
            for i, value in enumerate(state.values()):
                value.fill(step * 100 + i)
            ckpt.save(step, state)
            for value in state.values():
                value.fill(-1.0)  # mutated while the write may still go on
        ckpt.wait()
        for step in range(3)[-1:]:
            got = ckpt.restore(step)
            assert got is not None
            for i, value in enumerate(got.state.values()):
                assert np.all(value == step * 100 + i)
    with pytest.raises(ConfigError):
        cs.Checkpointer(tmp_path / "other", memory_budget="lots")


def test_a_large_save_says_its_peak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = AsyncWriter(background=True, _available=lambda: 500 * KB)
    with caplog.at_level(logging.WARNING), writer.lock:
        _tree, leaves = writer.stage(arrays(4, 100 * KB))
        writer.submit(lambda: drain(writer, leaves))
    assert writer.wait() is None
    assert "400.0 KiB" in caplog.text
    assert "memory_budget" in caplog.text


# Restoring ---------------------------------------------------------------------------------


def test_restored_arrays_each_own_their_memory(tmp_path: Path) -> None:
    """Nothing of the file stays alive with any one array (the optimizer's moments once held
    the whole read buffer, weights included)."""
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, {"w": np.arange(1000.0), "m": {"v": np.ones((3, 5), np.float32)}})
    store = Store.local_disk(tmp_path / "run")
    (entry,) = store.entries()
    state = store.load(entry)
    for array in (state["w"], state["m"]["v"]):
        assert array.base is None
        assert array.flags.owndata
        assert array.flags.writeable
    ref = weakref.ref(state["w"])
    del state
    gc.collect()
    assert ref() is None


def test_a_damaged_chunk_or_a_short_file_is_refused(tmp_path: Path) -> None:
    state = {"big": np.arange((20 << 20) // 8, dtype=np.float64), "small": np.ones(3)}
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, state)
    (path,) = (tmp_path / "run").glob("ckpt-*.ckpt")  # one of the local mirror
    data = bytearray(path.read_bytes())
    data[18 << 20] ^= 0x01  # in the second chunk of the big array
    path.write_bytes(bytes(data))
    store = Store.local_disk(tmp_path / "run")
    (entry,) = store.entries()
    with pytest.raises(Damaged, match="checksum"):
        store.load(entry)

    def short(view: memoryview) -> int:
        return 0

    with pytest.raises(EOFError):
        read_arrays_from(short, 24, [ArrayInfo("<f8", (3,), 0, 24)])
    with pytest.raises(ValueError, match="does not fit"):  # overlapping arrays
        read_arrays_from(short, 48, [ArrayInfo("<f8", (3,), 0, 24), ArrayInfo("<f8", (3,), 8, 24)])


def test_restore_into_a_model_and_optimizer_leaves_nothing_of_the_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    def make() -> tuple[Any, Any]:
        model = torch.nn.Linear(64, 64)
        return model, torch.optim.Adam(model.parameters())

    model, opt = make()
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model=model, optimizer=opt).state_dict())
    fresh, fresh_opt = make()
    with cs.Checkpointer(tmp_path / "run") as ckpt:
        restored = ckpt.restore()
        assert restored is not None
        weights = [weakref.ref(t) for t in restored.state["parts"]["model"].values()]
        TrainingState(model=fresh, optimizer=fresh_opt).load_state_dict(restored.state)
        del restored
        gc.collect()
    assert all(ref() is None for ref in weights)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    for moments in fresh_opt.state.values():
        for tensor in moments.values():
            assert tensor.untyped_storage().nbytes() == tensor.nbytes  # its own memory


def test_a_tensor_over_the_budget_is_written_in_chunks_as_it_would_be_whole() -> None:
    """The path of a GPU tensor larger than the budget (copied to the host a chunk at a time),
    taken here by a CPU tensor: the same bytes as the staged path, bfloat16 included."""
    torch = pytest.importorskip("torch")
    import io

    from colabsession._storage import frameworks
    from colabsession._storage.serialize import host_arrays, write_arrays

    for tensor in (torch.randn(3, 1000), torch.randn(777).to(torch.bfloat16)):
        whole, chunked = io.BytesIO(), io.BytesIO()
        infos = write_arrays(whole, host_arrays([tensor]))
        device = frameworks.DeviceArray(tensor)
        assert device.nbytes == tensor.nbytes
        assert write_arrays(chunked, [device]) == infos
        assert chunked.getvalue() == whole.getvalue()
        assert sum(len(c) for c in device.chunks(1000)) == tensor.nbytes


def _mapped(folder: Path) -> list[str]:
    """The files of *folder* that this process maps (Linux), or [] elsewhere."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    return [line for line in maps.read_text().splitlines() if str(folder) in line]


def _trained(torch: Any, seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.BatchNorm1d(32))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(8, 32)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_restore_reads_into_the_parameters_and_optimizer_state_in_place(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    model, opt = _trained(torch, 0)
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model, opt).state_dict())
    fresh, fresh_opt = _trained(torch, 1)  # its moments exist: they receive the values
    where = {k: t.data_ptr() for k, t in fresh.state_dict().items()}
    moments = {(i, k): t for i, s in fresh_opt.state_dict()["state"].items() for k, t in s.items()}
    with cs.Checkpointer(tmp_path / "run") as ckpt:
        assert TrainingState(fresh, fresh_opt).restore(ckpt) == 0
    gc.collect()
    assert _mapped(tmp_path / "run") == []  # nothing of the file stays alive
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
        assert fresh.state_dict()[name].data_ptr() == where[name]
    saved = opt.state_dict()["state"]
    for (index, key), tensor in moments.items():
        now = fresh_opt.state_dict()["state"][index][key]
        assert now is tensor
        assert torch.equal(now, saved[index][key])
    fresh_opt.step()  # and it trains on


def test_restore_into_a_fresh_optimizer_gives_it_moments_of_their_own(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    model, opt = _trained(torch, 0)
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model, opt).state_dict())
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.BatchNorm1d(32))
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    with cs.Checkpointer(tmp_path / "run") as ckpt:
        TrainingState(fresh, fresh_opt).restore(ckpt)
    gc.collect()
    assert _mapped(tmp_path / "run") == []
    for index, values in fresh_opt.state_dict()["state"].items():
        for key, tensor in values.items():
            assert tensor.untyped_storage().nbytes() == tensor.nbytes  # its own memory
            assert torch.equal(tensor, opt.state_dict()["state"][index][key])


def test_arrays_kept_are_copied_as_the_mapping_is_verified(tmp_path: Path) -> None:
    """One pass: the kept arrays come back in memory of their own, the others as views, and
    the checksum is the same as without copies (computed from the copies, chunk by chunk)."""
    state: dict[str, Any] = {
        "w": np.arange(300_000, dtype=np.float32),
        "m": [np.full((700, 3), 2.5)],
        "x": 7,
    }
    tree, leaves = flatten(state)
    with open(tmp_path / "arrays", "wb") as f:
        infos, size, crc = write_arrays(f, leaves)
    buffer = np.fromfile(tmp_path / "arrays", np.uint8)
    paths = array_paths(tree)
    keep = {i for i, path in paths.items() if path[0] == "m"}
    heard: list[int] = []
    got, got_crc = map_arrays(buffer, size, infos, heard.append, keep)
    assert got_crc == crc == map_arrays(buffer, size, infos)[1]
    assert sum(heard) == size
    restored = unflatten(tree, got)
    assert np.array_equal(restored["w"], state["w"])
    assert np.shares_memory(restored["w"], buffer)
    assert np.array_equal(restored["m"][0], state["m"][0])
    assert not np.shares_memory(restored["m"][0], buffer)
    assert restored["m"][0].flags.writeable
    with open(tmp_path / "arrays", "rb") as source:  # read from the file (a pread)

        def read_at(view: Any, offset: int) -> int:
            return os.preadv(source.fileno(), [view], offset)

        again, again_crc = map_arrays(buffer, size, infos, None, keep, read_at)
    assert again_crc == crc
    assert np.array_equal(unflatten(tree, again)["m"][0], state["m"][0])
    assert not np.shares_memory(unflatten(tree, again)["m"][0], buffer)
    buffer[infos[max(keep)].offset + 5] ^= 1  # damage inside a kept array: still noticed
    assert map_arrays(buffer, size, infos, None, keep)[1] != crc


def test_array_paths_lead_to_each_array_of_the_state() -> None:
    torch = pytest.importorskip("torch")
    state = {
        "parts": {"opt": {"state": {0: {"exp_avg": torch.ones(3)}, 5: {"step": np.float32(2)}}}},
        "t": (np.zeros(2), [np.ones(1), {"$odd": np.arange(4)}]),
        "n": np.int64(3),
    }
    tree, leaves = flatten(state)
    paths = array_paths(tree)
    assert paths  # every array reachable by its path in the state rebuilt from the tree
    rebuilt = unflatten(tree, leaves)
    for index, path in paths.items():
        node = rebuilt
        for key in path:
            node = node[key]
        assert getattr(node, "array", node) is leaves[index], path
    assert paths[0] == ("parts", "opt", "state", 0, "exp_avg")
    assert ("t", 1, 1, "$odd") in paths.values()


def test_a_damaged_moment_leaves_a_fresh_optimizer_without_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh optimizer's moments are copied out as the file is verified: a damaged byte
    among them still skips the checkpoint, and the optimizer gets none of the copies."""
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    model, opt = _trained(torch, 0)
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model, opt).state_dict())
    (entry,) = Store.local_disk(tmp_path / "run").entries()
    moments = [i for i, path in array_paths(entry.manifest.tree).items() if "exp_avg" in path]
    (path,) = (tmp_path / "run").glob("ckpt-*.ckpt")
    data = bytearray(path.read_bytes())
    data[entry.manifest.arrays[moments[-1]].offset + 3] ^= 0x01
    path.write_bytes(bytes(data))
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.BatchNorm1d(32))
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    with caplog.at_level(logging.WARNING), cs.Checkpointer(tmp_path / "run") as ckpt:
        assert TrainingState(fresh, fresh_opt).restore(ckpt) == 0
    assert "checksum" in caplog.text
    assert fresh_opt.state_dict()["state"] == {}


def test_a_damaged_file_changes_nothing_of_the_live_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The mapped file is verified whole before any value is copied into a live tensor."""
    torch = pytest.importorskip("torch")
    from colabsession.torch import TrainingState

    model, opt = _trained(torch, 0)
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model, opt).state_dict())
    (path,) = (tmp_path / "run").glob("ckpt-*.ckpt")
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01  # in the first array: copied first if nothing were verified
    path.write_bytes(bytes(data))
    fresh, fresh_opt = _trained(torch, 1)
    before = {k: t.clone() for k, t in fresh.state_dict().items()}
    moments = [t.clone() for s in fresh_opt.state.values() for t in s.values()]
    with caplog.at_level(logging.WARNING), cs.Checkpointer(tmp_path / "run") as ckpt:
        assert TrainingState(fresh, fresh_opt).restore(ckpt) == 0
    assert "checksum" in caplog.text
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, before[name])
    after = [t for s in fresh_opt.state.values() for t in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(after, moments, strict=True))


@pytest.mark.parametrize("with_jax", [False, True])
def test_restore_like_fills_the_templates_tensors_only_when_all_fits(
    tmp_path: Path, with_jax: bool
) -> None:
    torch = pytest.importorskip("torch")
    if with_jax:  # loaded, JAX makes every dict a pytree node: the dicts are still walked
        pytest.importorskip("jax")
    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(4, dtype=torch.bfloat16)}
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, {**state, "extra": np.arange(5)})
    template = {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)}
    wrong = {"w": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.bfloat16)}
    with cs.Checkpointer(tmp_path / "run") as ckpt:
        with pytest.raises(cs.CheckpointError, match="another model"):
            ckpt.restore(like=wrong)
        assert not wrong["w"].any()  # refused before anything was copied
        restored = ckpt.restore(like=template)
    gc.collect()
    assert restored is not None
    assert restored.state["w"] is template["w"]
    assert restored.state["b"] is template["b"]
    assert torch.equal(template["w"], state["w"])
    assert torch.equal(template["b"], state["b"])
    del restored
    gc.collect()
    assert _mapped(tmp_path / "run") == []
    weight = torch.nn.Parameter(torch.zeros(3, 4))  # requires grad: filled without autograd
    with cs.Checkpointer(tmp_path / "run") as ckpt:
        again = ckpt.restore(like={"w": weight, "b": None})
    assert again is not None
    assert again.state["w"] is weight
    assert torch.equal(weight.detach(), state["w"])


def test_a_lazy_restore_views_the_verified_mapping(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, {"t": torch.arange(6.0), "a": np.arange(4)})
    with cs.Checkpointer(tmp_path / "run") as ckpt:
        restored = ckpt.restore(lazy=True)
        assert restored is not None
        assert _mapped(tmp_path / "run") or not Path("/proc/self/maps").exists()
        assert torch.equal(restored.state["t"], torch.arange(6.0))
        assert not restored.state["a"].flags.owndata
        restored.state["t"] += 1  # a private mapping: the file never changes
        del restored
        gc.collect()
        assert _mapped(tmp_path / "run") == []
        again = ckpt.restore(lazy=True)
        assert again is not None
        assert torch.equal(again.state["t"], torch.arange(6.0))


def test_only_the_local_disk_is_mapped_and_a_read_file_is_not_copied_again(tmp_path: Path) -> None:
    """The Drive mount is read, never mapped (a page fault waiting on Drive would be out of
    reach of timeouts); what was read into memory of its own is loaded without a copy."""
    torch = pytest.importorskip("torch")
    from fsspec.implementations.local import LocalFileSystem

    from colabsession._drive.location import Location
    from colabsession._storage.backends import Mount
    from colabsession.torch import TrainingState

    model, opt = _trained(torch, 0)
    with cs.Checkpointer(tmp_path / "run", async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model, opt).state_dict())
    folder = str(tmp_path / "run")
    mount = Store(
        Location(LocalFileSystem(), folder, folder),
        timeout=None,
        backend=Mount(LocalFileSystem(), durable=False),
    )
    (entry,) = mount.entries()
    state = mount.load(entry, lazy=True)
    assert _mapped(tmp_path / "run") == []
    moments = state["parts"]["optimizer"]["state"][0]
    assert moments["exp_avg"].array.flags.owndata
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.BatchNorm1d(32))
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    from colabsession._storage.frameworks import to_frameworks

    loaded = to_frameworks(state)
    given = loaded["parts"]["optimizer"]["state"][0]["exp_avg"]
    TrainingState(fresh, fresh_opt).load_state_dict(loaded)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"] is given  # kept, not copied again
