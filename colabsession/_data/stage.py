"""Staging a dataset to the local disk: from its shards, from an archive, or file by file.

Whatever the source, the data is built in a hidden folder beside the destination and moved into
place by a rename once complete, then a small record beside it (``.<name>.staged.json``) says
what was staged from what: the next call with an unchanged source returns at once. What was
copied survives a kill: shards and archives are copied to ``<home>/datasets/.download`` (a copy
cut short continues where it stopped) and verified before a byte is unpacked; a folder copied
file by file keeps its partial copy, and files already copied whole are not copied again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from colabsession._core.errors import DataError
from colabsession._core.files import reason, replace_folder
from colabsession._core.progress import bar
from colabsession._core.records import InvalidRecord, Record, parse_record, read_count
from colabsession._core.say import say
from colabsession._core.timeout import Backoff, map_bounded
from colabsession._core.units import format_bytes
from colabsession._data import archive as _archive
from colabsession._data.dataset import DatasetInfo, Shard
from colabsession._data.walk import SourceFile, copy_file, same, walk
from colabsession._drive.location import Location
from colabsession._runtime.runtime import home_dir
from colabsession._storage.store import SLOWEST, Store

logger = logging.getLogger(__name__)
MARGIN = 64 << 20  # bytes of free space kept beyond what staging needs
ATTEMPTS = 4  # tries per shard or archive copy before giving up (a dropped mount, a 5xx)
PAUSES = 60.0  # seconds of pauses between the tries of one copy, at most
DAMAGED_TRIES = 2  # copies of a shard whose sha256 does not match before it is called damaged
_sleep = time.sleep  # tests replace these two
disk_usage = shutil.disk_usage


@dataclass(frozen=True)
class StagedInfo(Record):
    """What was staged where (the record beside a staged folder)."""

    KIND: ClassVar[str] = "colabsession-staged"
    VERSION: ClassVar[int] = 1
    source: str
    key: str  # what the source was: a manifest's name, an archive's size and time, a listing
    origin: str  # "packed", "archive" or "folder": what it was staged from
    path: str
    files: int
    size: int  # bytes of file data
    staged: str  # when (UTC, ISO 8601)
    seconds: float


def marker(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.staged.json"


def staged_record(dest: Path) -> StagedInfo | None:
    """The record of what is staged at *dest*; None if nothing (or it is unreadable)."""
    try:
        return parse_record(StagedInfo, marker(dest).read_bytes(), what=str(marker(dest)))
    except (OSError, InvalidRecord):
        return None


def cached(dest: Path, key: str) -> StagedInfo | None:
    record = staged_record(dest)
    if record is not None and record.key == key and dest.is_dir():
        return record
    return None


def downloads() -> Path:
    return home_dir() / "datasets" / ".download"


def check_space(folder: Path, need: int, what: str) -> None:
    """DataError, before anything is written, when the disk holding *folder* lacks *need*
    bytes (plus a margin)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = disk_usage(probe).free
    if free < need + MARGIN:
        raise DataError(
            f"staging {what} needs about {format_bytes(need + MARGIN)} on the local disk and "
            f"{format_bytes(free)} is free: free space (!df -h; delete datasets or checkpoints "
            "you no longer need under /content), or stage only part of the data"
        )


def full_disk(exc: OSError, what: str, dest: Path) -> DataError:
    kept = downloads()
    return DataError(
        f"the local disk filled up while staging {what} to {dest} ({exc.strerror}): free "
        f"space (!df -h) and run it again; what was copied so far is kept in {kept} and is "
        "not copied again"
    )


def claim(dest: Path) -> Path:
    """The file that says colabsession is staging to *dest*: written before anything is moved
    there and removed after its record, so that a kill between the two (the folder in place,
    its record not yet written) still leaves *dest* known as colabsession's."""
    return dest.parent / f".{dest.name}.staging"


def prepare(dest: Path) -> None:
    """Refuse a destination that holds something colabsession did not stage (it would be
    replaced), claim it, and clear what a staging that was cut short left."""
    if dest.exists() and staged_record(dest) is None and not claim(dest).exists():
        raise DataError(
            f"{dest} already exists and was not staged by colabsession: staging would replace "
            "it. Give another destination (dest=...) or move it away"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    claim(dest).touch()
    for left in dest.parent.glob(f".{dest.name}.unpacking-*"):
        shutil.rmtree(left, ignore_errors=True)
    for left in dest.parent.glob(f".{dest.name}.old-*"):
        shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def exclusive(dest: Path) -> Iterator[None]:
    """Hold the staging of *dest* on this machine: another process (a second notebook) staging
    the same waits, then finds it staged."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _holding(
        dest.parent / f".{dest.name}.lock",
        f"another process on this machine is staging {dest}; waiting for it to finish",
    ):
        yield


@contextlib.contextmanager
def downloading(source: str) -> Iterator[Path]:
    """Hold the download cache's copies of *source* on this machine and return the cache:
    two stagings of one dataset to two destinations share its copies, and one must not
    rewrite or remove a copy the other is reading."""
    cache = downloads()
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    with _holding(
        cache.parent / f".download-{digest}.lock",  # beside the cache: it empties once staged
        f"another staging of {source} on this machine is copying it; waiting for it to finish",
    ):
        yield cache


@contextlib.contextmanager
def _holding(path: Path, waiting: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def unpacking(dest: Path) -> Iterator[Path]:
    """A fresh hidden folder beside *dest* to unpack into; removed if staging fails."""
    partial = dest.parent / f".{dest.name}.unpacking-{secrets.token_hex(4)}"
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def commit(partial: Path, dest: Path, record: StagedInfo) -> None:
    """Move the complete *partial* folder to *dest* (replacing what an older staging left
    there) and write the record that says so."""
    with contextlib.suppress(FileNotFoundError):
        marker(dest).unlink()  # first: a kill between the moves must not leave a stale record
    replace_folder(partial, dest)
    temp = marker(dest).with_name(f"{marker(dest).name}.{secrets.token_hex(4)}.tmp")
    temp.write_bytes(record.to_json(indent=1))
    os.replace(temp, marker(dest))
    claim(dest).unlink(missing_ok=True)


def record(
    source: str, key: str, origin: str, dest: Path, files: int, size: int, started: float
) -> StagedInfo:
    return StagedInfo(
        source=source,
        key=key,
        origin=origin,
        path=str(dest),
        files=files,
        size=size,
        staged=datetime.now(timezone.utc).isoformat(),
        seconds=round(time.monotonic() - started, 3),
        version=StagedInfo.VERSION,
    )


# From a packed dataset --------------------------------------------------------------------


def stage_packed(
    store: Store,
    info: DatasetInfo,
    key: str,
    dest: Path,
    *,
    workers: int,
    timeout: float,
    started: float,
) -> StagedInfo:
    """Unpack the shards in order into a fresh folder that becomes *dest*: the first one as it
    arrives (verified at its end; the folder is discarded if it does not match), while the
    others are copied to the local disk several at once, each verified before it is unpacked.
    If reading the first one as it arrives fails, it all starts again with every shard copied
    first (what was copied is kept)."""
    with downloading(str(store)) as cache:
        suffix = ".tar.zst" if info.compression == "zstd" else ".tar"
        local = [cache / f"{s.sha256}{suffix}" for s in info.shards]
        have = [
            _size(p) if _size(p) == s.size else _size(_part(p))
            for s, p in zip(info.shards, local, strict=True)
        ]
        check_space(dest.parent, info.unpacked + info.size - sum(have), str(store))
        prepare(dest)
        with (
            bar(info.size, "copying shards", sum(have)) as copied,
            bar(info.unpacked, f"staging {dest.name}") as unpacked,
        ):
            job = _Unpacking(store, info, local, dest, workers, timeout, copied, unpacked)
            try:
                job.run(stream=True)
            except _StreamFailed as exc:
                logger.warning(
                    "colabsession: reading %s as it arrived failed (%s); copying it first",
                    info.shards[0].name,
                    exc,
                )
                unpacked.reset()
                job.run(stream=False)
            result = record(str(store), key, "packed", dest, info.files, info.unpacked, started)
            commit(job.partial, dest, result)
        for path in local:
            with contextlib.suppress(OSError):
                path.unlink()
    return result


class _StreamFailed(Exception):
    """Reading the first shard as it arrived failed: copy it first instead."""


class _Unpacking:
    """One pass over a packed dataset's shards into a fresh folder beside the destination."""

    def __init__(
        self,
        store: Store,
        info: DatasetInfo,
        local: list[Path],
        dest: Path,
        workers: int,
        timeout: float,
        copied: Any,
        unpacked: Any,
    ) -> None:
        self.store, self.info, self.local, self.dest = store, info, local, dest
        self.workers, self.timeout = workers, timeout
        self.copied, self.unpacked = copied, unpacked
        self.partial = dest

    def run(self, *, stream: bool) -> None:
        info, store = self.info, self.store
        shards = list(zip(info.shards, self.local, strict=True))
        streamed = stream and bool(shards) and _size(shards[0][1]) != shards[0][0].size
        rest = shards[1:] if streamed else shards
        largest = max((s.size for s in info.shards), default=0)

        def fetch(item: tuple[Shard, Path]) -> Path:
            return _fetch_shard(store, item[0], item[1], self.copied.update)

        with unpacking(self.dest) as partial:
            self.partial = partial
            unpacker = _archive.Unpacker(partial, progress=lambda m: self.unpacked.update(m.size))
            arrived = map_bounded(  # the copies start now, while the first shard streams
                fetch,
                rest,
                workers=self.workers,
                # each copy bounds its own tries; this bounds the wait for one in order
                timeout=(self.timeout + largest / SLOWEST) * ATTEMPTS + PAUSES,
                window=self.workers,
                what="copy shards",
            )
            try:
                if streamed:
                    _stream_shard(store, *shards[0], unpacker, info.compression, self)
                for (shard, _), path in zip(rest, arrived, strict=True):
                    _unpack_shard(unpacker, shard, path, info.compression, store)
                unpacker.finish()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise full_disk(exc, str(store), self.dest) from None
                raise
            except TimeoutError as exc:
                raise DataError(
                    f"copying from {store} failed ({reason(exc)}). What was copied is kept: "
                    "run the same call again to continue"
                ) from None
            finally:
                arrived.close()


class _Tee:
    """Reads a shard from the store into its part file on the local disk, and hands on what it
    reads (what the part already held first: a copy cut short goes on from there), hashing it
    all. Once *abandoned* is set (the reader gave up on it), it writes nothing more."""

    def __init__(
        self, part: Path, remote: Any, progress: Callable[[int], object], abandoned: Any
    ) -> None:
        self.remote, self.progress, self.abandoned = remote, progress, abandoned
        self.sha256 = hashlib.sha256()
        self.size = 0
        have = _size(part)
        if have:
            try:
                remote.seek(have)
            except (OSError, ValueError, NotImplementedError):
                have = 0
        self.prefix = open(part, "rb") if have else None  # noqa: SIM115 - closed in close()
        self.out = open(part, "ab" if have else "wb")  # noqa: SIM115 - closed in close()

    def read(self, n: int = -1) -> bytes:
        n = n if n > 0 else _archive.CHUNK
        if self.prefix is not None:
            data = self.prefix.read(n)
            if data:
                self.sha256.update(data)
                self.size += len(data)
                return data
            self.prefix.close()
            self.prefix = None
        data = bytes(self.remote.read(n))
        if self.abandoned.is_set():
            raise TimeoutError("the read was abandoned")
        if data:
            self.out.write(data)
            self.sha256.update(data)
            self.size += len(data)
            self.progress(len(data))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.prefix is not None:
            self.prefix.close()
        self.out.close()


def _stream_shard(
    store: Store,
    shard: Shard,
    path: Path,
    unpacker: _archive.Unpacker,
    compression: str,
    job: _Unpacking,
) -> None:
    """Unpack *shard* as it arrives, keeping a copy in its part file; verified at its end."""
    part = _part(path)
    abandoned = threading.Event()
    try:
        remote = store.io(f"open {shard.name}", lambda: store.fs.open(store.path(shard.name), "rb"))
    except FileNotFoundError:
        raise DataError(
            f"{store}/{shard.name}, named by the manifest, is missing: pack the source again "
            "with cs.data.pack(source)"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise _StreamFailed(reason(exc)) from None
    tee = _Tee(part, remote, job.copied.update, abandoned)
    limit = job.timeout + _archive.CHUNK / SLOWEST
    try:
        with _archive.Prefetch(_archive.decompress(tee, compression), timeout=limit) as ahead:  # type: ignore[arg-type]
            stats = unpacker.add(_archive.members(ahead), limit=shard.unpacked)  # type: ignore[arg-type]
            ahead.drain()
        store.io(f"read {shard.name}", lambda: _archive.drain(tee), shard.size - tee.size)
    except _archive.UnsafeArchive as exc:
        raise _StreamFailed(f"it arrived damaged or unsafe: {exc}") from None
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _StreamFailed(reason(exc)) from None
    finally:
        abandoned.set()
        tee.close()
        # Bounded too: closing a file whose read is stuck on a dead mount waits for that read.
        with contextlib.suppress(Exception):
            store.io(f"close {shard.name}", remote.close)
    if tee.size != shard.size or tee.sha256.hexdigest() != shard.sha256:
        part.unlink()
        raise _StreamFailed("its sha256 does not match the manifest's")
    if stats.files != len(shard.members):
        part.unlink()
        raise DataError(
            f"{store}/{shard.name} holds {stats.files} members, not the {len(shard.members)} "
            "its manifest lists; nothing was staged. Pack the source again"
        )
    os.replace(part, path)


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fetch_shard(store: Store, shard: Shard, path: Path, progress: Callable[[int], object]) -> Path:
    """The verified local copy of *shard*: already there, or copied (resuming a copy cut short,
    trying again after a failure, copying again once when its sha256 does not match)."""
    if _size(path) == shard.size:
        return path  # it was verified when it was moved there
    part = _part(path)
    backoff = Backoff(initial=2.0, maximum=30.0)
    damaged = failures = 0
    while True:
        try:
            digest = store.fetch_file(shard.name, part, size=shard.size, progress=progress)
        except FileNotFoundError:
            raise DataError(
                f"{store}/{shard.name}, named by the manifest, is missing: pack the source "
                "again with cs.data.pack(source)"
            ) from None
        except (OSError, TimeoutError) as exc:
            failures += 1
            if failures >= ATTEMPTS:
                raise DataError(
                    f"copying {store}/{shard.name} failed {failures} times ({reason(exc)}). "
                    "What was copied is kept: run the same call again to continue"
                ) from None
            pause = backoff.failed()
            logger.warning(
                "colabsession: copying %s failed (%s); trying again in %.0f s",
                shard.name,
                reason(exc),
                pause,
            )
            _sleep(pause)
            continue
        if _size(part) == shard.size and digest == shard.sha256:
            os.replace(part, path)
            return path
        part.unlink()
        damaged += 1
        if damaged >= DAMAGED_TRIES:
            raise DataError(
                f"{store}/{shard.name} is damaged on Drive (its sha256 does not match the "
                f"manifest's, copied {damaged} times): pack the source again with "
                "cs.data.pack(source, verify=True), which packs again only what is damaged"
            )
        logger.warning("colabsession: %s arrived damaged; copying it again", shard.name)


def _unpack_shard(
    unpacker: _archive.Unpacker, shard: Shard, path: Path, compression: str, store: Store
) -> None:
    try:
        with (
            open(path, "rb") as raw,
            _archive.Prefetch(_archive.decompress(raw, compression)) as ahead,
        ):
            stats = unpacker.add(_archive.members(ahead), limit=shard.unpacked)  # type: ignore[arg-type]
    except _archive.UnsafeArchive as exc:
        path.unlink()  # copied again next time, in case the local disk damaged it
        raise DataError(
            f"{store}/{shard.name} is damaged or unsafe ({exc}); nothing was staged. Pack the "
            "source again with cs.data.pack(source, verify=True)"
        ) from None
    if stats.files != len(shard.members):
        path.unlink()
        raise DataError(
            f"{store}/{shard.name} holds {stats.files} members, not the {len(shard.members)} "
            "its manifest lists; nothing was staged. Pack the source again"
        )


# From an archive --------------------------------------------------------------------------


ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVES)


def stage_archive(
    location: Location, dest: Path, *, timeout: float, started: float
) -> tuple[StagedInfo, bool]:
    """Copy the archive to the local disk (resuming a copy cut short) and unpack it there with
    the same rules as environments: nothing may land outside *dest*. The record, and whether
    it was staged already (the archive unchanged)."""
    folder, _, name = location.path.rstrip("/").rpartition("/")
    store = Store(Location(location.fs, folder, str(location)), timeout=timeout, durable=False)
    try:
        there = store.io("look up", lambda: location.fs.info(location.path))
    except FileNotFoundError:
        raise DataError(f"there is no archive at {location}") from None
    except (OSError, TimeoutError) as exc:
        raise DataError(f"cannot read {location} ({reason(exc)})") from None
    size = read_count(there.get("size"))
    if size is None:
        raise DataError(f"{location} reports no size that makes sense: is it a file?")
    change = there.get("md5Checksum") or there.get("mtime") or there.get("modifiedDate") or ""
    key = f"archive:{size}:{change}"
    found = cached(dest, key)
    if found is not None:
        return found, True
    digest = hashlib.sha256(f"{location.fs.protocol}:{location.path}:{key}".encode()).hexdigest()
    with downloading(str(location)) as cache:
        local = cache / f"{digest[:32]}-{name[-40:]}"
        check_space(dest.parent, 2 * size - _size(_part(local)) - _size(local), str(location))
        prepare(dest)
        if _size(local) != size:
            _fetch_archive(store, name, local, size)
        result = _unpack_archive(location, name, local, dest, key, started)
        with contextlib.suppress(OSError):
            local.unlink()
    return result, False


def _unpack_archive(
    location: Location, name: str, local: Path, dest: Path, key: str, started: float
) -> StagedInfo:
    with bar(0, f"staging {dest.name}") as shown, unpacking(dest) as partial:
        unpacker = _archive.Unpacker(partial, progress=lambda m: shown.update(m.size))
        try:
            if name.lower().endswith(".zip"):
                files, unpacked = _unpack_zip(local, unpacker, dest, str(location))
            else:
                with (
                    open(local, "rb") as raw,
                    _archive.Prefetch(
                        _archive.decompress(raw, _archive.compression_of(name.lower()))
                    ) as ahead,
                ):
                    stats = unpacker.add(_archive.members(ahead))  # type: ignore[arg-type]
                files, unpacked = stats.files, stats.unpacked
            unpacker.finish()
        except _archive.UnsafeArchive as exc:
            raise DataError(
                f"{location} is damaged or unsafe ({exc}); nothing was staged"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise full_disk(exc, str(location), dest) from None
            raise
        result = record(str(location), key, "archive", dest, files, unpacked, started)
        commit(partial, dest, result)
    return result


def _fetch_archive(store: Store, name: str, local: Path, size: int) -> None:
    part = _part(local)
    backoff = Backoff(initial=2.0, maximum=30.0)
    with bar(size, f"copying {name}", _size(part)) as shown:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                store.fetch_file(name, part, size=size, progress=shown.update)
                break
            except FileNotFoundError:
                raise DataError(f"{store} disappeared while it was being copied") from None
            except (OSError, TimeoutError) as exc:
                if attempt == ATTEMPTS:
                    raise DataError(
                        f"copying {store} failed {attempt} times ({reason(exc)}). What was "
                        "copied is kept: run the same call again to continue"
                    ) from None
                _sleep(backoff.failed())
    if _size(part) != size:
        part.unlink()
        raise DataError(f"{store} changed while it was being copied: run the same call again")
    os.replace(part, local)


def _unpack_zip(local: Path, unpacker: _archive.Unpacker, dest: Path, what: str) -> tuple[int, int]:
    import zipfile

    try:
        archive = zipfile.ZipFile(local)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _archive.UnsafeArchive(f"it is not a zip archive ({exc})") from None
    with archive:
        declared = sum(i.file_size for i in archive.infolist())
        check_space(dest.parent, declared, what)
        stats = unpacker.add(_archive.zip_members(archive), limit=declared)
    return stats.files, stats.unpacked


def _none(path: str) -> bool:
    return False


# A folder, file by file -------------------------------------------------------------------


def listing_key(files: list[SourceFile]) -> str:
    digest = hashlib.sha256(json.dumps([(f.path, f.signature) for f in files]).encode())
    return f"folder:{digest.hexdigest()}"


def stage_folder(
    location: Location,
    files: list[SourceFile],
    key: str,
    dest: Path,
    *,
    workers: int,
    timeout: float,
    started: float,
) -> StagedInfo:
    """Copy the files one by one, *workers* at a time, into a hidden folder kept across calls
    (a file already copied whole is not copied again), then move it into place."""
    total = sum(f.size for f in files)
    partial = dest.parent / f".{dest.name}.partial"
    prepare(dest)
    if not partial.exists() and dest.is_dir():  # an older staging: keep what is unchanged
        marker(dest).unlink(missing_ok=True)
        os.rename(dest, partial)
    check_space(dest.parent, total - _copied(partial, files), str(location))
    wanted = {f.path for f in files}
    if partial.is_dir():  # what an earlier call copied that the source no longer has
        for path in sorted(partial.rglob("*"), reverse=True):
            relative = path.relative_to(partial).as_posix()
            if relative not in wanted:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    partial.mkdir(parents=True, exist_ok=True)
    for item in files:
        if item.is_dir:
            (partial / item.path).mkdir(parents=True, exist_ok=True)
    for item in files:  # links last: no folder is made through one (none is listed under one)
        if item.is_link:
            _relink(partial / item.path, item.link)
    todo = [
        f for f in files if not f.is_dir and not f.is_link and not same(f, f"{partial}/{f.path}")
    ]
    largest = max((f.size for f in todo), default=0)

    def copy(item: SourceFile) -> int:
        return copy_file(location, item, f"{partial}/{item.path}")

    try:
        with bar(total, f"copying {dest.name}", total - sum(f.size for f in todo)) as shown:
            for copied in map_bounded(
                copy,
                todo,
                workers=workers,
                timeout=timeout + largest / SLOWEST,
                what="copy files",
            ):
                shown.update(copied)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise full_disk(exc, str(location), dest) from None
        raise DataError(
            f"copying {location} failed ({reason(exc)}). The files copied so far are kept: "
            "run the same call again to continue"
        ) from None
    except TimeoutError as exc:
        raise DataError(
            f"copying {location} failed ({reason(exc)}). The files copied so far are kept: "
            "run the same call again to continue"
        ) from None
    result = record(str(location), key, "folder", dest, len(files), total, started)
    commit(partial, dest, result)
    return result


def _relink(path: Path, target: str) -> None:
    """Make *path* a symbolic link to *target* (checked to stay inside), whatever was there."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    os.symlink(target, path)


def _copied(partial: Path, files: list[SourceFile]) -> int:
    if not partial.is_dir():
        return 0
    return sum(f.size for f in files if not f.is_dir and same(f, f"{partial}/{f.path}"))


def list_source(
    location: Location,
    *,
    workers: int,
    timeout: float,
    skip: Callable[[str], bool] | None = None,
    packing: bool = False,
) -> list[SourceFile]:
    """The files of the folder *location* (see :func:`._walk.walk`); DataError when it cannot
    be listed. Special files are left out, with a warning; so are symbolic links that point
    outside the folder, or, when *packing*, they are refused before anything is written. A
    name that could not be an archive member (see :func:`._archive.is_plain`: Drive's titles
    are free text, ``..``, ``a/b``, a backslash) is left out with a warning, or, when
    *packing*, refused before anything is written: a shard holding it could never be staged."""
    try:
        files, left_out = walk(location, workers=workers, timeout=timeout, skip=skip or _none)
    except FileNotFoundError:
        raise DataError(f"there is nothing at {location}") from None
    except NotADirectoryError:
        raise DataError(
            f"{location} is a file, not a folder or an archive ({', '.join(ARCHIVES)})"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise DataError(f"cannot list {location} ({reason(exc)})") from None
    if left_out:
        logger.warning(
            "colabsession: leaving out %d special file(s) or Google Docs (no bytes to copy) in "
            "%s (first: %s)",
            len(left_out),
            location,
            left_out[0],
        )
    outside = _archive.links_outside({f.path: f.link for f in files if f.is_link})
    if outside and packing:
        raise DataError(
            f"{len(outside)} symbolic link(s) in {location} point outside it (first: "
            f"{outside[0][1]}): a packed link must stay inside the folder it is packed with. "
            "Replace them with what they point to (or move them out of the folder) and pack "
            "again; nothing was written",
            path=f"{location}/{outside[0][0]}",
        )
    if outside:
        logger.warning(
            "colabsession: leaving out %d symbolic link(s) of %s that point outside it (first: %s)",
            len(outside),
            location,
            outside[0][1],
        )
        dropped = {path for path, _ in outside}
        files = [f for f in files if f.path not in dropped]
    unsafe = [f.path for f in files if not _archive.is_plain(f.path)]
    if not unsafe:
        return files
    if packing:
        raise DataError(
            f"{len(unsafe)} name(s) in {location} cannot be packed (first: {unsafe[0][:200]!r}): "
            "a name may hold no backslash or NUL and no part may be '.' or '..'. Rename them "
            "(or move them out of the folder) and pack again; nothing was written"
        )
    logger.warning(
        "colabsession: leaving out %d file(s) of %s whose names cannot be a path inside the "
        "destination (a backslash, NUL, '.' or '..'; first: %r): rename them to stage them",
        len(unsafe),
        location,
        unsafe[0][:200],
    )
    return [f for f in files if _archive.is_plain(f.path)]
