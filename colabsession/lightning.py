"""PyTorch Lightning's ``Trainer`` that survives Colab: saves through colabsession (local first,
copied to Drive in the background), a stop before the session's deadline, an exact resume
(inside an epoch with a stateful train loader) and the run's history.

``import colabsession`` never loads this module (nor Lightning); ``cs.lightning`` does::

    import colabsession as cs
    import lightning as L

    session = cs.lightning.SessionCheckpoint("my-run", every="10min")
    trainer = L.Trainer(max_epochs=10, callbacks=[session])
    trainer.fit(model, train_loader, ckpt_path=session.ckpt_path())  # re-run the cell to resume

For an exact mid-epoch resume give the Trainer a train loader that keeps its position:
torchdata's ``StatefulDataLoader`` or :class:`colabsession.torch.ResumableLoader`.
"""

from colabsession._training.lightning import (
    RunCheckpointIO,
    SessionCheckpoint,
)

__all__ = [
    "RunCheckpointIO",
    "SessionCheckpoint",
]
