"""Run by test_checkpoint_edges' kill test: save steps 0..N to a "Drive mount" (a passthrough to
a folder) whose upload of step N stops half way, as a runtime killed mid-upload leaves it."""

import os
import sys
import time
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

import colabsession as cs
from colabsession.drive import Location

drive, local_dir, last = sys.argv[1], sys.argv[2], int(sys.argv[3])


class StallingMount(LocalFileSystem):  # type: ignore[misc]
    """Writes of step *last*'s checkpoint reach the folder half way, then stall for good."""

    cachable = False

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super().open(path, mode, **kwargs)
        if "w" not in mode or f"ckpt-{last:012d}." not in path:
            return f
        real_write = f.write

        def write(data: bytes) -> int:
            real_write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            print("cut", flush=True)
            time.sleep(600)  # killed meanwhile
            return len(data)

        f.write = write
        return f


location = Location(StallingMount(), drive, "drive:run")
ckpt = cs.Checkpointer(location, every=None, keep_last=3, local_dir=local_dir, timeout="10min")
for step in range(last + 1):
    ckpt.save(step, {"w": np.full(50_000, step, np.float64)})
    if step < last:
        assert ckpt.sync(60) == []
ckpt.sync(600)
