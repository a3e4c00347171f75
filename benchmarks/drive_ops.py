"""File operations that reach the Drive mount per checkpoint, and the time they cost.

    sudo python benchmarks/drive_ops.py [--latency 0.1] [--saves 6] [--mb 8]

Mounts benchmarks/fuse_latency.py (a passthrough that adds *latency* to every metadata operation,
as each is a round trip on the Drive mount) and saves the same state to it with:

- cs.Checkpointer, its location on the mount and its local mirror on the local disk (as in
  Colab): the operations of the replication, per checkpoint, and the catch-up time (from the
  local commit until the location has it);
- numpy's np.savez to a temporary name, then a rename (the careful hand-written way);
- Keras' model.save_weights, in place;
- orbax's CheckpointManager (if installed), in the default async mode.

Metadata operations are LOOKUP, GETATTR, CREATE, OPEN, FLUSH, RELEASE, UNLINK, RENAME, READDIR,
...; data reads and writes are counted apart and get no latency. Needs Linux, root, libfuse3 and
mfusepy (see fuse_latency.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fuse_latency import Mount  # type: ignore[import-not-found]


def metadata(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    keys = set(before["metadata"]) | set(after["metadata"])
    diff = {k: after["metadata"].get(k, 0) - before["metadata"].get(k, 0) for k in keys}
    return {k: v for k, v in sorted(diff.items()) if v}


def measure(
    mount: Mount, name: str, saves: int, save: Callable[[int], None], settle: Callable[[], None]
) -> dict[str, Any]:
    """Run *save* for steps 0..saves-1; count the steady state (all but the first two)."""
    per_save, seconds = [], []
    for step in range(saves):
        before = mount.counts()
        start = time.perf_counter()
        save(step)
        settle()
        seconds.append(time.perf_counter() - start)
        ops = metadata(before, mount.counts())
        if step >= 2:
            per_save.append(ops)
    total = [sum(ops.values()) for ops in per_save]
    result = {
        "name": name,
        "ops": statistics.median(total),
        "seconds": statistics.median(seconds[2:]),
        "kinds": per_save[-1],
    }
    print(
        f"{name:<44} {result['ops']:>6.0f} ops/checkpoint  {result['seconds']:7.2f} s  "
        f"{json.dumps(result['kinds'])}  (each: {total})",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--saves", type=int, default=6)
    parser.add_argument("--mb", type=int, default=8)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cs-drive-ops-"))
    os.environ["COLABSESSION_HOME"] = str(base / "home")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import colabsession as cs

    n = args.mb * 2**20 // 4 // 4
    rng = np.random.default_rng(0)
    state = {"w": [rng.random(n, dtype=np.float32) for _ in range(4)], "epoch": 1}
    mount = Mount(base, args.latency)
    print(f"latency {args.latency * 1e3:.0f} ms per metadata operation; state {args.mb} MiB")
    try:
        run = mount.point / "cs-run"
        ckpt = cs.Checkpointer(
            run, every=None, keep_last=3, local_dir=base / "local", close_timeout="10min"
        )

        def cs_save(step: int) -> None:
            ckpt.save(step, state, metrics={"loss": 1.0 / (step + 1)})

        measure(
            mount,
            "cs.Checkpointer (mirror -> mount), catch-up",
            args.saves,
            cs_save,
            lambda: ckpt.sync(),
        )
        ckpt.close()

        target = mount.point / "npz"
        target.mkdir()

        def npz_save(step: int) -> None:
            temp = target / f".ckpt-{step}.npz.tmp"
            with open(temp, "wb") as f:
                np.savez(f, *state["w"])  # type: ignore[arg-type]
            os.replace(temp, target / "ckpt.npz")

        measure(mount, "np.savez + rename", args.saves, npz_save, lambda: None)

        try:
            import keras
        except ImportError:
            print("keras is not installed: no save_weights row")
        else:
            model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(n // 256)])
            weights = mount.point / "keras"
            weights.mkdir()
            measure(
                mount,
                "keras model.save_weights (in place)",
                args.saves,
                lambda step: model.save_weights(weights / "latest.weights.h5"),
                lambda: None,
            )

        try:
            import jax.numpy as jnp
            import orbax.checkpoint as ocp
        except ImportError:
            print("orbax is not installed: no orbax row")
        else:
            manager = ocp.CheckpointManager(
                mount.point / "orbax", options=ocp.CheckpointManagerOptions(max_to_keep=3)
            )
            arrays = {f"w{i}": jnp.asarray(w) for i, w in enumerate(state["w"])}
            measure(
                mount,
                "orbax CheckpointManager (async), until done",
                args.saves,
                lambda step: manager.save(step, args=ocp.args.StandardSave(arrays)),
                manager.wait_until_finished,
            )
            manager.close()
    finally:
        mount.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
