"""How long ``cs.probe()`` takes, against asking TensorFlow for its devices.

    python benchmarks/probe.py [--runs 20]

Target (issue 3): under 200 ms on a CPU-only machine, importing no framework. Each figure is the
median over fresh interpreters (a notebook's first call), plus repeated calls in one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time

PROBE = """
import sys, time
t = time.perf_counter()
import colabsession as cs
report = cs.probe()
elapsed = time.perf_counter() - t
heavy = [m for m in ("tensorflow", "keras", "jax", "torch", "numpy") if m in sys.modules]
print(elapsed, report.accelerator, len(report.gpus), heavy)
"""
TF = """
import time
t = time.perf_counter()
import tensorflow as tf
devices = tf.config.list_physical_devices()
print(time.perf_counter() - t, len(devices))
"""


def fresh(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.split(maxsplit=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs

    import colabsession as cs

    fresh(PROBE)  # warm the byte-code and file caches
    cold = [fresh(PROBE) for _ in range(runs)]
    print(f"python {sys.version.split()[0]}, {runs} fresh interpreters")
    print(
        f"cs.probe() incl. import, fresh process  median "
        f"{statistics.median(float(r[0]) for r in cold) * 1e3:8.1f} ms (target < 200 ms)"
    )
    warm = []
    for _ in range(runs):
        start = time.perf_counter()
        cs.probe()
        warm.append(time.perf_counter() - start)
    print(f"cs.probe() repeated in one process     median {statistics.median(warm) * 1e3:8.1f} ms")
    print(f"accelerator: {cold[0][1]}, GPUs: {cold[0][2]}, frameworks imported: {cold[0][3]}")

    if importlib.util.find_spec("tensorflow") is None:
        print("tensorflow is not installed: no comparison")
        return
    tf_runs = [float(fresh(TF)[0]) for _ in range(max(3, runs // 4))]
    print(
        f"import tensorflow + list_physical_devices median "
        f"{statistics.median(tf_runs) * 1e3:8.1f} ms ({len(tf_runs)} fresh interpreters)"
    )


if __name__ == "__main__":
    main()
