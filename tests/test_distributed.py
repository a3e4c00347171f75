"""A torch.distributed job (DDP, FSDP2; gloo on the CPU, 2 ranks) checkpointed by a
JobCheckpointer: killed whole, killed in a save, one rank killed alone, its launcher killed, the
deadline on one rank's clock, and restored on another world size; each resumed run is compared
bit for bit with an uninterrupted one.

The ranks are forked from the test process (torch is imported already, so a job starts in a
second, not in the half minute torchrun takes here); tests/dist_worker.py is the training script,
run under torchrun as a user would (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import random
import signal
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from colabsession._core.errors import ConfigError  # noqa: E402
from colabsession.torch import JobCheckpointer, ResumableLoader  # noqa: E402
from tests import dist_worker  # noqa: E402

STEPS = 15  # 3 epochs of 5 global batches (40 samples, 4 per rank, 2 ranks)
FORK = multiprocessing.get_context("fork")


def _rank(rank: int, world: int, store: str, args: tuple[Any, ...], launcher: bool) -> None:
    code = 0
    faulthandler.dump_traceback_later(75, exit=True)  # a hang shows where, then ends
    try:
        if launcher:
            os.environ["TORCHELASTIC_RUN_ID"] = "test"
        dist.init_process_group(
            "gloo",
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=30),
        )
        dist_worker.train(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)


def _start(tmp: Path, args: tuple[Any, ...], world: int, launcher: bool = False) -> list[Any]:
    tmp.mkdir(parents=True, exist_ok=True)  # gloo's file store waits forever for a folder
    store = tmp / f"store-{time.monotonic_ns()}"
    procs = [
        FORK.Process(target=_rank, args=(rank, world, str(store), args, launcher))
        for rank in range(world)
    ]
    for p in procs:
        p.start()
    return procs


def job(
    tmp: Path,
    mode: str,
    run: Path,
    out: Path,
    *,
    world: int = 2,
    steps: int = STEPS,
    kill_after: float | None = None,
    **options: Any,
) -> list[int | None]:
    """Run the job to its end (or SIGKILL every rank *kill_after* seconds after its first
    step); the ranks' exit codes."""
    procs = _start(tmp, (mode, str(run), str(out), steps, options), world)
    if kill_after is not None:
        first = Path(f"{out}.rank0.step")
        deadline = time.monotonic() + 60
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(kill_after)
        for p in procs:
            if p.pid is not None:
                with_gone(lambda pid=p.pid: os.kill(pid, signal.SIGKILL))
    for p in procs:
        p.join(90)
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail(f"rank pid {p.pid} hung")
    return [p.exitcode for p in procs]


def with_gone(call: Any) -> None:
    with contextlib.suppress(ProcessLookupError):
        call()


def params(out: Path) -> dict[str, Any]:
    saved: dict[str, Any] = torch.load(out, weights_only=False)
    return saved


def assert_same(a: Path, b: Path) -> None:
    first, second = params(a), params(b)
    assert first["step"] == second["step"] == STEPS
    assert first["params"].keys() == second["params"].keys()
    for key, value in first["params"].items():
        assert torch.equal(value, second["params"][key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each mode's uninterrupted run: its final weights and its run folder."""
    tmp = tmp_path_factory.mktemp("reference")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLABSESSION_HOME", str(tmp / "home"))
        for mode in ("ddp", "fsdp"):
            out = tmp / f"{mode}.pt"
            assert job(tmp, mode, tmp / f"run-{mode}", out) == [0, 0]
            runs[mode], runs[f"{mode}-run"] = out, tmp / f"run-{mode}"
    return runs


def test_ddp_stopped_by_one_ranks_deadline_then_killed_whole_resumes_bit_identical(
    isolated: Path, reference: dict[str, Path]
) -> None:
    run, out = isolated / "run", isolated / "out.pt"
    # Rank 1's clock reaches the deadline first: every rank makes the final save at step 5.
    assert job(isolated, "ddp", run, out, deadline_rank=1, deadline_step=5) == [0, 0]
    stopped = params(out)
    assert stopped["stopped"]
    assert stopped["step"] == 5
    assert Path(f"{out}.rank1.step").read_text() == "5"  # rank 1 stopped with rank 0
    assert any(p.name.startswith("ckpt-000000000005.") for p in run.iterdir())
    # Resumed, then every rank killed mid-step, at a step drawn afresh each run.
    kill = int(os.environ.get("KILL_STEP", 0)) or random.Random().randint(6, STEPS - 1)
    assert job(isolated, "ddp", run, out, kill_step=kill) == [-9, -9], kill
    assert job(isolated, "ddp", run, out) == [0, 0]
    assert_same(out, reference["ddp"])


def test_fsdp_killed_in_a_save_then_at_random_resumes_bit_identical(
    isolated: Path, reference: dict[str, Path]
) -> None:
    run, out = isolated / "run", isolated / "out.pt"
    # Rank 0 dies alone in its second checkpoint write; rank 1 must stop, not write on.
    codes = job(isolated, "fsdp", run, out, kill_save=2)
    assert codes[0] == -9
    assert codes[1] == 1
    assert sorted(int(p.name[5:17]) for p in run.glob("ckpt-*.ckpt")) == [4]
    named = {f for files in named_parts(run).values() for f in files}
    assert part_files(run) - named  # killed with the shards in place, before the commit
    job(isolated, "fsdp", run, out, kill_after=random.Random().uniform(0.0, 1.5))
    assert job(isolated, "fsdp", run, out) == [0, 0]
    assert_same(out, reference["fsdp"])


@pytest.mark.parametrize("world", [1, 4])
def test_a_checkpoint_of_two_ranks_restores_on_another_world_size(
    isolated: Path, reference: dict[str, Path], world: int
) -> None:
    out = isolated / "other.pt"
    assert job(isolated, "fsdp", reference["fsdp-run"], out, world=world) == [0] * world
    assert_same(out, reference["fsdp"])  # resharded, whole again


def part_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("part-")}


def named_parts(folder: Path) -> dict[int, list[str]]:
    """The part files each checkpoint in *folder* names, by step."""
    from colabsession._storage.store import Store

    entries = Store.local_disk(folder).entries()
    return {e.step: [p.file for p in e.manifest.parts or []] for e in entries}


def restored_step(tmp: Path, run: Path, world: int = 1) -> tuple[str, str]:
    """The step a job of *world* ranks restores from *run*, and its warnings."""
    out = tmp / f"restore-{time.monotonic_ns()}"
    assert job(tmp, "fsdp", run, out, world=world, restore_only=True) == [0] * world
    return Path(f"{out}.restored").read_text(), Path(f"{out}.log").read_text()


def test_shards_are_parts_that_travel_before_their_checkpoint_and_go_with_it(
    isolated: Path,
) -> None:
    drive, mirror, out = isolated / "drive", isolated / "mirror", isolated / "out.pt"
    assert job(isolated, "fsdp", drive, out, steps=10, local_dir=str(mirror)) == [0, 0]
    for folder in (mirror, drive):
        named = named_parts(folder)
        # keep_last=2 of the saves at steps 4 and 9 (every 5 steps) and 10 (the last): step
        # 4's parts went with it; each checkpoint names its ranks' DCP files (2 shard files
        # and DCP's metadata), all there.
        assert sorted(named) == [9, 10], folder
        assert all(len(files) == 3 for files in named.values())
        assert part_files(folder) == {f for files in named.values() for f in files}
    # A new runtime (no local mirror) restores from the location, parts and all.
    mirror.rename(isolated / "gone")
    assert restored_step(isolated, drive)[0] == "10"


def test_a_copy_carries_the_parts_before_the_checkpoint_file(isolated: Path) -> None:
    from colabsession._storage import layout
    from colabsession._storage.serialize import crc32c
    from colabsession._storage.store import Store

    local, remote = Store.local_disk(isolated / "local"), Store.local_disk(isolated / "remote")
    local.makedirs()
    remote.makedirs()
    parts = []
    for data in (b"shard", b""):
        part = layout.Part(layout.part_name(3), len(data), crc32c(data))
        (isolated / "local" / part.file).write_bytes(data)
        parts.append(part)
    entry = local.commit(
        layout.file_name(3),
        lambda f: layout.write(
            f, [], step=3, time=0.0, session="s", metrics={}, tree={}, parts=parts
        ),
    )
    written: list[str] = []
    chunks = remote.backend.write_chunks

    def spy(path: str, data: Any) -> None:
        written.append(Path(path).name)
        chunks(path, data)

    remote.backend.write_chunks = spy  # type: ignore[method-assign,assignment]
    remote.upload(entry)
    assert written == [parts[0].file, parts[1].file, entry.name]
    (copied,) = remote.entries()
    remote.load(copied)  # every part verified
    orphan = layout.part_name(4)  # a save killed between its parts and its commit
    (isolated / "local" / orphan).write_bytes(b"x")
    assert local.leftovers() == [orphan]  # removed by retention once an hour old
    remote.delete(copied)
    assert sorted(p.name for p in (isolated / "remote").iterdir()) == []


def test_a_damaged_or_missing_part_skips_to_the_previous_checkpoint(
    isolated: Path, reference: dict[str, Path]
) -> None:
    import shutil

    run = isolated / "run"
    shutil.copytree(reference["fsdp-run"], run)
    named = named_parts(run)
    damaged = run / named[15][0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    step, log = restored_step(isolated, run)
    assert step == "14"
    assert f"skipping checkpoint step 15 in {run}" in log
    assert f"its part {damaged.name} does not match its checksum" in log
    (run / named[14][1]).unlink()
    step, log = restored_step(isolated, run)
    assert step == "None"
    assert f"its part {named[14][1]} is missing" in log


def test_a_checkpoint_packed_whole_by_an_earlier_release_still_restores(
    isolated: Path, reference: dict[str, Path]
) -> None:
    import numpy as np

    import colabsession as cs
    from colabsession._training.distributed import KIND

    # The kind written before parts: the DCP files as arrays of the checkpoint itself.
    source = reference["fsdp-run"]
    restored = cs.Checkpointer(source, every=None).restore()
    assert restored is not None
    files = {
        name: np.fromfile(source / part, dtype=np.uint8)
        for name, (part, _size, _crc) in restored.state["files"].items()
    }
    packed = {"kind": KIND, "world": 2, "files": files, "ranks": restored.state["ranks"]}
    with cs.Checkpointer(isolated / "run", every=None) as ckpt:
        ckpt.save(restored.step, packed)
    out = isolated / "packed.pt"
    assert job(isolated, "fsdp", isolated / "run", out, world=1) == [0]
    assert_same(out, reference["fsdp"])


def test_a_killed_launcher_stops_its_workers_at_the_next_agreement(isolated: Path) -> None:
    run, out = isolated / "run", isolated / "out.pt"
    pids = isolated / "pids"

    def launcher() -> None:  # torchrun's part: fork the workers, wait for them
        procs = _start(isolated, ("ddp", str(run), str(out), STEPS, {}), 2, launcher=True)
        pids.write_text(" ".join(str(p.pid) for p in procs))
        for p in procs:
            p.join()
        os._exit(0)

    agent = FORK.Process(target=launcher)
    agent.start()
    first = Path(f"{out}.rank0.step")
    while not first.exists() and agent.is_alive():
        time.sleep(0.05)
    assert agent.pid is not None
    os.kill(agent.pid, signal.SIGKILL)  # as `kill -9 -PGID` of torchrun: workers live on
    agent.join()
    workers = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers kept running"
    killed_at = int(first.read_text())
    assert all(int(p.name[5:17]) <= killed_at for p in run.glob("ckpt-*.ckpt"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# The loader's sharding, in one process --------------------------------------------------------


def indices(loader: ResumableLoader) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


def test_resumable_loader_shards_each_global_batch_over_the_ranks() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loaders = [
        ResumableLoader(data, batch_size=2, shuffle=True, seed=1, num_replicas=3, rank=r)
        for r in range(3)
    ]
    epochs = [indices(loader) for loader in loaders]
    assert [len(e) for e in epochs] == [2, 2, 2] == [len(loader) for loader in loaders]
    assert all(len(batch) == 2 for e in epochs for batch in e)
    seen = [x for e in epochs for batch in e for x in batch]
    assert set(seen) == set(range(10))  # every sample; two wrapped to pad the last step
    first = sorted(x for e in epochs for x in e[0])  # the first global batch: 6 distinct
    assert len(set(first)) == 6


def test_resumable_loader_resumes_after_the_same_samples_on_another_world_size() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(24))
    two = [
        ResumableLoader(data, batch_size=2, shuffle=True, seed=5, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for loader in two:
        for _ in zip(range(2), loader, strict=False):
            pass
    done = sorted(x for loader in two for x in loader_seen(loader, 2))
    one = ResumableLoader(data, batch_size=4, shuffle=True, seed=5)
    one.load_state_dict(two[0].state_dict())
    rest = sorted(x for batch in indices(one) for x in batch)
    assert sorted(done + rest) == list(range(24))
    assert one.position == 0
    assert one.epoch == 1


def loader_seen(loader: ResumableLoader, batches: int) -> list[int]:
    from colabsession._training.torch import epoch_order

    order = epoch_order(loader.size, loader.seed, loader.epoch).tolist()
    width = loader.batch_size * loader.num_replicas
    start = loader.rank * loader.batch_size
    return [order[g * width + start + i] for g in range(batches) for i in range(loader.batch_size)]


def test_resumable_loader_points_a_distributed_sampler_to_num_replicas() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(8))
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=1)
    with pytest.raises(ConfigError, match="num_replicas=2, rank=1"):
        ResumableLoader(data, batch_size=2, sampler=sampler)
    with pytest.raises(ConfigError, match="rank 2 of 2"):
        ResumableLoader(data, num_replicas=2, rank=2)


def test_a_loader_state_without_replicas_loads_as_one() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(8))
    loader = ResumableLoader(data, batch_size=2, num_replicas=2, rank=0)
    state = {**loader.state_dict(), "position": 3}
    del state["num_replicas"]  # written by an older colabsession
    loader.load_state_dict(state)
    assert loader.position == 1  # 6 samples done = 1 step of 2 x 2, and a warning


def test_job_checkpointer_needs_torch_distributed(isolated: Path) -> None:
    with pytest.raises(ConfigError, match="init_process_group"):
        JobCheckpointer(isolated / "run")


def test_a_checkpointer_on_rank_one_says_to_use_a_job_checkpointer(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    import colabsession as cs

    fake = types.SimpleNamespace(is_initialized=lambda: True, get_rank=lambda: 1)
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)
    ckpt = cs.Checkpointer(isolated / "run", every=None)
    with pytest.raises(ConfigError, match=r"rank 1 .*JobCheckpointer"):
        ckpt.save(1, {"w": 1.0})
    assert not (isolated / "run" / "lease.json").exists()
    ckpt.close()


def test_a_jobs_checkpoint_exports_whole_for_other_tools(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    """cs.export_checkpoint of a sharded checkpoint gathers the shards (as DCP's
    dcp_to_torch_save does): what a user takes to another tool is the model, not the names of
    the ranks' files."""
    import torch
    from safetensors.torch import load_file

    import colabsession as cs

    run = reference["fsdp-run"]
    final = params(reference["fsdp"])["params"]  # the run's last save is of its last step
    out = cs.export_checkpoint(run, tmp_path / "model.pt")
    exported = torch.load(out, weights_only=True)
    assert set(exported) == {"model", "optimizer"}
    assert set(exported["model"]) == set(final)
    for name, tensor in final.items():
        assert torch.equal(exported["model"][name], tensor), name  # whole, not a shard
    flat = load_file(str(cs.export_checkpoint(run, tmp_path / "model.safetensors")))
    for name, tensor in final.items():
        assert torch.equal(flat[f"model.{name}"], tensor), name
    assert sorted(p.name for p in tmp_path.iterdir() if "model" in p.name) == [
        "model.json",
        "model.pt",
        "model.safetensors",
    ]
