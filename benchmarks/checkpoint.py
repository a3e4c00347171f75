"""How long a save blocks the training thread, for a state of about 200 MB.

    python benchmarks/checkpoint.py [--mb 200] [--saves 5] [--no-keras]

Compares cs.Checkpointer's save with async_save (the default), the same save done synchronously,
and Keras' model.save_weights of a model of the same size. Target (issue 6): the async save
blocks for at most 10% of the synchronous save. Also prints the background write's throughput.
The location is a local folder mirrored through colabsession's local copy, as with Drive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def state_of(mb: int) -> dict[str, object]:
    n = mb * 2**20 // 4 // 4
    rng = np.random.default_rng(0)
    return {"weights": [rng.random(n, dtype=np.float32) for _ in range(4)], "epoch": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    os.environ["COLABSESSION_HOME"] = str(tmp / "home")
    import colabsession as cs

    state = state_of(args.mb)
    size = sum(w.nbytes for w in state["weights"])  # type: ignore[attr-defined]
    print(f"python {sys.version.split()[0]}, state {size / 2**20:.0f} MiB, {args.saves} saves each")

    results = {}
    for mode in ("async", "sync"):
        ckpt = cs.Checkpointer(
            tmp / f"drive-{mode}",
            every=None,
            keep_last=2,
            local_dir=tmp / f"local-{mode}",
            async_save=mode == "async",
        )
        blocked, total = [], []
        for step in range(args.saves):
            start = time.perf_counter()
            ckpt.save(step, state)
            blocked.append(time.perf_counter() - start)
            ckpt.wait()
            total.append(time.perf_counter() - start)
        ckpt.close()
        results[mode] = (statistics.median(blocked), statistics.median(total))
        print(
            f"cs.Checkpointer {mode:<5}  blocked {results[mode][0] * 1e3:8.1f} ms   "
            f"whole save (local commit + copy to location) {results[mode][1] * 1e3:8.1f} ms"
        )
    ratio = results["async"][0] / results["sync"][0]
    print(f"async blocks for {ratio * 100:.1f}% of the synchronous save (target <= 10%)")
    print(
        f"background write throughput {size / results['async'][1] / 2**20:.0f} MiB/s "
        "(serialise, fsync, sha256, copy)"
    )

    if args.no_keras:
        return
    try:
        import keras
    except ImportError:
        print("keras is not installed: no comparison")
        return
    n = int(size / 4 / 2) // 4096
    model = keras.Sequential(
        [
            keras.Input((4096,)),
            keras.layers.Dense(n, use_bias=False),
            keras.layers.Dense(4096, use_bias=False),
        ]
    )
    params = model.count_params() * 4
    times = []
    for i in range(args.saves):
        start = time.perf_counter()
        model.save_weights(tmp / f"keras-{i % 2}.weights.h5")
        times.append(time.perf_counter() - start)
    print(
        f"keras save_weights ({params / 2**20:.0f} MiB) blocked "
        f"{statistics.median(times) * 1e3:8.1f} ms"
    )
    ckpt = cs.Checkpointer(tmp / "drive-keras", every=None, keep_last=2, local_dir=tmp / "local-k")
    blocked = []
    for step in range(args.saves):
        start = time.perf_counter()
        ckpt.save(step, {"weights": model.weights})  # variables copied to host inside save()
        blocked.append(time.perf_counter() - start)
        ckpt.wait()
    ckpt.close()
    print(
        f"cs.Checkpointer async with the Keras variables  blocked "
        f"{statistics.median(blocked) * 1e3:8.1f} ms"
    )


if __name__ == "__main__":
    main()
