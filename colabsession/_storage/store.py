"""One folder of a run's files on any fsspec file system: the local mirror and the location alike.

A :class:`Store` lists, reads, commits and deletes checkpoint files and keeps the run's small files
(history, lease). Nothing in it is rewritten in place: a checkpoint is a new file under a unique
name; locally it is written under a temporary name, fsynced and renamed; elsewhere (the Drive
mount, the Drive API, a bucket) it is written under its final name and commits itself by its
trailer (see :mod:`._layout`). Given a *timeout*, every operation is bounded: a stuck Drive mount
or a silent API server raises TimeoutError instead of hanging its caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from colabsession._core.files import write_fd
from colabsession._core.records import read_count
from colabsession._core.timeout import call_with_timeout
from colabsession._drive.location import Location
from colabsession._runtime.runtime import mount_type
from colabsession._storage import layout as _layout
from colabsession._storage.layout import Damaged, Manifest

logger = logging.getLogger(__name__)
T = TypeVar("T")
COPY_CHUNK = 8 << 20
SLOWEST = 1 << 20  # bytes per second a transfer may take before its timeout grows past the floor


@dataclass(frozen=True)
class Entry:
    """A committed checkpoint file in a store."""

    step: int
    name: str
    manifest: Manifest
    store: Store

    @property
    def where(self) -> str:
        return f"{self.store.description}/{self.name}"


class Store:
    """The folder *location* of a run. *timeout* bounds every operation (None: unbounded, for
    the local disk); *durable* fsyncs what it writes (the local disk; a mount uploads later
    anyway, and an fsync there is one more round trip)."""

    def __init__(self, location: Location, *, timeout: float | None, durable: bool) -> None:
        self.location = location
        self.fs = location.fs
        self.root = location.path.rstrip("/")
        self.description = str(location)
        self.timeout = timeout
        self.durable = durable and location.is_local  # fsync needs a real file
        self.local = location.is_local
        self.on_mount = self.local and (mount_type(self.root) or "").startswith("fuse")
        self._manifests: dict[str, Manifest | Damaged] = {}  # names never change content
        self._lock = threading.Lock()

    @classmethod
    def local_disk(cls, path: str | os.PathLike[str]) -> Store:
        from fsspec.implementations.local import LocalFileSystem

        text = os.path.abspath(os.fspath(path))
        return cls(Location(LocalFileSystem(), text, text), timeout=None, durable=True)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # Bounded I/O -----------------------------------------------------------------------------

    def io(self, what: str, func: Callable[[], T], size: int = 0) -> T:
        """``func()``, bounded by the store's timeout (longer for a transfer of *size* bytes)."""
        if self.timeout is None:
            return func()
        limit = self.timeout + size / SLOWEST
        return call_with_timeout(func, limit, what=f"{what} on {self.description}")

    def names(self) -> list[str]:
        """The names of the files in the folder (one listing); none if it does not exist."""

        def listing() -> list[str]:
            try:
                found = self.fs.ls(self.root, detail=False)
            except (FileNotFoundError, NotADirectoryError):  # nothing saved there (yet)
                return []
            # A name once: Drive may list a new file twice for a while.
            return list(dict.fromkeys(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found))

        return self.io("list", listing)

    def sizes(self) -> dict[str, int | None]:
        """The files of the folder and their sizes in bytes (None where the file system does not
        say), in one listing; none if the folder does not exist."""

        def listing() -> dict[str, int | None]:
            try:
                found = self.fs.ls(self.root, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return {}
            sizes: dict[str, int | None] = {}
            for info in found:
                name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
                size = info.get("size")
                if name and name not in sizes and info.get("type") != "directory":
                    sizes[name] = read_count(size)  # a listing is untrusted too
            return sizes

        return self.io("list", listing)

    def size(self, name: str) -> int:
        """The size of the file *name* in bytes."""
        return int(self.io(f"stat {name}", lambda: self.fs.size(self.path(name))))

    def read(self, name: str, *, limit: int | None = None) -> bytes:
        """The content of *name*; with *limit*, no more than its first ``limit + 1`` bytes,
        enough to tell that it is too large (a file read back is untrusted: it may be huge)."""
        if limit is None:
            return bytes(self.io(f"read {name}", lambda: self.fs.cat_file(self.path(name))))

        def job() -> bytes:
            with self.fs.open(self.path(name), "rb") as f:
                return bytes(f.read(limit + 1))

        return self.io(f"read {name}", job)

    def write(self, name: str, data: bytes) -> None:
        """Write a new file *name* (unique, or replacing one whose loss is harmless)."""
        self.io(f"write {name}", lambda: self._write(name, data), len(data))

    def replace(self, name: str, data: bytes) -> None:
        """Replace the small file *name* so that a reader sees the old or the new content whole:
        a temporary file renamed over it where the file system can rename (the local disk, the
        Drive mount); elsewhere (the Drive API replaces on write) a plain write."""
        if not self.local:
            self.write(name, data)
            return

        def job() -> None:
            temp = f".{name}.{secrets.token_hex(4)}.tmp"
            try:
                self._write(temp, data)
                os.replace(self.path(temp), self.path(name))
            except BaseException:
                self._remove_quietly(temp)
                raise

        self.io(f"replace {name}", job, len(data))

    def append(self, name: str, data: bytes) -> None:
        """Add *data* at the end of *name* (a file system that can append: see ``local``).
        Not fsynced: appends are frequent, and a reader skips a line cut short."""

        def job() -> None:
            if self.on_mount:
                _write_fd(self.path(name), [data], append=True)
                return
            with self.fs.open(self.path(name), "ab") as f:
                f.write(data)

        self.io(f"append to {name}", job, len(data))

    def remove(self, name: str) -> None:
        """Delete *name*; a file already gone is fine."""

        def job() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(name))

        self.io(f"delete {name}", job)
        self._manifests.pop(name, None)

    def makedirs(self) -> None:
        self.io("create", lambda: self.fs.makedirs(self.root, exist_ok=True))

    def _write(self, name: str, data: bytes) -> None:
        with self.fs.open(self.path(name), "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())

    def _remove_quietly(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.remove(self.path(name))

    # Checkpoints -----------------------------------------------------------------------------

    def entries(self, names: list[str] | None = None, *, warn: bool = True) -> list[Entry]:
        """The committed, structurally valid checkpoints, oldest first. A damaged file is
        skipped with a warning (once per file); its arrays are checked only by :meth:`load`."""
        entries = []
        sizes: dict[str, int | None] = {}
        if names is None:
            # Elsewhere than the local disk the listing's sizes spare a request per file.
            if self.local:
                names = self.names()
            else:
                sizes = self.sizes()
                names = list(sizes)
        for name in names:
            step = _layout.parse_name(name)
            if step is None:
                continue
            manifest = self.manifest(name, warn=warn, size=sizes.get(name))
            if isinstance(manifest, Manifest):
                entries.append(Entry(step, name, manifest, self))
        return sorted(entries, key=lambda e: (e.step, e.manifest.time))

    def manifest(
        self, name: str, *, warn: bool = True, size: int | None = None
    ) -> Manifest | Damaged:
        """The manifest of the checkpoint file *name* (of *size* bytes, if known), or why it is
        damaged."""
        with self._lock:
            known = self._manifests.get(name)
        if known is not None:
            return known
        try:
            result: Manifest | Damaged = self.io(
                f"read {name}", lambda: self._read_manifest(name, size)
            )
        except Damaged as exc:
            result = exc
        except FileNotFoundError:
            return Damaged("it disappeared while being read")
        if isinstance(result, Damaged) and warn:
            logger.warning("colabsession: skipping checkpoint %s/%s: %s", self, name, result)
        with self._lock:
            self._manifests[name] = result
        return result

    def forget(self, name: str) -> None:
        """Read the manifest of *name* afresh next time (a copy cut short is being replaced)."""
        with self._lock:
            self._manifests.pop(name, None)

    def damaged(self) -> list[tuple[str, str]]:
        """(name, why) of every checkpoint file whose manifest is damaged (after entries())."""
        with self._lock:
            return sorted((n, str(m)) for n, m in self._manifests.items() if isinstance(m, Damaged))

    def _read_manifest(self, name: str, size: int | None) -> Manifest:
        path = self.path(name)
        if self.local:
            with self.fs.open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)

                def tail(n: int) -> bytes:
                    f.seek(size - n)
                    return bytes(f.read(n))

                return _layout.read_manifest(tail, size, name)

        # Elsewhere (the Drive API streams downloads) ranged reads of the end only: opening the
        # file would start downloading it whole.
        def read(total: int) -> Manifest:
            return _layout.read_manifest(
                lambda n: bytes(self.fs.cat_file(path, start=total - n, end=total)), total, name
            )

        if size is not None:
            try:
                return read(size)
            except Damaged:  # a listing that lags (an older file of the name): ask the file
                if int(self.fs.size(path)) == size:
                    raise
        return read(int(self.fs.size(path)))

    def load(self, entry: Entry) -> Any:
        """The state of *entry*, read whole and verified. Raises Damaged."""
        size = entry.manifest.size

        def job() -> bytearray:
            buffer = bytearray(size)
            with self.fs.open(self.path(entry.name), "rb") as f:
                view, done = memoryview(buffer), 0
                while done < size:
                    got = _read_into(f, view[done:])
                    if not got:
                        break
                    done += got
            return buffer[:done] if done < size else buffer

        try:
            buffer = self.io(f"read {entry.name}", job, size)
        except FileNotFoundError:
            raise Damaged("it disappeared while being read") from None
        except OSError as exc:
            raise Damaged(f"it cannot be read ({exc})") from None
        return _layout.load(buffer, entry.manifest)

    def commit(self, name: str, writer: Callable[[Any], Manifest]) -> Entry:
        """Write a new checkpoint file *name* with ``writer(f)``: on the local disk under a
        temporary name, fsynced, then renamed into place; elsewhere under its final name (its
        trailer, written last, commits it)."""

        def job() -> Manifest:
            target = f".{name}.tmp" if self.local else name
            try:
                with self.fs.open(self.path(target), "wb") as f:
                    manifest = writer(f)
                    if self.durable:
                        f.flush()
                        os.fsync(f.fileno())
                if target != name:
                    os.replace(self.path(target), self.path(name))
                    if self.durable:
                        fsync_dir(self.root)
            except BaseException:
                if self.local:
                    self._remove_quietly(target)
                raise
            return manifest

        manifest = self.io(f"write {name}", job)
        with self._lock:
            self._manifests[name] = manifest
        step = _layout.parse_name(name)
        assert step is not None
        return Entry(step, name, manifest, self)

    def upload(self, entry: Entry) -> Entry:
        """Copy *entry* (a file of another store on the local disk) into this store."""
        source = entry.store.path(entry.name)

        def job() -> None:
            with open(source, "rb") as src:
                chunks = iter(lambda: src.read(COPY_CHUNK), b"")
                if self.on_mount:
                    _write_fd(self.path(entry.name), chunks)
                    return
                with self.fs.open(self.path(entry.name), "wb") as dst:
                    for chunk in chunks:
                        dst.write(chunk)

        self.io(f"upload {entry.name}", job, entry.manifest.size)
        with self._lock:
            self._manifests[entry.name] = entry.manifest
        return Entry(entry.step, entry.name, entry.manifest, self)

    def put_file(
        self,
        source: str | os.PathLike[str],
        name: str,
        *,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        """Copy the local file *source* into the store as *name* (a new, unique name: a reader
        never sees it half written under a name it looks for). Bounded by the timeout, scaled
        by the file's size."""
        size = os.path.getsize(source)

        def job() -> None:
            with open(source, "rb") as src:
                chunks = _counted(iter(lambda: src.read(COPY_CHUNK), b""), progress)
                if self.on_mount:
                    _write_fd(self.path(name), chunks)
                    return
                with self.fs.open(self.path(name), "wb") as dst:
                    for chunk in chunks:
                        dst.write(chunk)

        self.io(f"write {name}", job, size)

    def fetch_file(
        self,
        name: str,
        target: str | os.PathLike[str],
        *,
        size: int,
        progress: Callable[[int], object] | None = None,
    ) -> str:
        """Append the bytes of *name* that the local file *target* lacks (a copy cut short
        resumes where it stopped, when the file system can seek) and return the sha256 of the
        whole; *progress* hears of the bytes copied now. Bounded by the timeout, scaled by
        what is left to copy; a copy abandoned on timeout writes nothing more."""
        abandoned = threading.Event()

        def job() -> str:
            digest = hashlib.sha256()
            have = 0
            with contextlib.suppress(FileNotFoundError), open(target, "rb") as done:
                while chunk := done.read(COPY_CHUNK):
                    digest.update(chunk)
                    have += len(chunk)
            with self.fs.open(self.path(name), "rb") as src:
                if have:
                    try:
                        src.seek(have)
                    except (OSError, ValueError, NotImplementedError):
                        have, digest = 0, hashlib.sha256()
                with open(target, "ab" if have else "wb") as dst:
                    while chunk := src.read(COPY_CHUNK):
                        if abandoned.is_set():
                            raise TimeoutError(f"the copy of {name} was abandoned")
                        dst.write(chunk)
                        digest.update(chunk)
                        if progress is not None:
                            progress(len(chunk))
            return digest.hexdigest()

        left = max(0, size - _size_or_zero(target))
        try:
            return self.io(f"read {name}", job, left)
        except TimeoutError:
            abandoned.set()
            raise

    def delete(self, entry: Entry) -> None:
        self.remove(entry.name)

    def park(self, entry: Entry) -> None:
        """Set *entry* aside (renamed ``parked-...``): no longer a checkpoint of the run, but
        kept; rename it back to use it again."""
        self.io(
            f"park {entry.name}",
            lambda: self.fs.mv(self.path(entry.name), self.path(_layout.PARKED + entry.name)),
            entry.manifest.size,
        )
        self._manifests.pop(entry.name, None)

    def leftovers(self) -> list[str]:
        """Temporary files of writes cut short (local stores only)."""
        return [n for n in self.names() if n.startswith(".") and n.endswith(".tmp")]

    def __str__(self) -> str:
        return self.description


def _write_fd(path: str, chunks: Any, *, append: bool = False) -> None:
    write_fd(path, chunks, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC))


def _counted(chunks: Iterator[bytes], progress: Callable[[int], object] | None) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk
        if progress is not None:
            progress(len(chunk))


def _size_or_zero(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_into(f: Any, view: memoryview) -> int:
    readinto = getattr(f, "readinto", None)
    if readinto is not None:
        return int(readinto(view) or 0)
    data = f.read(len(view))
    view[: len(data)] = data
    return len(data)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in *path* durable (where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
