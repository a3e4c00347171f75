"""How much wall time ``import colabsession`` adds to a bare interpreter start.

    python benchmarks/import_time.py [--runs 40]

Target (issue 2): under 30 ms (median), with none of the heavy modules imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("tensorflow", "keras", "jax", "torch", "numpy", "pydrive2", "googleapiclient")


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    runs = parser.parse_args().runs

    wall("import colabsession")  # warm the file cache and byte-code
    bare, loaded = [], []
    for _ in range(runs):  # interleaved, so drift in machine load hits both alike
        bare.append(wall("pass"))
        loaded.append(wall("import colabsession"))
    check = f"import sys, colabsession; print([m for m in {HEAVY!r} if m in sys.modules])"
    heavy = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    ).stdout.strip()

    added = statistics.median(loaded) - statistics.median(bare)
    print(f"python {sys.version.split()[0]}, {runs} runs each")
    print(f"bare interpreter start      median {statistics.median(bare) * 1e3:7.1f} ms")
    print(f"start + import colabsession median {statistics.median(loaded) * 1e3:7.1f} ms")
    print(f"added by import colabsession       {added * 1e3:7.1f} ms (target < 30 ms)")
    print(f"heavy modules imported: {heavy}")


if __name__ == "__main__":
    main()
