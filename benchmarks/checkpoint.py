"""How long a save blocks training, and how long until it is durable, for about 200 MiB of state.

    python benchmarks/checkpoint.py [--mb 200] [--saves 5]

Side by side in one run (rows whose library is missing are skipped; orbax and JAX are optional):

Blocked time per save (the training thread waits this long):
- a plain memcpy of the numpy state into reused buffers: the floor for mutable arrays;
- cs.Checkpointer async save of the numpy state, of JAX arrays, of TensorFlow variables read as
  tensors, and of a Keras model's variables (as cs.keras takes them);
- orbax's async save of the JAX arrays;
- TensorFlow's async tf.train.Checkpoint of the variables.

Time until durable (on the local disk, fsynced):
- writing the same bytes with one fsync;
- a synchronous cs.Checkpointer save (arrays, manifest, CRC32C while writing, fsync, rename).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timed(saves: int, save: Callable[[int], Any], after: Callable[[], Any]) -> float:
    """The median time *save* blocks; *after* (not timed) lets the write finish."""
    times = []
    for step in range(saves):
        start = time.perf_counter()
        save(step)
        times.append(time.perf_counter() - start)
        after()
    return statistics.median(times[1:] if saves > 2 else times)


def row(name: str, seconds: float, base: float | None = None) -> None:
    ratio = f"  {seconds / base:5.2f}x memcpy" if base else ""
    print(f"  {name:<58} {seconds * 1e3:9.1f} ms{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--saves", type=int, default=7)
    parser.add_argument("--skip-tf", action="store_true", help="no TensorFlow/Keras rows")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    os.environ["COLABSESSION_HOME"] = str(tmp / "home")
    import colabsession as cs

    n = args.mb * 2**20 // 4 // 4
    rng = np.random.default_rng(0)
    weights = [rng.random(n, dtype=np.float32) for _ in range(4)]
    size = sum(w.nbytes for w in weights)
    print(f"python {sys.version.split()[0]}, state {size / 2**20:.0f} MiB, median of {args.saves}")

    def checkpointer(name: str, **options: Any) -> Any:
        return cs.Checkpointer(tmp / name, every=None, keep_last=2, **options)

    print("Blocked per save:")
    # The memcpy and the save alternate, so both meet the same machine (the previous save's
    # disk writes, the other core's work).
    spare = [np.empty_like(w) for w in weights]
    for s in spare:
        s.fill(0)
    ckpt = checkpointer("numpy")
    copies, saves = [], []
    for step in range(2 * args.saves):
        start = time.perf_counter()
        for target, source in zip(spare, weights, strict=True):
            np.copyto(target, source)
        copies.append(time.perf_counter() - start)
        start = time.perf_counter()
        ckpt.save(step, {"w": weights})
        saves.append(time.perf_counter() - start)
        ckpt.wait()
    ckpt.close()
    memcpy = statistics.median(copies[2:])
    row("memcpy into reused buffers (numpy)", memcpy)
    row("cs.Checkpointer async, numpy arrays", statistics.median(saves[2:]), memcpy)

    try:
        import jax.numpy as jnp
    except ImportError:
        print("  (jax is not installed: no JAX rows)")
    else:
        arrays = [jnp.asarray(w) for w in weights]
        arrays[0].block_until_ready()
        ckpt = checkpointer("jax")
        contenders: dict[str, tuple[Callable[[int], Any], Callable[[], Any]]] = {
            "cs.Checkpointer async, JAX arrays": (
                lambda s: ckpt.save(s, {"w": arrays}),
                ckpt.wait,
            )
        }
        try:
            import orbax.checkpoint as ocp
        except ImportError:
            print("  (orbax is not installed: no orbax row)")
            manager = None
        else:
            manager = ocp.CheckpointManager(
                tmp / "orbax", options=ocp.CheckpointManagerOptions(max_to_keep=2)
            )
            tree = {f"w{i}": a for i, a in enumerate(arrays)}
            contenders["orbax CheckpointManager async, JAX arrays"] = (
                lambda s: manager.save(s, args=ocp.args.StandardSave(tree)),
                manager.wait_until_finished,
            )
        # Round by round, one save of each, so both meet the same machine.
        blocked: dict[str, list[float]] = {name: [] for name in contenders}
        for step in range(args.saves):
            for name, (save, after) in contenders.items():
                start = time.perf_counter()
                save(step)
                blocked[name].append(time.perf_counter() - start)
                after()
        for name, times in blocked.items():
            row(f"{name} (min {min(times[1:]) * 1e3:.1f})", statistics.median(times[1:]), memcpy)
        ckpt.close()
        if manager is not None:
            manager.close()

    if args.skip_tf:
        print("  (--skip-tf: no TensorFlow rows)")
        tf = None
    else:
        try:
            import tensorflow as tf
        except ImportError:
            print("  (tensorflow is not installed: no TensorFlow rows)")
            tf = None
    if tf is not None:
        variables = [tf.Variable(w) for w in weights]
        ckpt = checkpointer("tf")
        row(
            "cs.Checkpointer async, tf.Variable.read_value() tensors",
            timed(
                args.saves,
                lambda s: ckpt.save(s, {"w": [v.read_value() for v in variables]}),
                ckpt.wait,
            ),
            memcpy,
        )
        ckpt.close()
        tf_ckpt = tf.train.Checkpoint(w=variables)
        options = tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)
        row(
            "tf.train.Checkpoint async write",
            timed(
                args.saves,
                lambda s: tf_ckpt.write(str(tmp / "tf" / f"c{s % 2}"), options=options),
                tf_ckpt.sync,
            ),
            memcpy,
        )
        import keras

        units = n // 4096
        model = keras.Sequential(
            [keras.Input((4096,)), keras.layers.Dense(units), keras.layers.Dense(4096)]
        )
        model.compile("adam", "mse")
        model.optimizer.build(model.trainable_variables)
        keras_bytes = sum(v.numpy().nbytes for v in model.variables + model.optimizer.variables)
        from colabsession.keras import SessionCheckpoint

        callback = SessionCheckpoint(tmp / "keras", every=None, verbose=False)
        callback.set_model(model)
        callback.set_params({"epochs": 1, "steps": 10})
        ckpt = callback.ckpt
        gather = callback._state  # what the callback saves: the model's and optimizer's variables
        every = model.variables + model.optimizer.variables
        spare_k = [np.empty(v.shape, v.dtype) for v in every]

        def copy_all(_: int) -> None:
            for target, variable in zip(spare_k, every, strict=True):
                np.copyto(target, variable.numpy())

        copy = timed(args.saves, copy_all, list)
        row(f"Keras variables ({keras_bytes / 2**20:.0f} MiB with Adam): .numpy() copies", copy)
        row(
            "cs.keras state of them, async save",
            timed(args.saves, lambda s: ckpt.save(s, gather()), ckpt.wait),
        )
        ckpt.close()
        save_weights = timed(
            args.saves, lambda s: model.save_weights(tmp / f"k{s % 2}.weights.h5"), lambda: None
        )
        row("Keras model.save_weights (synchronous)", save_weights)

    print("Until durable (local disk, fsynced), alternating, each a new file + delete an old one:")
    data = b"".join(w.tobytes() for w in weights)
    (tmp / "raw").mkdir()
    ckpt = cs.Checkpointer(tmp / "sync", every=None, keep_last=2, async_save=False)
    plain, whole = [], []
    for step in range(2 * args.saves):
        start = time.perf_counter()
        with open(tmp / "raw" / f"{step}.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if step >= 2:
            (tmp / "raw" / f"{step - 2}.bin").unlink()
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        ckpt.save(step, {"w": weights})
        whole.append(time.perf_counter() - start)
    ckpt.close()
    row("the same bytes: one write + fsync", statistics.median(plain[2:]))
    row(
        "cs.Checkpointer synchronous save (+ CRC32C, manifest, rename)",
        statistics.median(whole[2:]),
    )
    print(
        f"  ratio {statistics.median(whole[2:]) / statistics.median(plain[2:]):.2f}x "
        "(target <= 1.5x)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
