"""Run by test_torch: a small PyTorch loop (Dropout, a shuffled loader with workers, AdamW, a
scheduler) that resumes from its checkpoints and kills itself with SIGKILL at a given step.

    python torch_worker.py LOCATION OUT [KILL_AT_STEP] [WORKERS]
"""

from __future__ import annotations

import os
import signal
import sys

import torch

import colabsession as cs
from colabsession.torch import ResumableLoader, TrainingState

location, out = sys.argv[1], sys.argv[2]
kill_at = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
workers = int(sys.argv[4]) if len(sys.argv) > 4 else 2
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

data = torch.utils.data.TensorDataset(torch.randn(90, 8), torch.randint(0, 3, (90,)))
model = torch.nn.Sequential(
    torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3)
)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.7)
loader = ResumableLoader(data, batch_size=8, shuffle=True, seed=1, num_workers=workers)
state = TrainingState(model, optimizer, scheduler=scheduler, loader=loader)

with cs.Checkpointer(location, every=None, every_steps=3, keep_last=2) as ckpt:
    for _epoch in state.epochs(4, ckpt):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            state.step += 1
            ckpt.maybe_save(state.step, state.state_dict, metrics={"loss": loss.item()})
            if state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
print("done", state.step, flush=True)
