"""The main job: train a small CNN on scikit-learn's bundled digits (no download) with cs.fit.

    colabsession demo            # or: python -m colabsession demo

Interrupt it (Ctrl-C, or the notebook's stop button) and run it again: it resumes where it
stopped. Needs TensorFlow and scikit-learn: the ``demo`` extra (docs/install.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from colabsession._core.optional import require

__all__ = ["digits_data", "digits_model", "run"]


@contextlib.contextmanager
def _native_start_up_lines_hidden() -> Iterator[None]:
    """Hide the C++ INFO and WARNING lines (``I0000 ...``) a native library writes straight to
    file descriptor 2 while it loads; every other line is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                noise = re.match(r"[IW]\d{4} |WARNING: All log messages before absl", line)
                if not noise:
                    sys.stderr.write(line)
            sys.stderr.flush()


def digits_data(validation: float = 0.15) -> tuple[Any, Any, Any, Any]:
    """scikit-learn's 1,797 handwritten 8x8 digits as (x_train, y_train, x_val, y_val)."""
    import numpy as np

    datasets = require("sklearn.datasets", extra="demo", purpose="the demo", package="scikit-learn")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(1234).permutation(len(x))  # a fixed split across sessions
    x, y = x[order], y[order]
    cut = int(len(x) * (1 - validation))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def digits_model() -> Any:
    """A small CNN with Dropout, compiled; build it inside ``strategy.scope()``."""
    keras = require("keras", extra="demo", purpose="the demo")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def run(
    *,
    run: str = "digits-cnn",
    epochs: int = 20,
    every: str = "5s",
    verbose: Any = 2,
    restart: bool = False,
    **renamed: Any,
) -> Any:
    """Probe the hardware, then train (or resume) the digits CNN; returns the History.
    *run* is the run: a name (``drive:checkpoints/<name>``) or a location, as for
    ``cs.Checkpointer``. *restart* starts the run over (its earlier checkpoints are set aside,
    not deleted). ``name=`` and ``location=`` are the deprecated names of *run*."""
    import colabsession as cs
    from colabsession._core.deprecation import warn_renamed
    from colabsession._runtime.runtime import run_again
    from colabsession._storage.runs import run_location

    unknown = sorted(set(renamed) - {"name", "location"})
    if unknown:
        raise TypeError(f"run() got an unexpected keyword argument {unknown[0]!r}")
    for old in ("name", "location"):  # location last: it placed the run that name= named
        if renamed.get(old) is not None:
            warn_renamed(f"colabsession.demo.run({old}=...)", "run=")
            run = renamed[old]

    # TensorFlow's C++ start-up lines (no CUDA, CPU instructions, oneDNN) come twice, from two
    # of its libraries, and some before its log level is read; the probe table says it all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _native_start_up_lines_hidden():
        require("tensorflow", extra="demo", purpose="the demo")

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise cs.ConfigError(f"epochs must be a positive whole number, not {epochs!r}")
    report = cs.probe()
    print(report.table(), end="\n\n")
    x, y, x_val, y_val = digits_data()
    strategy = cs.strategy(report)
    cs.precision(report=report)
    with strategy.scope():
        model = digits_model()
    history = cs.fit(
        model,
        x,
        y,
        run=run,
        epochs=epochs,
        batch_size=64,
        validation_data=(x_val, y_val),
        seed=0,
        every=every,
        verbose=verbose,
        restart=restart,
    )
    where = run
    done = len(history.epoch)
    if history.epoch:
        last = {k: round(v[-1], 4) for k, v in history.history.items()}
        print(f"\n{min(done, epochs)} of {epochs} epochs done; last epoch: {last}")
    loc = run_location(run)
    print(f"checkpoints and history: {loc}" + (f" ({loc.path})" if str(loc) != loc.path else ""))
    if done >= epochs:
        print(
            f"The run is finished. `colabsession ckpt plot {where}` draws its losses; "
            "`colabsession demo --restart` trains it again from the start."
        )
    else:
        print(
            f"Interrupt it (Ctrl-C) whenever you like and {run_again()}: it resumes. "
            f"`colabsession ckpt history {where}` shows every session's losses."
        )
    return history
