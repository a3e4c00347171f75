"""Run by test_checkpoint_edges' kill tests: save steps 0..N, syncing each before the next, and
be killed while step N is uploaded.

    upload_worker.py mount DRIVE_FOLDER LOCAL_DIR N   a "Drive mount" (a passthrough to a folder)
                                                      whose write of step N stalls half way
    upload_worker.py api ENDPOINT LOCAL_DIR N         the Drive API (the fake server at ENDPOINT)
"""

import os
import sys
import time
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

import colabsession as cs
from colabsession.drive import Location

mode, where, local_dir, last = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


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


if mode == "mount":
    location = Location(StallingMount(), where, "drive:run")
else:
    from google.oauth2 import credentials

    fs = cs.drive.connect(
        credentials=credentials.Credentials(token="test-token"),  # type: ignore[no-untyped-call]
        api_endpoint=where,
        use_for_drive=False,
    )
    location = Location(fs, f"{fs.root}/checkpoints/run", "drive:checkpoints/run (API)")
ckpt = cs.Checkpointer(location, every=None, keep_last=3, local_dir=local_dir, timeout="10min")
for step in range(last + 1):
    ckpt.save(step, {"w": np.full(50_000, step, np.float64)})
    if step < last:
        assert ckpt.sync(60) == []
print("uploading", flush=True)
ckpt.sync(600)
