"""What every trainer does when a run ends: hand the Colab VM back once the run is safe."""

from __future__ import annotations

import importlib
import logging

from colabsession._core.say import say
from colabsession._storage.checkpointer import Checkpointer
from colabsession._storage.replicate import STATES

logger = logging.getLogger(__name__)

SAFE = frozenset({STATES["drive"], STATES["written"]})
"""Where a checkpoint must stand (:meth:`Checkpointer.drive_states`) before the VM goes: on
Drive as Drive itself confirms it, or written to a location that is not the mount (a bucket)."""


def release_when_safe(ckpt: Checkpointer) -> bool:
    """Call ``google.colab.runtime.unassign()`` if the run's newest checkpoint is confirmed at
    its location; else say why the runtime is kept. Call it after ``ckpt.close()``, whose
    final copy to the location is the bounded wait (``close_timeout``). Outside Colab it says
    that it would release and does nothing. Returns whether it released.

    The runtime is never released before the data is safe: a checkpoint only in the local
    mirror, written to the Drive mount but not confirmed by Drive, or in a folder on the VM
    itself keeps the runtime.
    """
    try:
        runtime = importlib.import_module("google.colab.runtime")
    except ImportError:
        say(
            "release_when_done: not on Colab, so there is no runtime to release (on Colab it "
            "is released once the run's last checkpoint is confirmed at its location)"
        )
        return False
    step = ckpt.last_saved_step
    if step is None:
        step = ckpt.latest_step()
    if step is None:
        say("not releasing the runtime: the run has no checkpoint to keep")
        return False
    where = ckpt.drive_states().get(step)
    if where not in SAFE:
        say(
            f"not releasing the runtime: the run's last checkpoint (step {step}) is "
            + (
                f"{where}"
                if where is not None
                else f"in {ckpt.location}, a folder of this VM that goes with it"
            )
            + ". Keep the runtime until it is safe (cs.Checkpointer(run).drive_states() says "
            "where each checkpoint stands), then release it from the Runtime menu"
        )
        return False
    say(f"the run is safe ({ckpt.location}, step {step}: {where}): releasing the runtime")
    runtime.unassign()
    return True
