"""Run by test_distributed under torchrun (gloo, CPU): a DDP or FSDP2 loop in the shape of
pytorch/examples' ddp-tutorial-series, with a seed per rank (Dropout draws differ by rank), that
checkpoints through a JobCheckpointer and resumes.

    torchrun --nproc_per_node=N dist_worker.py ddp|fsdp RUN OUT STEPS

Environment: ``DEADLINE_RANK`` and ``DEADLINE_STEP``: that rank's session clock reaches its
deadline margin once that many steps are done (the others' clocks are far from theirs);
``KILL_LAUNCHER_AT``: rank 0 kills torchrun (its parent) at that step, as ``kill`` of the
launcher's process group does, leaving the workers running.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

import colabsession as cs
from colabsession.torch import DistributedState, JobCheckpointer, ResumableLoader

mode, run, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)  # the same initial weights on every rank
model = torch.nn.Sequential(
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
loader = ResumableLoader(data, batch_size=4, shuffle=True, seed=3, num_replicas=world, rank=rank)
state = DistributedState(model, optimizer, loader=loader)

done_steps = [0]
clock = None
if os.environ.get("DEADLINE_RANK") == str(rank):
    deadline_step = int(os.environ["DEADLINE_STEP"])
    # Far from the deadline until DEADLINE_STEP steps are done, then within the margin.
    clock = cs.SessionClock(
        started=0.0,
        max_session="1h",
        _now=lambda: 0.0 if done_steps[0] < deadline_step else 3600.0 - 1.0,
    )
launcher_kill = int(os.environ.get("KILL_LAUNCHER_AT", "0"))

ckpt = JobCheckpointer(run, every=None, every_steps=3, keep_last=2, timeout="20s", clock=clock)
with ckpt:
    for _epoch in state.epochs(3, ckpt):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            state.step += 1
            done_steps[0] = state.step
            if rank == 0 and state.step == launcher_kill:
                os.kill(os.getppid(), signal.SIGKILL)
            ckpt.maybe_save(state.step, state, metrics={"loss": loss.item()})
            if state.step >= steps:
                break
        if state.step >= steps:
            break

if mode == "ddp":
    params = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
else:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    params = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
if rank == 0:
    torch.save({"params": params, "step": state.step, "stopped": ckpt.should_stop}, out)
print(f"rank {rank} done at step {state.step}", flush=True)
dist.destroy_process_group()
