"""Getting a dataset of many small files from the Drive mount onto the local disk.

    python benchmarks/data_stage.py [--files 20000] [--latency 0.05] [--sample 1000]

Mounts benchmarks/fuse_latency.py (a passthrough that adds *latency* to every metadata
operation, as each is a round trip on the Drive mount) over a folder of *files* random files of
5-50 KB (JPEG-like: they do not compress) and times, into an empty folder on the local disk:

- ``cs.data.stage`` of the packed dataset, ``cp`` of one large file holding the same bytes
  through the same mount, and ``cp -r`` of the folder from memory to the disk with no mount (the
  cost of creating the files alone), alternating, on the whole dataset;
- ``cp -r`` of the folder, reading every file in place once (as a training loop's first epoch
  does), ``cs.data.stage`` of a folder never packed (file by file, 32 at once) and
  ``cs.data.pack`` through the mount: each costs round trips per file, so each is timed on
  *sample* files of the same sizes (a folder of their own) and scaled to the whole.

Targets (issue 10): staging the packed dataset at least 20x faster than ``cp -r`` and within
1.5x of copying one large file of the same bytes. Needs Linux, root, libfuse3 and mfusepy.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fuse_latency import Mount  # type: ignore[import-not-found]

ROUNDS = int(os.environ.get("ROUNDS", "5"))


def settle() -> None:
    """Let the disk write back what the round before left (see env_restore.py)."""
    os.sync()
    time.sleep(10)


def make_files(folder: Path, count: int, seed: int = 0) -> int:
    """*count* random files of 5-50 KB in 10 class folders; their total size."""
    rng = random.Random(seed)
    total = 0
    for index in range(count):
        klass = folder / f"class{index % 10:02d}"
        klass.mkdir(parents=True, exist_ok=True)
        size = rng.randint(5_000, 50_000)
        (klass / f"img{index:06d}.jpg").write_bytes(rng.randbytes(size))
        total += size
    return total


def timed(work: Callable[[], object], before: Callable[[], None]) -> float:
    before()
    settle()
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per metadata op")
    parser.add_argument("--sample", type=int, default=1_000, help="files for cp -r and reads")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="cs-data-", dir="/dev/shm"))  # the "Drive" side
    disk = Path(tempfile.mkdtemp(prefix="cs-data-local-"))  # the VM's local disk
    total = make_files(base / "source" / "flowers", args.files)
    sample_bytes = make_files(base / "source" / "sample", args.sample)
    with open(base / "source" / "one-large-file.bin", "wb") as f:
        f.write(os.urandom(total))
    mount = Mount(base, args.latency)
    env = {
        **os.environ,
        "COLABSESSION_HOME": str(disk / "home"),
        "COLABSESSION_DRIVE": str(disk / "drive"),
    }
    dest = disk / "staged"

    def clean() -> None:
        shutil.rmtree(dest, ignore_errors=True)
        for left in disk.glob(".staged*"):
            shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink()
        shutil.rmtree(disk / "home" / "datasets", ignore_errors=True)
        (disk / "big.bin").unlink(missing_ok=True)

    print(f"{args.files:,} files, {total / 1e6:.0f} MB; {args.latency * 1000:.0f} ms per operation")
    import colabsession as cs

    os.environ.update(env)
    try:
        # Packed once, from the folder itself: packing through the mount costs round trips per
        # file like any reading of the folder, so it is timed on the sample below.
        cs.data.pack(base / "source" / "flowers", base / "source" / "packs" / "flowers.packed")
        packs = str(mount.point / "packs" / "flowers.packed")
        staged, large, floor = [], [], []
        for _ in range(ROUNDS):  # alternating, so that all three meet the same disk
            large.append(
                timed(
                    lambda: subprocess.run(
                        ["cp", str(mount.point / "one-large-file.bin"), str(disk / "big.bin")],
                        check=True,
                    ),
                    clean,
                )
            )
            staged.append(timed(lambda: cs.data.stage(packs, dest), clean))
            floor.append(
                timed(
                    lambda: subprocess.run(
                        ["cp", "-r", str(base / "source" / "flowers"), str(dest)], check=True
                    ),
                    clean,
                )
            )
        stage_s, large_s = statistics.median(staged), statistics.median(large)
        floor_s = statistics.median(floor)
        print(f"cs.data.stage of the packed dataset: {stage_s:.2f} s (rounds {staged})")
        print(f"cp of one large file of the same bytes: {large_s:.2f} s (rounds {large})")
        print(f"cp -r of the folder from memory, no mount: {floor_s:.2f} s (rounds {floor})")

        sample = mount.point / "sample"
        scale = total / sample_bytes
        cp_r = timed(
            lambda: subprocess.run(["cp", "-r", str(sample), str(dest)], check=True), clean
        )

        def read_all() -> None:
            for path in sorted(sample.rglob("*.jpg")):
                path.read_bytes()

        read_in_place = timed(read_all, clean)
        unpacked = timed(lambda: cs.data.stage(sample, dest, workers=32), clean)
        packing = timed(
            lambda: cs.data.pack(sample, mount.point / "packs" / "sample.packed"), clean
        )
        print(
            f"on {args.sample:,} files: cp -r {cp_r:.1f} s, read in place {read_in_place:.1f} s, "
            f"stage never packed {unpacked:.1f} s, pack {packing:.1f} s; scaled by {scale:.1f}"
        )
        print()
        print("| to have the data on the local disk | time | vs `cs.data.stage` (packed) |")
        print("|---|---|---|")
        rows = [
            ("`cs.data.stage` of the packed dataset (median)", stage_s),
            ("`cp` of one large file of the same bytes (median)", large_s),
            ("`cp -r` of the folder from memory to the disk, no mount (median)", floor_s),
            ("`cs.data.stage` of the folder never packed, 32 at once*", unpacked * scale),
            ("`cp -r` of the folder*", cp_r * scale),
            ("reading every file in place once*", read_in_place * scale),
        ]
        for name, seconds in rows:
            print(f"| {name} | {seconds:.1f} s | {seconds / stage_s:.1f}x |")
        print(f"| `cs.data.pack` through the mount, once* | {packing * scale:.1f} s | |")
        print(f"\n* timed on {args.sample:,} files of the same sizes, scaled by {scale:.1f}")
        print(
            f"targets: cp -r / stage = {cp_r * scale / stage_s:.0f}x (>= 20x); "
            f"stage / one large file = {stage_s / large_s:.2f}x (<= 1.5x); "
            f"stage / creating the files from memory = {stage_s / floor_s:.2f}x"
        )
    finally:
        mount.close()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)


if __name__ == "__main__":
    main()
