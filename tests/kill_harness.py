"""Runs a training script as a user would (``python SCRIPT ARGS...``), killing it with SIGKILL at
the instant the environment names, without changing the script:

    KILL_AT=step:N:pre    before the update of this process's N-th optimizer step
    KILL_AT=step:N:post   after it (the weights changed, the loop not told yet)
    KILL_AT=save:N        during colabsession's N-th checkpoint write (written, not committed)
    KILL_AT=torch-save:N  during the N-th torch.save (the Trainer writing its own folder)

With ``CS_TEST_MOUNT_TABLE`` it reads that mount table (one that shows the folder standing in
for Drive as a FUSE mount). Before it kills, it prints ``KILLED <what>`` to stderr, so a test
can tell that the instant came.

    python kill_harness.py SCRIPT [ARGS...]
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any

import torch

# One thread: the suite runs on two cores, and a tiny model gains nothing from more.
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
# A model built before anything seeds (the tutorial's) starts alike in every run, so that runs
# can be compared at all; a resumed run takes its weights from the checkpoint anyway.
torch.manual_seed(0)

kind, _, rest = os.environ.get("KILL_AT", "").partition(":")
count, _, when = rest.partition(":")
target = int(count) if count else 0
seen = 0


def kill(what: str) -> None:
    print(f"KILLED {what}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def tick(what: str) -> None:
    global seen
    seen += 1
    if seen == target:
        kill(f"{what} {seen}")


if kind == "step":

    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        tick(f"{when} step")

    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    register = (
        register_optimizer_step_pre_hook if when == "pre" else register_optimizer_step_post_hook
    )
    register(on_step)
elif kind == "save":
    replace = os.replace

    def replacing(source: Any, destination: Any, **kwargs: Any) -> None:
        # colabsession writes a checkpoint under a temporary name and renames it: a kill here
        # leaves the whole file written but never committed.
        name = os.path.basename(os.fspath(destination))
        if name.startswith("ckpt-") and os.fspath(source).endswith(".tmp"):
            tick("save")
        replace(source, destination, **kwargs)

    os.replace = replacing  # type: ignore[assignment]
elif kind == "torch-save":
    save = torch.save

    def saving(*args: Any, **kwargs: Any) -> Any:
        tick("torch.save")
        return save(*args, **kwargs)

    torch.save = saving

if table := os.environ.get("CS_TEST_MOUNT_TABLE"):
    # The folder that stands in for Drive, seen as a FUSE mount: colabsession keeps a local
    # mirror of it under COLABSESSION_HOME, so a fresh home is a new VM.
    import colabsession._runtime.runtime

    colabsession._runtime.runtime.MOUNT_TABLE = table

script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
