"""Run by test_fit: train a small model with Dropout on shuffled data through cs.fit (150 rows in
batches of 16: the last batch of each epoch is partial), optionally stopped after a given number
of batches, and save the final weights (and the History, as JSON beside them). The stop is a
SIGKILL after the batch's callbacks, or with --interrupt a KeyboardInterrupt right after the
training step and before any callback has seen it, where the notebook's stop button usually
lands."""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import colabsession as cs

location, kill_after, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
interrupt = "--interrupt" in sys.argv
if keras.backend.backend() == "tensorflow":  # (KERAS_BACKEND=jax runs it on JAX: no TensorFlow)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.random((150, 6), dtype=np.float32)
y = (x.sum(axis=1) > 3).astype("float32")
model = keras.Sequential(
    [
        keras.Input((6,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.4),
        keras.layers.Dense(1, activation="sigmoid"),
    ]
)
model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])


class Kill(keras.callbacks.Callback):  # type: ignore[misc]
    batches = 0

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        Kill.batches += 1
        if Kill.batches == kill_after and not interrupt:
            os.kill(os.getpid(), signal.SIGKILL)


make_train_function = model.make_train_function
steps = 0


def interrupting_train_function(force: bool = False) -> object:
    make_train_function(force)
    train = model.train_function

    def step(*args: object) -> object:  # (iterator) on TensorFlow, (state, iterator) on JAX
        global steps
        logs = train(*args)
        steps += 1
        if interrupt and steps == kill_after:
            raise KeyboardInterrupt
        return logs

    model.train_function = step
    return step


model.make_train_function = interrupting_train_function
try:
    history = cs.fit(
        model,
        x,
        y,
        run=location,
        epochs=4,
        batch_size=16,
        seed=7,
        every=None,
        every_steps=None if interrupt else 1,
        callbacks=[Kill()],
        verbose=0,
    )
except KeyboardInterrupt:
    sys.exit(130)
np.savez(out, *[keras.ops.convert_to_numpy(v.value) for v in model.variables])
with open(out + ".json", "w") as f:
    json.dump({"epoch": history.epoch, **history.history}, f)
print("epochs", history.epoch, flush=True)
