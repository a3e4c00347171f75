"""Packing a folder into a dataset's shards (see :mod:`._dataset` for the format).

The source is listed and read by many threads at once (a file on the Drive mount costs round
trips), written in its sorted order into tar shards on the local disk, each hashed as it is
written, and each copied up while the next one is written. A manifest marked incomplete is
committed after each shard, so that packing that is cut short continues where it stopped; the
complete manifest is committed last, and only then are older manifests and shards removed.
Packing again reuses every shard whose files are unchanged: adding files writes new shards only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from colabsession._core.errors import DataError
from colabsession._core.files import reason
from colabsession._data import archive as _archive
from colabsession._data import dataset as _dataset
from colabsession._data.dataset import DatasetInfo, Member, Shard
from colabsession._data.walk import SourceFile, read_ahead, stream_file
from colabsession._drive.location import Location
from colabsession._runtime.runtime import home_dir
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)
RECORD = tarfile.RECORDSIZE


class _Hashing:
    """A binary file that hashes and counts what is written to it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True


class ShardWriter:
    """One tar shard on the local disk, written member by member (tarfile encodes each header)
    through zstd or none, and hashed as it is written."""

    def __init__(
        self, path: Path, compression: str, level: int = 3, *, timeout: float = 120.0
    ) -> None:
        self.path = path
        self.timeout = timeout  # seconds each read of a streamed source file may take
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._hashing = _Hashing(self._file)
        self._out: Any = (
            _archive.zstd_writer(self._hashing, level) if compression == "zstd" else self._hashing
        )
        self.written = 0  # tar bytes
        self.members: list[Member] = []
        self.unpacked = 0

    def add(self, item: SourceFile, data: bytes | None, source: Location) -> None:
        info = tarfile.TarInfo(item.path)
        info.mtime = int(item.mtime)
        if item.is_dir:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            self.members.append(Member(item.path, 0, item.signature))
            return
        if item.is_link:  # checked to stay inside the tree before packing began
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, item.link
            self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            self.members.append(Member(item.path, 0, item.signature))
            return
        info.mode = item.mode
        if data is not None:
            info.size = len(data)
            self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            self._write(data)
        else:  # a large file: streamed, its size as listed (a file that changed is refused)
            info.size = item.size
            self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            left = item.size
            for chunk in stream_file(source, item.path, size=item.size, timeout=self.timeout):
                self._write(chunk)
                left -= len(chunk)
            if left:
                raise DataError(
                    f"{source}/{item.path} changed while it was being packed: pack again"
                )
        self._write(b"\0" * (-info.size % tarfile.BLOCKSIZE))
        signature = item.signature if info.size == item.size else f"{info.size}:changed"
        self.members.append(Member(item.path, info.size, signature))
        self.unpacked += info.size

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def close(self) -> tuple[int, str]:
        """End the archive; its size and sha256."""
        end = 2 * tarfile.BLOCKSIZE
        self._write(b"\0" * (end + (-(self.written + end) % RECORD)))  # as tarfile ends one
        if self._out is not self._hashing:
            self._out.close()
        self._file.close()
        return self._hashing.size, self._hashing.sha256.hexdigest()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def key(path: str) -> str:
    """A WebDataset sample's key: the path up to the first dot of its last part, so that
    ``a/x.jpg`` and ``a/x.json`` stay in one shard."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/{name.split('.', 1)[0]}"


def pack(
    source: Location,
    target: Location,
    *,
    shard_size: int,
    compression: str,
    workers: int,
    timeout: float,
    verify: bool,
    files: list[SourceFile],
    progress: Callable[[int], object],
    level: int = 3,
) -> tuple[DatasetInfo, int]:
    """Pack *files* of *source* into *target*; the committed manifest and the number of shards
    written (0 when the packed dataset was up to date)."""
    store = Store(target, timeout=timeout, durable=False)
    try:
        names = set(store.names())
    except (OSError, TimeoutError) as exc:
        raise DataError(f"cannot list {target} ({reason(exc)})") from None
    found = _dataset.newest(store, names, complete=False) if names else None
    previous = found[0] if found else None
    kept = _reusable(store, previous, files, names, verify)
    covered = {m.path for s in kept for m in s.members}
    todo = [f for f in files if f.path not in covered]
    if previous is not None and previous.complete and not todo and kept == list(previous.shards):
        return previous, 0
    progress(sum(s.unpacked for s in kept))
    root = home_dir() / "datasets"
    try:
        root.mkdir(parents=True, exist_ok=True)
        store.makedirs()
        with tempfile.TemporaryDirectory(dir=root, prefix=".pack-") as tmp:
            packer = _Packer(
                store, source, Path(tmp), kept, names, compression, shard_size, level, timeout
            )
            try:
                last_key = ""
                for item, data in read_ahead(source, todo, workers=workers, timeout=timeout):
                    full = packer.writer is not None and packer.writer.unpacked >= shard_size
                    if full and key(item.path) != last_key:
                        packer.next_shard()
                    packer.add(item, data)
                    last_key = key(item.path)
                    progress(item.size)
                manifest = packer.finish()
            finally:
                packer.close()
    except (OSError, TimeoutError) as exc:
        raise DataError(
            f"packing {source} into {target} failed ({reason(exc)}). The shards copied up "
            "are kept: pack again to continue"
        ) from None
    info = _dataset.parse(store.read(manifest), manifest)
    _remove_stale(store, names, info, manifest)
    return info, packer.written


class _Packer:
    """The shards of one packing: one written on the local disk while the one before is copied
    up; after each copy, a manifest marked incomplete records the progress."""

    def __init__(
        self,
        store: Store,
        source: Location,
        tmp: Path,
        kept: list[Shard],
        names: set[str],
        compression: str,
        shard_size: int,
        level: int,
        timeout: float,
    ) -> None:
        self.store, self.source, self.tmp = store, source, tmp
        self.timeout = timeout  # seconds one read of a source file may take
        self.compression, self.shard_size, self.level = compression, shard_size, level
        self.shards = list(kept)
        self.sequence = 1 + max((n for n, _ in _dataset.manifests(names)), default=0)
        self.writer: ShardWriter | None = None
        self.written = 0
        numbers = (int(m[1]) for s in kept if (m := _dataset.SHARD.fullmatch(s.name)))
        self.number = 1 + max(numbers, default=-1)  # shard numbers go on after the kept ones
        self.progress_manifest: str | None = None  # the incomplete one this packing wrote last
        self._uploads = ThreadPoolExecutor(1, thread_name_prefix="colabsession-upload")
        self._pending: Future[None] | None = None
        self._adding: Shard | None = None  # the shard being copied up

    def add(self, item: SourceFile, data: bytes | None) -> None:
        if self.writer is None:
            path = self.tmp / f"shard-{self.written}"  # unique: the one before may be uploading
            self.writer = ShardWriter(path, self.compression, self.level, timeout=self.timeout)
        self.writer.add(item, data, self.source)

    def next_shard(self) -> None:
        """Close the shard being written, wait for the one before to be copied up (and record
        it), and start copying this one."""
        writer, self.writer = self.writer, None
        assert writer is not None
        size, sha256 = writer.close()
        if self._wait():
            self._commit(complete=False)
        name = _dataset.shard_name(self.number, sha256, self.compression)
        self.number += 1
        shard = Shard(name, size, sha256, writer.unpacked, tuple(writer.members))

        def upload() -> None:
            try:
                self.store.put_file(writer.path, name)
            finally:
                with contextlib.suppress(OSError):
                    writer.path.unlink()

        self._pending = self._uploads.submit(upload)
        self._adding = shard
        self.written += 1

    def _wait(self) -> bool:
        """Wait for the shard being copied up; whether there was one."""
        if self._pending is None or self._adding is None:
            return False
        self._pending.result()
        self.shards.append(self._adding)
        self._pending = self._adding = None
        return True

    def finish(self) -> str:
        """Copy up the last shard and commit the complete manifest; its name."""
        if self.writer is not None:
            self.next_shard()
        self._wait()
        return self._commit(complete=True)

    def _commit(self, *, complete: bool) -> str:
        info = DatasetInfo(
            source=str(self.source),
            compression=self.compression,
            shard_size=self.shard_size,
            shards=tuple(self.shards),
            complete=complete,
            sequence=self.sequence,
            created=datetime.now(timezone.utc).isoformat(),
            version=DatasetInfo.VERSION,
        )
        name = _dataset.manifest_name(self.sequence)
        self.store.write(name, info.to_json())
        self.sequence += 1
        # The progress manifest before this one is no longer needed (the last complete one
        # from before stays until this packing is complete: stage uses it meanwhile).
        if self.progress_manifest is not None:
            with contextlib.suppress(OSError, TimeoutError):
                self.store.remove(self.progress_manifest)
        self.progress_manifest = None if complete else name
        return name

    def close(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        self._uploads.shutdown(wait=False, cancel_futures=True)


def _reusable(
    store: Store,
    previous: DatasetInfo | None,
    files: list[SourceFile],
    names: set[str],
    verify: bool,
) -> list[Shard]:
    """The previous shards whose every member is unchanged in *files* (and, with *verify*,
    whose bytes on Drive still match their sha256)."""
    if previous is None:
        return []
    current = {f.path: f.signature for f in files}
    kept = []
    for shard in previous.shards:
        if shard.name not in names:
            continue
        if any(current.get(m.path) != m.signature for m in shard.members):
            continue
        if verify and not _intact(store, shard):
            logger.warning(
                "colabsession: %s/%s is damaged: packing its files again", store, shard.name
            )
            continue
        kept.append(shard)
    return kept


def _intact(store: Store, shard: Shard) -> bool:
    def job() -> str:
        digest = hashlib.sha256()
        with store.fs.open(store.path(shard.name), "rb") as f:
            while chunk := f.read(_archive.CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    try:
        return store.io(f"read {shard.name}", job, shard.size) == shard.sha256
    except FileNotFoundError:
        return False


def _remove_stale(store: Store, names: set[str], info: DatasetInfo, manifest: str) -> None:
    """Once *manifest* is committed: every other manifest, and every shard it does not name."""
    used = {s.name for s in info.shards}
    for name in sorted(names):
        stale_manifest = _dataset.MANIFEST.fullmatch(name) and name != manifest
        stale_shard = _dataset.SHARD.fullmatch(name) and name not in used
        if stale_manifest or stale_shard:
            try:
                store.remove(name)
            except (OSError, TimeoutError) as exc:
                logger.warning("colabsession: could not remove the old %s: %s", name, exc)
