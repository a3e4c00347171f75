"""A FUSE passthrough that adds latency to every metadata operation and counts them, like the
Drive mount (each file operation there is a round trip). Used by benchmarks/drive_ops.py.

    python benchmarks/fuse_latency.py SOURCE MOUNTPOINT [--latency 0.1] [--read-mbps 0]

Needs Linux, root (or fusermount3), libfuse3 (`apt-get install fuse3`) and mfusepy
(`pip install mfusepy`). Reading MOUNTPOINT/.stats returns the counts so far as JSON (that read is
not counted); data reads and writes are counted apart and get no added latency, unless
``--read-mbps`` limits each read to that rate (MB/s, per request: a transfer from Drive). With
FUSE_LATENCY_LOG=FILE in its environment, each operation and its path is appended to FILE.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mfusepy as fuse  # type: ignore[import-not-found]

STATS = "/.stats"
LOG = os.environ.get("FUSE_LATENCY_LOG")  # a file to log each operation and its path to
DATA = {"read", "write"}


class Passthrough(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str, latency: float, read_mbps: float = 0.0) -> None:
        self.root, self.latency, self.read_mbps = root, latency, read_mbps
        self.counts: Counter[str] = Counter()
        self._mutex = threading.Lock()

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if callable(attr) and not name.startswith("_") and name in _OPS:

            def counted(path: str, *args: Any) -> Any:
                if path != STATS:
                    with self._mutex:
                        self.counts[name] += 1
                        if LOG:
                            with open(LOG, "a") as log:
                                log.write(f"{time.monotonic():.3f} {name} {path}\n")
                    if name not in DATA and self.latency:
                        time.sleep(self.latency)
                return attr(path, *args)

            return counted
        return attr

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _stats(self) -> bytes:
        with self._mutex:
            meta = {k: v for k, v in self.counts.items() if k not in DATA}
            data = {k: v for k, v in self.counts.items() if k in DATA}
        return json.dumps({"metadata": meta, "data": data}).encode()

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == STATS:
            return {"st_mode": 0o100444, "st_nlink": 1, "st_size": 1 << 20}
        st = os.lstat(self._full(path))
        keys = ("st_atime_ns", "st_ctime_ns", "st_gid", "st_mode", "st_mtime_ns", "st_nlink")
        result = {k.replace("_ns", ""): getattr(st, k) for k in keys}
        result.update(st_size=st.st_size, st_uid=st.st_uid, st_ino=st.st_ino)
        return result

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def open(self, path: str, flags: int) -> int:
        if path == STATS:
            return 0
        return os.open(self._full(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == STATS:
            return self._stats()[offset : offset + size]
        data = os.pread(fh, size, offset)
        if self.read_mbps:
            time.sleep(len(data) / (self.read_mbps * 1e6))
        return data

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        os.truncate(self._full(path), length)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0 if path == STATS else os.fsync(fh) or 0

    def release(self, path: str, fh: int) -> int:
        if path != STATS:
            os.close(fh)
        return 0

    def unlink(self, path: str) -> None:
        os.unlink(self._full(path))

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._full(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._full(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._full(old), self._full(new))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    def utimens(self, path: str, times: Any = None) -> None:
        os.utime(self._full(path), ns=times)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {k: getattr(st, k) for k in (*keys, "f_flag", "f_frsize", "f_namemax")}

    def access(self, path: str, amode: int) -> None:
        if path != STATS and not os.access(self._full(path), amode):
            raise fuse.FuseOSError(errno.EACCES)


_OPS = {
    name
    for name in vars(Passthrough)
    if not name.startswith("_") and callable(getattr(Passthrough, name)) and name != "use_ns"
}


class Mount:
    """The passthrough of *base*/source at *base*/mnt, in a process of its own."""

    def __init__(self, base: Path, latency: float, read_mbps: float = 0.0) -> None:
        self.source, self.point = base / "source", base / "mnt"
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                str(self.source),
                str(self.point),
                "--latency",
                str(latency),
                "--read-mbps",
                str(read_mbps),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if os.path.ismount(self.point):
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the FUSE passthrough did not mount (root? fuse3? mfusepy?)")

    def counts(self) -> dict[str, dict[str, int]]:
        return json.loads((self.point / ".stats").read_bytes())  # type: ignore[no-any-return]

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.point)], check=False)
        self.process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per metadata op")
    parser.add_argument("--read-mbps", type=float, default=0.0, help="MB/s per read; 0: no limit")
    args = parser.parse_args()
    os.makedirs(args.source, exist_ok=True)
    os.makedirs(args.mountpoint, exist_ok=True)
    fuse.FUSE(
        Passthrough(os.path.abspath(args.source), args.latency, args.read_mbps),
        args.mountpoint,
        foreground=True,
        nothreads=False,
    )


if __name__ == "__main__":
    main()
