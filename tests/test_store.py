"""The store and its backends: a backend of one's own plugs in (as httpx's MockTransport does),
each backend is picked from its location, and every operation honours its own timeout."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

import colabsession as cs
from colabsession._drive.location import Location, local_files
from colabsession._storage import backends as _backends
from colabsession._storage import layout as _layout
from colabsession._storage.backends import Backend, LocalDisk, Mount, ObjectStore, backend_for
from colabsession._storage.layout import Manifest
from colabsession._storage.lease import Lease
from colabsession._storage.serialize import flatten
from colabsession._storage.store import Store

# A backend of one's own ---------------------------------------------------------------------------


class MemoryBackend(Backend):
    """Files in a dict: only the primitives, everything else from the base class."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._clock = 0

    def _folder(self, folder: str) -> dict[str, bytes]:
        prefix = folder.rstrip("/") + "/"
        with self._lock:
            return {
                p[len(prefix) :]: d
                for p, d in self.files.items()
                if p.startswith(prefix) and "/" not in p[len(prefix) :]
            }

    def names(self, folder: str) -> list[str]:
        self.calls.append("names")
        return list(self._folder(folder))

    def sizes(self, folder: str) -> dict[str, int | None]:
        self.calls.append("sizes")
        return {name: len(data) for name, data in self._folder(folder).items()}

    def info(self, path: str) -> dict[str, Any]:
        self.calls.append("info")
        with self._lock:
            if path not in self.files:
                raise FileNotFoundError(path)
            self._clock += 1
            return {"size": len(self.files[path]), "mtime": float(self._clock)}

    def open(self, path: str) -> IO[bytes]:
        self.calls.append("open")
        with self._lock:
            if path not in self.files:
                raise FileNotFoundError(path)
            return io.BytesIO(self.files[path])

    @contextlib.contextmanager
    def create(self, path: str) -> Iterator[IO[bytes]]:
        self.calls.append("create")
        buffer = io.BytesIO()
        yield buffer
        with self._lock:  # whole or not at all
            self.files[path] = buffer.getvalue()

    def remove(self, path: str) -> None:
        self.calls.append("remove")
        with self._lock:
            self.files.pop(path, None)

    def move(self, source: str, target: str) -> None:
        self.calls.append("move")
        with self._lock:
            self.files[target] = self.files.pop(source)

    def makedirs(self, folder: str) -> None:
        self.calls.append("makedirs")


class NoFS(AbstractFileSystem):  # type: ignore[misc]
    """A file system nothing may reach: what a store does must go through its backend."""

    protocol = "memory-backend"
    cachable = False

    def __getattribute__(self, name: str) -> Any:
        if name in FILE_OPERATIONS:
            raise AssertionError(f"the store reached past its backend: fs.{name}")
        return object.__getattribute__(self, name)


FILE_OPERATIONS = {
    *("ls", "info", "size", "exists", "isfile", "find", "open", "_open", "cat", "cat_file"),
    *("pipe", "pipe_file", "put_file", "get_file", "rm", "rm_file", "mv", "makedirs", "mkdir"),
}


def state(step: int) -> dict[str, Any]:
    return {"w": np.full((4, 3), step, dtype=np.float32), "step": step}


def test_a_store_works_through_a_backend_of_its_own() -> None:
    backend = MemoryBackend()
    store = Store(Location(NoFS(), "/run", "memory"), timeout=5, backend=backend)
    store.makedirs()
    store.write("notes.txt", b"one")
    store.replace("notes.txt", b"two")
    assert store.read("notes.txt") == b"two"
    assert store.read("notes.txt", limit=1) == b"tw"
    assert store.info("notes.txt")["size"] == 3
    assert not store.appends
    name = _layout.file_name(5)
    tree, arrays = flatten(state(5))
    fields = {"step": 5, "time": 1.0, "session": "s", "metrics": {}, "tree": tree}
    entry = store.commit(name, lambda f: _layout.write(f, arrays, **fields))
    fresh = Store(Location(NoFS(), "/run", "memory"), timeout=5, backend=backend)
    (found,) = fresh.entries()  # the manifest read from the file's end, through the backend
    assert found.manifest == entry.manifest
    assert {"sizes", "open"} <= set(backend.calls)
    np.testing.assert_array_equal(fresh.load(found)["w"], state(5)["w"])
    fresh.park(found)
    assert fresh.entries() == []
    assert f"/run/{_layout.PARKED}{name}" in backend.files


def test_a_checkpointer_round_trips_through_a_backend_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = MemoryBackend()
    monkeypatch.setitem(_backends.BACKENDS, NoFS.protocol, lambda location, durable: backend)
    location = Location(NoFS(), "/runs/a", "memory-backend://runs/a")
    with cs.Checkpointer(
        location, local_dir=tmp_path / "first", every=None, async_save=False
    ) as ckpt:
        ckpt.save(3, state(3), metrics={"loss": 0.5})
    assert any(p.startswith("/runs/a/ckpt-") for p in backend.files)
    assert any(p.startswith("/runs/a/history.") for p in backend.files)
    assert "/runs/a/lease.json" not in backend.files  # released at close
    # A new runtime: an empty local mirror, everything from the backend.
    restored = cs.Checkpointer(location, local_dir=tmp_path / "second").restore()
    assert restored is not None
    assert restored.step == 3
    np.testing.assert_array_equal(restored.state["w"], state(3)["w"])
    assert restored.metrics == {"loss": 0.5}


# The factory -------------------------------------------------------------------------------------


def test_the_backend_is_picked_from_the_location(tmp_path: Path, mount_table: Path) -> None:
    local = LocalFileSystem()
    assert type(backend_for(Location(MemoryFileSystem(), "/x", "memory://x"))) is ObjectStore
    disk = backend_for(Location(local, str(tmp_path / "run"), "run"), durable=True)
    assert type(disk) is LocalDisk
    assert disk.durable
    with mount_table.open("a") as table:
        table.write(f"drive {tmp_path / 'drive'} fuse.drive rw,nosuid,nodev 0 0\n")
    mount = backend_for(Location(local, str(tmp_path / "drive" / "run"), "drive:run"))
    assert type(mount) is Mount
    assert not mount.durable


def test_the_lease_passes_its_own_timeout_to_the_run_store(tmp_path: Path) -> None:
    seen: list[float | None] = []

    class Spy(Store):
        def io(
            self,
            what: str,
            func: Callable[[], Any],
            size: int = 0,
            *,
            timeout: float | None = None,
        ) -> Any:
            seen.append(timeout)
            return super().io(what, func, size, timeout=timeout)

    fs = LocalFileSystem()
    store = Spy(Location(fs, str(tmp_path), "run"), timeout=60)
    lease = Lease(store, owner="me", session="s", ttl=60, takeover=False, what="run", timeout=7)
    lease.acquire()
    lease.check()
    lease.release()
    assert seen
    assert set(seen) == {7}


# Per-call timeouts --------------------------------------------------------------------------------


class Hangs:
    """A file system whose listings, look-ups and opens wait until released (a stuck mount, a
    silent server); after a minute they answer, so a timeout not honoured fails, not hangs."""

    cachable = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def _hang(self) -> None:
        self.release.wait(60)

    def ls(self, *args: Any, **kwargs: Any) -> Any:
        self._hang()
        return super().ls(*args, **kwargs)  # type: ignore[misc]

    def info(self, *args: Any, **kwargs: Any) -> Any:
        self._hang()
        return super().info(*args, **kwargs)  # type: ignore[misc]

    def _open(self, *args: Any, **kwargs: Any) -> Any:
        self._hang()
        return super()._open(*args, **kwargs)  # type: ignore[misc]

    def cat_file(self, *args: Any, **kwargs: Any) -> Any:
        self._hang()
        return super().cat_file(*args, **kwargs)  # type: ignore[misc]


class HangingLocal(Hangs, LocalFileSystem):  # type: ignore[misc]
    pass


class HangingMemory(Hangs, MemoryFileSystem):  # type: ignore[misc]
    protocol = "hanging-memory"

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[str, Any] = {}  # its own files, not the class-wide ones
        self.pseudo_dirs = [""]


BACKEND_KINDS: dict[str, Callable[[Any], Backend]] = {
    "object store": ObjectStore,
    "local disk": lambda fs: LocalDisk(fs, durable=True),
    "mount": lambda fs: Mount(fs, durable=False),
}


def never_written(f: IO[bytes]) -> Manifest:
    raise AssertionError("the file was opened after its call timed out")


OPERATIONS: dict[str, Callable[[Store], object]] = {
    "list": lambda s: s.names(timeout=0.05),
    "look up": lambda s: s.info("notes.txt", timeout=0.05),
    "read": lambda s: s.read("notes.txt", timeout=0.05),
    "commit": lambda s: s.commit(_layout.file_name(1), never_written, timeout=0.05),
}


@pytest.fixture(params=list(BACKEND_KINDS))
def hanging(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Hangs, Store]]:
    kind = request.param
    fs: Hangs = HangingMemory() if kind == "object store" else HangingLocal()
    root = "/run" if kind == "object store" else str(tmp_path / "run")
    backend = BACKEND_KINDS[kind](fs)
    # The store's own default is unbounded: only the call's timeout can end a wait.
    store = Store(Location(fs, root, kind), timeout=None, backend=backend)
    fs.release.set()
    store.makedirs()
    store.write("notes.txt", b"hello")
    fs.release.clear()
    yield fs, store
    fs.release.set()  # the abandoned threads finish


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_each_backend_honours_the_timeout_of_one_call(
    hanging: tuple[Hangs, Store], operation: str
) -> None:
    fs, store = hanging
    with pytest.raises(TimeoutError, match=operation if operation != "commit" else "write"):
        OPERATIONS[operation](store)
    fs.release.set()
    assert store.read("notes.txt") == b"hello"  # the store is unharmed: it answers again


def test_a_call_without_a_timeout_of_its_own_has_the_store_s() -> None:
    fs = HangingMemory()
    store = Store(Location(fs, "/run", "memory"), timeout=0.05)
    try:
        with pytest.raises(TimeoutError, match="list on memory"):
            store.names()
    finally:
        fs.release.set()


class BreakingBackend(MemoryBackend):
    """Its files fail after *good* reads, as a mount that drops mid-file does."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def open(self, path: str) -> IO[bytes]:
        inner, good = super().open(path), self.good

        class Breaking(io.RawIOBase):
            reads = 0

            def read(self, size: int = -1) -> bytes:
                Breaking.reads += 1
                if Breaking.reads > good:
                    raise OSError(107, "Transport endpoint is not connected")
                return inner.read(size)

        return Breaking()  # type: ignore[return-value]


def test_a_fetch_reads_ahead_and_its_reader_s_failure_reaches_the_caller(tmp_path: Path) -> None:
    import hashlib

    from colabsession._storage.store import COPY_CHUNK

    data = bytes(range(256)) * (COPY_CHUNK // 64)  # four chunks
    backend = MemoryBackend()
    store = Store(Location(NoFS(), "/run", "memory"), timeout=5, backend=backend)
    store.makedirs()
    store.write("blob", data)
    target = tmp_path / "blob"
    assert store.fetch_file("blob", target, size=len(data)) == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    broken = BreakingBackend(good=2)
    broken.files = backend.files
    store = Store(Location(NoFS(), "/run", "memory"), timeout=5, backend=broken)
    with pytest.raises(OSError, match="not connected"):
        store.fetch_file("blob", tmp_path / "cut", size=len(data))
    assert (tmp_path / "cut").stat().st_size == 2 * COPY_CHUNK  # what was read, nothing more


def test_local_files_answer_as_fsspecs_local_file_system(tmp_path: Path) -> None:
    """A local location's file system (plain system calls, no fsspec import) says what fsspec's
    LocalFileSystem says, and hands what it lacks to one."""
    ours, theirs = local_files(), LocalFileSystem()
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(bytes(range(10)))
    a = str(tmp_path / "a.bin")
    assert ours.info(a) == theirs.info(a)
    assert sorted(ours.ls(str(tmp_path), detail=False)) == sorted(
        theirs.ls(str(tmp_path), detail=False)
    )
    assert sorted(i["name"] for i in ours.ls(str(tmp_path), detail=True)) == sorted(
        i["name"] for i in theirs.ls(str(tmp_path), detail=True)
    )
    assert ours.ls(a, detail=False) == theirs.ls(a, detail=False)
    for start, end in [(None, None), (2, 5), (-3, None), (1, -2)]:
        assert ours.cat_file(a, start=start, end=end) == theirs.cat_file(a, start=start, end=end)
    assert ours.size(a) == 10
    assert (ours.isfile(a), ours.isdir(a), ours.exists(a)) == (True, False, True)
    for missing in (ours.info, ours.ls, ours.cat_file, ours.rm_file):
        with pytest.raises(FileNotFoundError):
            missing(str(tmp_path / "none"))
    ours.makedirs(str(tmp_path / "x" / "y"), exist_ok=True)
    ours.mv(a, str(tmp_path / "x" / "b.bin"))
    assert [p["name"] for p in ours.find(str(tmp_path / "x"), detail=True).values()] == [
        str(tmp_path / "x" / "b.bin")
    ]  # find: not its own, fsspec's
    ours.rm(str(tmp_path / "x"), recursive=True)
    assert not (tmp_path / "x").exists()
    assert ours == local_files()
    assert Location(ours, "/a", "a") == Location(ours, "/a", "a")
