"""Bringing a Hugging Face hub cache back from the Drive mount, and saving it again.

    python benchmarks/cache_restore.py [--model-mb 500] [--latency 0.02] [--rounds 3]

Mounts benchmarks/fuse_latency.py (a passthrough that adds *latency* to every metadata
operation, as each is a round trip on the Drive mount) and, on it, a hub cache holding one model
(*model-mb* MB of random weights, which do not compress, and the small files a hub repository
has: config, tokenizer, ``refs``, two revisions' snapshot folders of links into ``blobs/``).
Times, alternating, into an empty folder on the local disk:

- ``cs.cache.restore`` of the cache saved with ``cs.cache.save`` on the mount;
- ``cp -r`` of the cache folder kept as it is on the mount (what a user who points
  ``HF_HOME`` at Drive and copies it back does; the mount holds no symbolic links, so each
  revision's snapshot holds whole copies, as huggingface_hub writes them there);

and then, on the restored machine, ``cs.cache.save`` with nothing new (what a background
``cs.cache.keep`` or a save at the end costs) and after one more small file. Needs Linux, root,
libfuse3 and mfusepy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fuse_latency import Mount  # type: ignore[import-not-found]

REPO = "models--org--model"


def make_cache(hub: Path, model_mb: int) -> None:
    repo = hub / REPO
    files = {
        "model.safetensors": os.urandom(model_mb << 20),
        "config.json": json.dumps({"hidden_size": 768}).encode(),
        "tokenizer.json": os.urandom(700_000),
        "tokenizer_config.json": b"{}",
        "vocab.txt": os.urandom(200_000),
        "special_tokens_map.json": b"{}",
    }
    for revision in ("a" * 40, "b" * 40):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for name, data in files.items():
            sha = hashlib.sha256(data).hexdigest()
            (repo / "blobs").mkdir(exist_ok=True)
            if not (repo / "blobs" / sha).exists():
                (repo / "blobs" / sha).write_bytes(data)
            (snapshot / name).symlink_to(f"../../blobs/{sha}")
        files["config.json"] = json.dumps({"hidden_size": 768, "revision": 2}).encode()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)


def settle() -> None:
    subprocess.run(["sync"], check=False)
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-mb", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    mount = Mount(base, args.latency)
    disk = base / "disk"
    env = os.environ
    try:
        env["COLABSESSION_DRIVE"] = str(mount.point)
        env["COLABSESSION_HOME"] = str(disk / "home-0")
        make_cache(disk / "hub-0", args.model_mb)
        env["HF_HUB_CACHE"] = str(disk / "hub-0")
        import colabsession as cs

        location = str(mount.point / "caches")
        started = time.perf_counter()
        cs.cache.save("huggingface", location=location)
        first_save = time.perf_counter() - started
        # The mount holds no symbolic links (nor does Drive's): huggingface_hub then keeps a
        # whole copy of each file in each revision's snapshot folder, as this copy does.
        shutil.copytree(disk / "hub-0", mount.point / "hub-folder", symlinks=False)
        times: dict[str, list[float]] = {"restore": [], "cp": [], "noop": [], "one": []}
        for round_ in range(1, args.rounds + 1):
            settle()
            env["COLABSESSION_HOME"] = str(disk / f"home-{round_}")
            env["HF_HUB_CACHE"] = str(disk / f"hub-{round_}")
            started = time.perf_counter()
            cs.cache.restore("huggingface", location=location)
            times["restore"].append(time.perf_counter() - started)
            started = time.perf_counter()
            cs.cache.save("huggingface", location=location)
            times["noop"].append(time.perf_counter() - started)
            (disk / f"hub-{round_}" / REPO / f"extra-{round_}.txt").write_text("x")
            started = time.perf_counter()
            cs.cache.save("huggingface", location=location)
            times["one"].append(time.perf_counter() - started)
            settle()
            started = time.perf_counter()
            subprocess.run(
                ["cp", "-r", str(mount.point / "hub-folder"), str(disk / f"cp-{round_}")],
                check=True,
            )
            times["cp"].append(time.perf_counter() - started)
            shutil.rmtree(disk / f"cp-{round_}")
            shutil.rmtree(disk / f"hub-{round_}")
        medians = {k: statistics.median(v) for k, v in times.items()}
        print(f"model {args.model_mb} MB, {args.latency * 1000:g} ms per operation")
        print(f"first save (uploads everything): {first_save:.2f} s")
        for key, label in (
            ("restore", "cs.cache.restore"),
            ("cp", "cp -r of the cache folder from the mount"),
            ("noop", "cs.cache.save, nothing new"),
            ("one", "cs.cache.save, one small file new"),
        ):
            every = ", ".join(f"{t:.2f}" for t in times[key])
            print(f"{label}: {medians[key]:.2f} s  (all: {every})")
    finally:
        mount.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
