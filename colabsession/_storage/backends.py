"""How a :class:`~.store.Store` reaches its files: one small class per kind of file system.

A backend does plain blocking file operations on full paths; the store names the files, caches
their manifests and bounds every call by a timeout. What differs between the kinds:

- :class:`ObjectStore` (the Drive API, a bucket, any fsspec file system that is not the local
  disk): files are written whole under their final name (nothing is renamed over or appended
  to: the Drive API can do neither); a listing gives sizes for free, and the end of a file is
  read by a ranged request (opening it would download it whole).
- :class:`LocalDisk`: a new file is written under a temporary name and renamed into place,
  fsynced when *durable* (the local mirror); files can be appended to; the end of a file is
  read by seeking.
- :class:`Mount` (a FUSE mount, Drive's in Colab): as the local disk, but copies and appends
  are bare system calls (Python's file objects add an fstat and an lseek, each a round trip).

:func:`backend_for` picks one from a location's file system; :data:`BACKENDS` maps an fsspec
protocol to the factory of its backend, so that another backend (an in-memory one in tests)
plugs in for a protocol of its own.

>>> from fsspec.implementations.memory import MemoryFileSystem
>>> from colabsession._drive.location import Location
>>> type(backend_for(Location(MemoryFileSystem(), "/run", "memory://run"))).__name__
'ObjectStore'
"""

from __future__ import annotations

import contextlib
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, TypeVar

from colabsession._core.files import write_fd
from colabsession._core.records import read_count
from colabsession._runtime.runtime import mount_type
from colabsession._storage import layout as _layout
from colabsession._storage.layout import Damaged, Manifest

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from colabsession._drive.location import Location

T = TypeVar("T")


class Backend(ABC):
    """A file system as a :class:`~.store.Store` uses it. Subclasses implement the abstract
    primitives; the rest have defaults built on them, which a backend overrides where its file
    system does better (a ranged read, a rename, an append)."""

    #: Whether :meth:`append` adds to a file in place (else a file is only written whole).
    appends: bool = False
    #: Whether a file may be mapped into memory to be read (``Store.load(lazy=True)``): only
    #: where a failed or stuck read cannot happen in a page fault, out of reach of timeouts.
    mappable: bool = False

    # The primitives -----------------------------------------------------------------------------

    @abstractmethod
    def names(self, folder: str) -> list[str]:
        """The names of the files in *folder*, each once; none if it does not exist."""

    @abstractmethod
    def sizes(self, folder: str) -> dict[str, int | None]:
        """The files of *folder* and their sizes (None where unknown); none if it does not
        exist."""

    @abstractmethod
    def info(self, path: str) -> dict[str, Any]:
        """The file's ``size`` and whatever else the file system says of it (times, identity).
        Raises FileNotFoundError."""

    @abstractmethod
    def open(self, path: str) -> IO[bytes]:
        """The file *path* opened for reading. Raises FileNotFoundError."""

    @abstractmethod
    def create(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A new file *path* to write (replacing one of the name), in a ``with`` block."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete *path*; a file already gone is fine."""

    @abstractmethod
    def move(self, source: str, target: str) -> None:
        """Rename *source* to *target*."""

    @abstractmethod
    def makedirs(self, folder: str) -> None:
        """Create *folder* and its parents; an existing one is fine."""

    # Built on the primitives ------------------------------------------------------------------

    def listing(self, folder: str) -> dict[str, int | None]:
        """The files of *folder*, with their sizes where the listing gives them without a
        request per file (None elsewhere)."""
        return self.sizes(folder)

    def size(self, path: str) -> int:
        return int(self.info(path)["size"])

    def read(self, path: str, limit: int | None = None) -> bytes:
        """The content of *path*; with *limit*, at most its first ``limit + 1`` bytes."""
        with self.open(path) as f:
            return bytes(f.read() if limit is None else f.read(limit + 1))

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """The bytes of *path* from *start* up to *end*."""
        with self.open(path) as f:
            f.seek(start)
            return bytes(f.read(end - start))

    def write(self, path: str, data: bytes) -> None:
        """Write the new file *path* whole."""
        with self.create(path) as f:
            f.write(data)

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> None:
        """Write the new file *path* from *chunks* (a copy from the local disk)."""
        with self.create(path) as f:
            for chunk in chunks:
                f.write(chunk)

    def replace(self, path: str, data: bytes) -> None:
        """Replace *path* so that a reader sees the old content or the new one whole (here a
        plain write: a file system without renames replaces on write)."""
        self.write(path, data)

    def append(self, path: str, data: bytes) -> None:
        """Add *data* at the end of *path* (only where :attr:`appends`)."""
        raise OSError(f"{type(self).__name__} cannot append to {path}")

    def commit(self, path: str, writer: Callable[[IO[bytes]], T]) -> T:
        """Write the new file *path* with ``writer(f)`` so that it counts only once whole
        (here under its final name: a checkpoint's trailer, written last, commits it)."""
        with self.create(path) as f:
            return writer(f)

    def read_manifest(self, path: str, name: str, size: int | None) -> Manifest:
        """The manifest in the trailer of the checkpoint file *path* (named *name*, of *size*
        bytes as a listing said, if known), by ranged reads of its end. Raises Damaged."""

        def read(total: int) -> Manifest:
            return _layout.read_manifest(
                lambda n: self.read_range(path, total - n, total), total, name
            )

        if size is not None:
            try:
                return read(size)
            except Damaged:  # a listing that lags (an older file of the name): ask the file
                if self.size(path) == size:
                    raise
        return read(self.size(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FileSystem(Backend):
    """The primitives on an fsspec file system *fs*; the base of the backends below."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def names(self, folder: str) -> list[str]:
        try:
            found = self.fs.ls(folder, detail=False)
        except (FileNotFoundError, NotADirectoryError):  # nothing saved there (yet)
            return []
        # A name once: Drive may list a new file twice for a while.
        return list(dict.fromkeys(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found))

    def sizes(self, folder: str) -> dict[str, int | None]:
        try:
            found = self.fs.ls(folder, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        sizes: dict[str, int | None] = {}
        for info in found:
            name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            size = info.get("size")
            if name and name not in sizes and info.get("type") != "directory":
                sizes[name] = read_count(size)  # a listing is untrusted too
        return sizes

    def info(self, path: str) -> dict[str, Any]:
        return dict(self.fs.info(path))

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def open(self, path: str) -> IO[bytes]:
        f: IO[bytes] = self.fs.open(path, "rb")
        return f

    def create(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        f: contextlib.AbstractContextManager[IO[bytes]] = self.fs.open(path, "wb")
        return f

    def read(self, path: str, limit: int | None = None) -> bytes:
        if limit is None:
            return bytes(self.fs.cat_file(path))
        return super().read(path, limit)

    def append(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "ab") as f:
            f.write(data)

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def move(self, source: str, target: str) -> None:
        self.fs.mv(source, target)

    def makedirs(self, folder: str) -> None:
        self.fs.makedirs(folder, exist_ok=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.fs).__name__})"


class ObjectStore(FileSystem):
    """An fsspec file system elsewhere than the local disk (the Drive API, a bucket, memory):
    files written whole under their final names, the end of a file read by a ranged request
    (the Drive API streams a file opened for reading from its start)."""

    def read_range(self, path: str, start: int, end: int) -> bytes:
        return bytes(self.fs.cat_file(path, start=start, end=end))


class LocalDisk(FileSystem):
    """The local file system (through *fs*, a LocalFiles or an fsspec LocalFileSystem): new
    files under a temporary name renamed into place, fsynced when *durable* (the local mirror;
    a folder that stands for Drive needs no fsync), appends in place, the end of a file read
    by seeking."""

    appends = True
    mappable = True

    def __init__(self, fs: AbstractFileSystem, *, durable: bool) -> None:
        super().__init__(fs)
        self.durable = durable

    def listing(self, folder: str) -> dict[str, int | None]:
        return dict.fromkeys(self.names(folder))  # sizes would cost a stat per file

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "wb") as f:
            f.write(data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())

    def replace(self, path: str, data: bytes) -> None:
        temp = _temporary(path, f".{secrets.token_hex(4)}.tmp")
        try:
            self.write(temp, data)
            os.replace(temp, path)
        except BaseException:
            _remove_quietly(temp)
            raise

    def commit(self, path: str, writer: Callable[[IO[bytes]], T]) -> T:
        temp = _temporary(path, ".tmp")
        try:
            with self.fs.open(temp, "wb") as f:
                result = writer(f)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temp, path)
            if self.durable:
                fsync_dir(os.path.dirname(path))
        except BaseException:
            _remove_quietly(temp)
            raise
        return result

    def read_manifest(self, path: str, name: str, size: int | None) -> Manifest:
        with self.fs.open(path, "rb") as f:
            total = f.seek(0, os.SEEK_END)

            def tail(n: int) -> bytes:
                f.seek(total - n)
                return bytes(f.read(n))

            return _layout.read_manifest(tail, total, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(durable={self.durable})"


class Mount(LocalDisk):
    """A FUSE mount (Drive's in Colab): the local disk's semantics, with copies and appends as
    bare system calls (each fstat or lseek that Python's file objects add is a round trip to
    the mount's daemon). A run's location there is not *durable*: the mount uploads later
    anyway, and an fsync is one more round trip. Never mapped into memory: a page fault
    that waits on Drive would hang its thread past any timeout, and a failed one kills the
    process (SIGBUS) instead of skipping the checkpoint."""

    mappable = False

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> None:
        write_fd(path, chunks, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def append(self, path: str, data: bytes) -> None:
        write_fd(path, [data], os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def _local(location: Location, durable: bool) -> Backend:
    if (mount_type(location.path) or "").startswith("fuse"):
        return Mount(location.fs, durable=durable)
    return LocalDisk(location.fs, durable=durable)


#: The backend factory for an fsspec protocol, ``factory(location, durable)``; a protocol not
#: listed gets an :class:`ObjectStore`.
BACKENDS: dict[str, Callable[[Location, bool], Backend]] = {"file": _local}


def backend_for(location: Location, *, durable: bool = False) -> Backend:
    """The backend of *location*, by its file system's protocol (see :data:`BACKENDS`);
    *durable*: fsync what is written, where the file system can (the local disk)."""
    protocol = location.fs.protocol
    for name in protocol if isinstance(protocol, tuple) else (protocol,):
        factory = BACKENDS.get(name)
        if factory is not None:
            return factory(location, durable)
    return ObjectStore(location.fs)


def _temporary(path: str, suffix: str) -> str:
    folder, _, name = path.rpartition("/")
    return f"{folder}/.{name}{suffix}"


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


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
