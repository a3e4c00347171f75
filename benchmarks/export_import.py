"""Export and import of a checkpoint beside what a user would write by hand.

    PYTHONPATH=$PWD python benchmarks/export_import.py [--mb 64] [--runs 3]

Saves a state of *mb* MiB of PyTorch tensors (half float32, half bfloat16, in 16 tensors) to a
run in a temporary folder on the local disk, then times, best of *runs*:
``cs.export_checkpoint`` to safetensors (+ JSON) and to a torch.save file, and
``cs.import_checkpoint`` of each into a new run; beside them ``safetensors.torch.save_file`` /
``load_file`` and ``torch.save`` / ``torch.load(weights_only=True)`` of the same tensors (what a
user would call, without colabsession's restore, verification and save). Also the restore of
the run (``Checkpointer.restore()``), which reads in 8 MiB chunks to report progress.
Needs torch and safetensors.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def best(runs: int, job: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        job()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["COLABSESSION_HOME"] = str(root / "home")
        import colabsession as cs

        per = (args.mb << 20) // 16
        state = {
            f"layer{i}": torch.randn(per // 4)
            if i % 2
            else torch.randn(per // 2).to(torch.bfloat16)
            for i in range(16)
        }
        with cs.Checkpointer(root / "run", every=None) as ckpt:
            ckpt.save(1, {"model": state, "step": 1})
        counter = iter(range(1 << 30))

        rows = {
            "restore() (colabsession)": best(
                args.runs, lambda: cs.Checkpointer(root / "run", every=None).restore()
            ),
            "export_checkpoint -> safetensors": best(
                args.runs, lambda: cs.export_checkpoint(root / "run", root / "m.safetensors")
            ),
            "safetensors.torch.save_file": best(
                args.runs, lambda: save_file(state, root / "plain.safetensors")
            ),
            "import_checkpoint <- safetensors": best(
                args.runs,
                lambda: cs.import_checkpoint(root / "m.safetensors", root / f"in{next(counter)}"),
            ),
            "safetensors.torch.load_file": best(
                args.runs, lambda: load_file(root / "plain.safetensors")
            ),
            "export_checkpoint -> torch.save": best(
                args.runs, lambda: cs.export_checkpoint(root / "run", root / "m.pt")
            ),
            "torch.save": best(args.runs, lambda: torch.save(state, root / "plain.pt")),
            "import_checkpoint <- torch.save": best(
                args.runs, lambda: cs.import_checkpoint(root / "m.pt", root / f"in{next(counter)}")
            ),
            "torch.load(weights_only=True)": best(
                args.runs, lambda: torch.load(root / "plain.pt", weights_only=True)
            ),
        }
    print(f"{args.mb} MiB of tensors, best of {args.runs}")
    for name, seconds in rows.items():
        print(f"{name:<36} {seconds:7.3f} s  {args.mb / seconds:8.0f} MiB/s")


if __name__ == "__main__":
    main()
