"""What a JobCheckpointer save of a sharded FSDP2 state costs on 2 ranks (gloo, CPU), side by side
with torch.distributed.checkpoint (DCP) alone, to a local folder, in one run:

    python benchmarks/distributed.py [--mb 64] [--saves 4]

1. Training blocked per save: ``JobCheckpointer.save`` (async) versus ``dcp.async_save``.
2. Time until durable (committed on the local disk) per save: ``JobCheckpointer.save`` then
   ``wait()`` versus ``dcp.save`` (synchronous).

``CS_BENCH_STAGING=/dev/shm/x`` stages the shards there (``staging_dir=``), not beside the run
(another file system: each shard is then copied into the run at the commit).
The ranks are forked from this process; each prints its medians, rank 0's are reported (rank 0 also
commits the checkpoint that names the shards, so it is the slower one).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def rank_main(rank: int, world: int, store: str, root: str, mb: int, saves: int) -> None:
    os.environ["COLABSESSION_HOME"] = os.path.join(root, "home")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=timedelta(seconds=300),
    )  # fmt: skip
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    from colabsession.torch import DistributedState, JobCheckpointer

    width = int((mb * 2**20 / 4 / 3) ** 0.5)  # weights + AdamW's two moments = mb MiB
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width, bias=False)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    state = DistributedState(model, optimizer)
    group = dist.new_group(backend="gloo")
    results: dict[str, list[float]] = {
        k: [] for k in ("cs_block", "cs_durable", "dcp_async", "dcp_sync")
    }

    # Interleaved, so that the load of a shared machine weighs on both alike.
    ckpts = {
        mode: JobCheckpointer(
            f"{root}/run-{mode}",
            every=None,
            async_save=mode,
            staging_dir=os.environ.get("CS_BENCH_STAGING") or None,
        )
        for mode in (True, False)
    }
    for i in range(saves):
        # DCP alone, as its users call it: the sharded state dicts (get_state_dict) and
        # async_save's blocked time, then save's time until durable.
        dist.barrier()
        started = time.perf_counter()
        shared = state.shared_state()
        future = dcp.async_save(shared, checkpoint_id=f"{root}/dcp-async-{i}", process_group=group)
        results["dcp_async"].append(time.perf_counter() - started)
        future.result()
        dist.barrier()
        started = time.perf_counter()
        shared = state.shared_state()
        dcp.save(shared, checkpoint_id=f"{root}/dcp-sync-{i}", process_group=group)
        results["dcp_sync"].append(time.perf_counter() - started)
        dist.barrier()
        if rank == 0:
            for kind in ("async", "sync"):
                shutil.rmtree(f"{root}/dcp-{kind}-{i}", ignore_errors=True)
        for mode, ckpt in ckpts.items():
            dist.barrier()
            started = time.perf_counter()
            ckpt.save(i + 1, state)
            blocked = time.perf_counter() - started
            ckpt.wait()
            dist.barrier()  # rank 0 has committed: the save is durable for the job
            if mode:
                results["cs_block"].append(blocked)
            else:
                results["cs_durable"].append(time.perf_counter() - started)
    for ckpt in ckpts.values():
        ckpt.close()
    if rank == 0:
        med = {k: statistics.median(v) * 1000 for k, v in results.items()}
        print(f"state: {mb} MiB over {world} ranks (FSDP2, a {width}x{width} Linear + AdamW)")
        print(f"blocked per save:  JobCheckpointer {med['cs_block']:.0f} ms   "
              f"dcp.async_save {med['dcp_async']:.0f} ms   "
              f"ratio {med['cs_block'] / med['dcp_async']:.2f}")  # fmt: skip
        print(f"until durable:     JobCheckpointer {med['cs_durable']:.0f} ms   "
              f"dcp.save {med['dcp_sync']:.0f} ms   "
              f"ratio {med['cs_durable'] / med['dcp_sync']:.2f}")  # fmt: skip
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--saves", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        fork = multiprocessing.get_context("fork")
        procs = [
            fork.Process(target=rank_main, args=(r, 2, f"{root}/store", root, args.mb, args.saves))
            for r in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()


if __name__ == "__main__":
    main()
