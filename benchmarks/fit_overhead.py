"""How much slower cs.fit is than plain model.fit on the same model and data.

    python benchmarks/fit_overhead.py [--epochs 4] [--repeats 3]

cs.fit checkpoints at its default interval (10 min: in a run this short, at the end), keeps its
history, and feeds the data in its own seeded order. Target (issue 7): under 3% slower. The
figure is the best of *repeats* alternating runs of each, to keep machine noise out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="cs-fit-bench-")
    os.environ["COLABSESSION_HOME"] = tmp

    import keras
    import numpy as np

    import colabsession as cs

    rng = np.random.default_rng(0)
    x = rng.random((20_000, 256), dtype=np.float32)
    y = (x[:, :10].sum(axis=1) > 5).astype(np.float32)

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        m = keras.Sequential(
            [
                keras.Input((256,)),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dropout(0.2),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        m.compile("adam", "binary_crossentropy", metrics=["accuracy"])
        return m

    def plain() -> float:
        m = model()
        start = time.perf_counter()
        m.fit(x, y, epochs=args.epochs, batch_size=128, verbose=0)
        return time.perf_counter() - start

    def wrapped(i: int) -> float:
        m = model()
        start = time.perf_counter()
        cs.fit(
            m,
            x,
            y,
            run=f"{tmp}/run-{i}",
            epochs=args.epochs,
            batch_size=128,
            seed=0,
            verbose=0,
        )
        return time.perf_counter() - start

    plain()  # warm-up: TensorFlow's first graph builds
    times_plain, times_cs = [], []
    for i in range(args.repeats):
        times_plain.append(plain())
        times_cs.append(wrapped(i))
    best_plain, best_cs = min(times_plain), min(times_cs)
    steps = args.epochs * -(-len(x) // 128)
    print(f"python {sys.version.split()[0]}, {steps} steps of batch 128, best of {args.repeats}")
    print(f"model.fit  {best_plain:7.2f} s ({best_plain / steps * 1e3:.2f} ms/step)")
    print(f"cs.fit     {best_cs:7.2f} s ({best_cs / steps * 1e3:.2f} ms/step)")
    print(f"overhead   {(best_cs / best_plain - 1) * 100:+.1f}% (target < 3%)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
