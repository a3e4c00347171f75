"""A plain PyTorch loop that survives Colab: resumes at the exact batch, bit-identical.

``import colabsession`` never loads this module (nor torch); ``cs.torch`` or
``import colabsession.torch`` does::

    import colabsession as cs
    from colabsession.torch import ResumableLoader, TrainingState

    loader = ResumableLoader(train_set, batch_size=64, shuffle=True, seed=0, num_workers=2)
    state = TrainingState(model, optimizer, scheduler=scheduler, loader=loader)
    with cs.Checkpointer("my-run", every="10min") as ckpt:
        for epoch in state.epochs(10, ckpt):    # resumes; stops at the deadline, SIGTERM, Ctrl-C
            for x, y in loader:
                loss = train_step(x, y)
                state.step += 1
                ckpt.maybe_save(state.step, state.state_dict, metrics={"loss": loss.item()})

What makes it exact: the data order is a pure function of ``(seed, epoch)`` and a resumed epoch
skips the batches already done (their indices are never loaded); the checkpoint holds the model,
the optimizer, the scheduler, the gradient scaler and every random state (Python, NumPy, torch's
CPU and CUDA generators); each epoch's DataLoader workers are seeded from ``(seed, epoch)``, never
from torch's global generator, so starting a DataLoader does not shift the model's randomness.

Under ``torchrun`` (DDP, FSDP2), every rank makes a :class:`JobCheckpointer` and a
:class:`DistributedState`, and the loader shards (``num_replicas=``, ``rank=``)::

    loader = ResumableLoader(train_set, batch_size=64, shuffle=True,
                             num_replicas=dist.get_world_size(), rank=dist.get_rank())
    state = DistributedState(model, optimizer, loader=loader)
    with JobCheckpointer("my-run", every="10min") as ckpt:
        for epoch in state.epochs(10, ckpt):
            for x, y in loader:
                train_step(x, y)
                state.step += 1
                ckpt.maybe_save(state.step, state)   # every rank, every step: agreed
"""

from colabsession._runtime.precision import Precision
from colabsession._training.distributed import DistributedState, JobCheckpointer
from colabsession._training.torch import (
    ResumableLoader,
    TrainingState,
    precision,
    rng_state,
    set_rng_state,
)

__all__ = [
    "DistributedState",
    "JobCheckpointer",
    "Precision",
    "ResumableLoader",
    "TrainingState",
    "precision",
    "rng_state",
    "set_rng_state",
]
