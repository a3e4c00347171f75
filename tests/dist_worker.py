"""A DDP or FSDP2 loop in the shape of pytorch/examples' ddp-tutorial-series, with a seed per
rank (Dropout draws differ by rank), that checkpoints through a JobCheckpointer and resumes. Run
under torchrun, or forked by test_distributed (:func:`train`, with a file store):

    torchrun --nproc_per_node=N dist_worker.py ddp|fsdp RUN OUT STEPS

``options`` (test_distributed's): ``deadline_rank`` and ``deadline_step``: that rank's session
clock reaches its deadline margin once that many steps are done (the others' stay far from
theirs); ``kill_step``: every rank kills itself (SIGKILL) after that step's update;
``kill_save``: rank 0 kills itself during its N-th checkpoint write (written, not committed);
``restore_only``: restore, write the step restored (or None) to ``OUT.restored`` and the
warnings to ``OUT.log``, and end; ``local_dir``: the run's local mirror (the run then stands
for Drive).
Each rank writes the step it finished to ``OUT.rank<N>.step``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist

import colabsession as cs
from colabsession.torch import DistributedState, JobCheckpointer, ResumableLoader


def train(mode: str, run: str, out: str, steps: int, options: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model: Any = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 4)
    )
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    torch.manual_seed(100 + rank)  # a seed per rank: each rank's dropout differs

    data = torch.utils.data.TensorDataset(
        torch.randn(40, 8, generator=torch.Generator().manual_seed(7)),
        torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(8)),
    )
    loader = ResumableLoader(
        data, batch_size=4, shuffle=True, seed=3, num_replicas=world, rank=rank
    )
    state = DistributedState(model, optimizer, loader=loader)

    if options.get("restore_only"):
        handler = logging.FileHandler(f"{out}.log")
        logging.getLogger("colabsession").addHandler(handler)
        with JobCheckpointer(run, every=None, timeout="20s") as job:
            found = job.restore(state)
        handler.close()
        with open(f"{out}.restored", "w") as f:
            f.write(str(found))
        return

    done = [0]
    clock = None
    if options.get("deadline_rank") == rank:
        # Far from the deadline until deadline_step steps are done, then within the margin.
        clock = cs.SessionClock(
            started=0.0,
            max_session="1h",
            _now=lambda: 0.0 if done[0] < options["deadline_step"] else 3600.0 - 1.0,
        )
    if rank == 0 and options.get("kill_save"):
        replace, saves = os.replace, [0]

        def replacing(source: Any, destination: Any, **kwargs: Any) -> None:
            if os.path.basename(os.fspath(destination)).startswith("ckpt-"):
                saves[0] += 1
                if saves[0] == options["kill_save"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            replace(source, destination, **kwargs)

        os.replace = replacing  # type: ignore[assignment]

    mirror = {"local_dir": options["local_dir"]} if "local_dir" in options else {}
    ckpt = JobCheckpointer(
        run, every=None, every_steps=5, keep_last=2, timeout="20s", clock=clock, **mirror
    )
    with ckpt:
        for _epoch in state.epochs(3, ckpt):
            for x, y in loader:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                state.step += 1
                done[0] = state.step
                with open(f"{out}.rank{rank}.step", "w") as f:
                    f.write(str(state.step))
                if state.step == options.get("kill_step"):
                    os.kill(os.getpid(), signal.SIGKILL)
                ckpt.maybe_save(state.step, state, metrics={"loss": loss.item()})
                if state.step >= steps:
                    break
            if state.step >= steps:
                break

    if mode == "ddp":
        params = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    else:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        params = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        torch.save({"params": params, "step": state.step, "stopped": ckpt.should_stop}, out)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    train(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), {})
    dist.destroy_process_group()
