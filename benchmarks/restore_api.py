"""Restore on a new VM through the Drive API: bytes downloaded, requests, time and memory.

    PYTHONPATH=$PWD python benchmarks/restore_api.py [--mb 16] [--keep 3] [--runs 3] [--show]

Starts the fake Drive API server of the tests (a benchmark importing from tests/ is acceptable
here: tests/fake_drive_api.py is loaded from this checkout by its path, so that the same server,
with its byte counter, serves whichever colabsession is first on PYTHONPATH, e.g. an older
checkout's for a before-and-after), saves *keep* + 2 checkpoints of a state of *mb* MiB with
``cs.Checkpointer(keep_last=keep)`` to a Drive API location, then restores the newest in a new
process with an empty local_dir (a new VM), *runs* times. Reported: the bytes of file content the
server sent (relative to one checkpoint file), the requests it answered, the wall time of the
restore (a new Checkpointer and its ``restore()``; the process start, imports and sign-in are not
counted), and the restoring process's peak resident memory above what it held just before;
``--show`` lists the requests of the last restore.
Needs the drive extra (pydrive2) and Linux (the peak is read from /proc/self/status).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RUN = "checkpoints/restore-api"


def load_fake() -> Any:
    path = Path(__file__).resolve().parent.parent / "tests" / "fake_drive_api.py"
    spec = importlib.util.spec_from_file_location("fake_drive_api", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def connect(endpoint: str) -> Any:
    import colabsession as cs

    fake = load_fake()
    return cs.drive.connect(
        credentials=fake.user_credentials(), api_endpoint=endpoint, use_for_drive=False
    )


def status(key: str) -> int:
    """A figure of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(endpoint: str, local_dir: str) -> None:
    """The new VM: sign in, say ready, wait for the go, restore, report as JSON."""
    import colabsession as cs
    from colabsession.drive import Location

    fs = connect(endpoint)
    location = Location(fs, f"{fs.root}/{RUN}", f"drive:{RUN} (API)")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here
    before = status("VmRSS")
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    restored = cs.Checkpointer(location, local_dir=local_dir).restore()
    seconds = time.perf_counter() - start
    assert restored is not None
    print(
        json.dumps({"step": restored.step, "seconds": seconds, "peak": status("VmHWM") - before}),
        flush=True,
    )


def restore_once(fake: Any, endpoint: str, local_dir: Path) -> dict[str, Any]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", endpoint, str(local_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    served, requests = fake.state.served, len(fake.state.requests)
    process.stdin.write("go\n")
    process.stdin.flush()
    result: dict[str, Any] = json.loads(process.stdout.readline())
    process.wait(timeout=60)
    result.update(served=fake.state.served - served, requests=fake.state.requests[requests:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=16)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--show", action="store_true", help="list the requests of a restore")
    parser.add_argument("--child", nargs=2, metavar=("ENDPOINT", "LOCAL_DIR"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    base = Path(tempfile.mkdtemp(prefix="cs-restore-api-"))
    os.environ["COLABSESSION_HOME"] = str(base / "home")
    import colabsession as cs
    from colabsession.drive import Location

    fake = load_fake().FakeDrive().start()
    try:
        fs = connect(fake.endpoint)
        location = Location(fs, f"{fs.root}/{RUN}", f"drive:{RUN} (API)")
        n = args.mb * 2**20 // 4 // 4
        rng = np.random.default_rng(0)
        state = {"w": [rng.random(n, dtype=np.float32) for _ in range(4)], "epoch": 1}
        saves = args.keep + 2
        with cs.Checkpointer(
            location, every=None, keep_last=args.keep, local_dir=base / "vm1"
        ) as ckpt:
            for step in range(saves):
                ckpt.save(step, state)
        one = max(p.stat().st_size for p in (base / "vm1").rglob("*") if p.is_file())
        print(f"colabsession {cs.__version__} from {Path(cs.__file__).parent}")
        print(
            f"{saves} saves of {args.mb} MiB, keep_last={args.keep}; "
            f"one checkpoint file {one / 2**20:.1f} MiB"
        )
        runs = [restore_once(fake, fake.endpoint, base / f"vm{i + 2}") for i in range(args.runs)]
        assert all(r["step"] == saves - 1 for r in runs), runs
        print(
            f"{'restore on a new VM':<24} {'downloaded':>12} {'requests':>9} "
            f"{'time':>8} {'peak RSS increase':>20}"
        )
        for r in runs:
            print(
                f"{'':<24} {r['served'] / one:>11.2f}x {len(r['requests']):>9} "
                f"{r['seconds']:>7.2f}s {r['peak'] / 2**20:>9.1f} MiB ({r['peak'] / one:.2f}x)"
            )
        print(
            f"{'median':<24} {statistics.median(r['served'] for r in runs) / one:>11.2f}x "
            f"{statistics.median(len(r['requests']) for r in runs):>9.0f} "
            f"{statistics.median(r['seconds'] for r in runs):>7.2f}s "
            f"{statistics.median(r['peak'] for r in runs) / 2**20:>9.1f} MiB"
        )
        if args.show:
            print("\n".join(runs[-1]["requests"]))
    finally:
        fake.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
