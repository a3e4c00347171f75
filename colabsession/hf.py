"""Hugging Face's ``transformers.Trainer`` that survives Colab: its checkpoints kept through
colabsession, and the same cell resuming from the newest valid one.

``import colabsession`` never loads this module (nor transformers); ``cs.hf`` does::

    import colabsession as cs

    trainer = Trainer(model=model, args=TrainingArguments("/content/out", ...), ...)
    cs.hf.train(trainer, run="my-finetune", every="10min")   # re-run the cell to resume

The Trainer's own checkpoint folder (weights, optimizer, scheduler, scaler, RNG states and the
data position, which it uses to resume exactly) is saved as one colabsession checkpoint: written
locally first, checksummed, copied to Drive in the background, old ones removed by ``keep_last``
(the best one by ``metric_for_best_model`` kept too). A resumed run writes the newest valid one
back into ``output_dir`` (and the best one beside it, for ``load_best_model_at_end``) and lets
the Trainer resume from it. Near the session deadline (or on SIGTERM, or a first Ctrl-C) the
Trainer saves and stops at the next step; the logged metrics go to the run's history
(``cs.history(run)``).
"""

from colabsession._training.hf import (
    SessionCallback,
    train,
)

__all__ = [
    "SessionCallback",
    "train",
]
