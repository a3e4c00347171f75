"""Run by test_keras_script: run a training script as ``python script.py`` would, with the
test's hooks around it, then save what it trained.

The hooks make two runs of one script comparable and kill it where the test says:
- the same start in every run (Keras' global seed, TensorFlow's deterministic ops, and cs.fit's
  data-order seed when the script gives none: cs.fit draws one and keeps it in the checkpoint);
- a save every 3 batches (the script keeps cs.fit's default every="10min", which saves nothing
  in a run this short);
- KILL_AT_BATCH=n: SIGKILL after the n-th batch of this process (its callbacks have run, and the
  save they started may still be writing);
- KILL_IN_SAVE=n: SIGKILL in the n-th checkpoint write of this process, after the file's bytes
  and before its fsync and rename.
At the end the final weights go to OUT (.npz) and cs.fit's History to OUT.json."""

import json
import os
import runpy
import signal
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import colabsession as cs

script, out = sys.argv[1], sys.argv[2]
kill_at_batch = int(os.environ.get("KILL_AT_BATCH", "0"))
kill_in_save = int(os.environ.get("KILL_IN_SAVE", "0"))

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)


class Kill(keras.callbacks.Callback):  # type: ignore[misc]
    batches = 0

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        Kill.batches += 1
        if Kill.batches == kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)


saves = 0
fsync = os.fsync


def fsync_or_kill(fd: Any) -> None:
    """A checkpoint is written under a temporary name ``.ckpt-...tmp``, fsynced, then renamed."""
    global saves
    if kill_in_save and "/.ckpt-" in os.readlink(f"/proc/self/fd/{fd}"):
        saves += 1
        if saves == kill_in_save:
            os.kill(os.getpid(), signal.SIGKILL)
    fsync(fd)


os.fsync = fsync_or_kill
fit = cs.fit
histories: list[Any] = []


def fit_with_hooks(*args: Any, callbacks: Sequence[Any] = (), **kwargs: Any) -> Any:
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("every_steps", 3)
    history = fit(*args, callbacks=[*callbacks, Kill()], **kwargs)
    histories.append(history)
    return history


cs.fit = fit_with_hooks
names = runpy.run_path(script, run_name="__main__")
model = names["model"]
np.savez(out, *[keras.ops.convert_to_numpy(v.value) for v in model.variables])
(history,) = histories
with open(out + ".json", "w") as f:
    json.dump({"epoch": history.epoch, **history.history}, f)
