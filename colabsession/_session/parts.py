"""The parts that :func:`colabsession.session` brings back, each a small object: a ``name``, a
``key`` (the same work twice has the same key) and ``run()``, which does the work and returns a
one-line summary, keeping what it brought back in ``result``.

A part is built in the calling thread (that is where its locations are resolved, so the Drive
mount is made once, before any thread asks for it) and run in a thread of its own.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

from colabsession._core.errors import CheckpointError, ColabSessionError
from colabsession._core.files import reason
from colabsession._core.units import format_bytes
from colabsession._drive.location import Location, resolve
from colabsession._env.manifest import EnvInfo
from colabsession._storage import layout as _layout
from colabsession._storage.checkpointer import Checkpointer, CheckpointInfo, RunLike
from colabsession._storage.layout import Damaged
from colabsession._storage.lineage import split_live
from colabsession._storage.runs import run_location, run_stores
from colabsession._storage.serialize import frameworks_in
from colabsession._storage.store import Entry, Store

logger = logging.getLogger(__name__)
RUN_TIMEOUT = 60.0  # seconds any one operation on the run's location may take (more by size)
DEFAULT_ENV = "my_env"  # as cs.env's

Source = str | os.PathLike[str] | Location


class Part(Protocol):
    """One thing a session brings back: ``run()`` does it in a thread of its own and returns a
    one-line summary (or raises, a :class:`ColabSessionError` saying what to do)."""

    @property
    def name(self) -> str: ...

    def run(self) -> str: ...


def key_of(part: Part) -> Hashable:
    """What makes two parts the same work (done once per process): the part's ``key``, else
    its name."""
    key = getattr(part, "key", None)
    return key if key is not None else part.name


class EnvPart:
    """``cs.env.restore``: the environment *env* (the default one only when it is saved)."""

    def __init__(self, env: str, location: Source | None) -> None:
        from colabsession._env.persist import DEFAULT_LOCATION

        self.name = "env"
        self.env = env
        self.location = resolve(location or DEFAULT_LOCATION)
        self.key = ("env", env, str(self.location))
        self.result: EnvInfo | None = None
        self.finished = threading.Event()  # set once the environment is active (or failed)

    def run(self) -> str:
        try:
            return self._run()
        finally:
            self.finished.set()

    def _run(self) -> str:
        from colabsession._env.api import restore

        # The default name is restored when it was saved, like cs.env.restore() with no name.
        name = None if self.env == DEFAULT_ENV else self.env
        info = self.result = restore(name, location=self.location)
        if info is None:
            return f"no environment {self.env!r} saved yet: nothing to restore"
        size = format_bytes(info.unpacked or info.size)
        return f"environment {info.name!r} active ({len(info.packages)} package(s), {size})"


class DataPart:
    """``cs.data.stage``: the dataset *source* on the local disk."""

    def __init__(self, source: Source) -> None:
        self.location = resolve(source)
        tail = self.location.path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".packed")
        self.name = f"data:{tail}"
        self.key = ("data", str(self.location))
        self.result: Path | None = None
        self.finished = threading.Event()  # set once the dataset is staged (or failed)

    def run(self) -> str:
        try:
            return self._run()
        finally:
            self.finished.set()

    def _run(self) -> str:
        from colabsession._data.api import stage
        from colabsession._data.stage import staged_record

        path = self.result = stage(self.location)
        record = staged_record(path)
        if record is None:
            return f"staged at {path}"
        return f"{record.files:,} files, {format_bytes(record.size)} at {path}"


class CachePart:
    """``cs.cache.restore``: the framework caches *caches* (names or folders)."""

    def __init__(self, caches: Sequence[str | os.PathLike[str]], location: Source | None) -> None:
        self.name = "cache"
        self.caches = tuple(caches)
        self.location = location
        where = None if location is None else str(resolve(location))
        self.key = ("cache", tuple(os.fspath(c) for c in self.caches), where)
        self.result: list[Any] | None = None

    def run(self) -> str:
        try:
            cache = importlib.import_module("colabsession.cache")
        except ModuleNotFoundError as exc:
            if exc.name != "colabsession.cache":
                raise
            raise ColabSessionError(
                "this colabsession has no cs.cache: upgrade colabsession, or leave caches out "
                "of cs.session()"
            ) from None
        reports = self.result = list(cache.restore(*self.caches, location=self.location))
        return "; ".join(_describe(r) for r in reports) or "no caches saved yet"


def _describe(report: Any) -> str:
    """One cache's report in a few words: its own ``summary`` where it has one, else (a
    ``cs.cache.CacheReport``) its name, files and size, and its note."""
    summary = getattr(report, "summary", None)
    if isinstance(summary, str):
        return summary
    name, files, size = (getattr(report, a, None) for a in ("name", "files", "bytes"))
    if isinstance(name, str) and isinstance(files, int) and isinstance(size, int):
        note = getattr(report, "note", "")
        what = f"{name}: {files:,} files, {format_bytes(size)}"
        return f"{what} ({note})" if note else what
    return str(report)


class RunPart:
    """The run's newest valid checkpoint, brought from its location to the local mirror (read,
    verified, then renamed into place), so that ``Checkpointer.restore()`` later reads it from
    the local disk. Nothing is decoded, no framework imported and no lease taken. As soon as the
    newest checkpoint is known, ``frameworks`` holds those whose arrays it has (``"torch"``,
    ``"jax"``) and ``found`` is set (set too when the part ends without one)."""

    def __init__(self, run: RunLike | Checkpointer) -> None:
        self.name = "run"
        self.local: Store
        self.remote: Store | None
        if isinstance(run, Checkpointer):
            self.location = run.location
            self.local, self.remote = run.local, run.remote
        else:
            self.location = run_location(run)
            self.local, self.remote = run_stores(self.location, None, timeout=RUN_TIMEOUT)
        self.key = ("run", str(self.location), self.local.root)
        self.result: CheckpointInfo | None = None
        self.frameworks: tuple[str, ...] = ()
        self.found = threading.Event()

    def run(self) -> str:
        try:
            return self._run()
        finally:
            self.found.set()

    def _run(self) -> str:
        local = self.local.entries()
        entries = list(local)
        if self.remote is not None:
            names = {e.name for e in local}
            try:
                entries += [e for e in self.remote.entries() if e.name not in names]
            except (OSError, TimeoutError) as exc:
                raise CheckpointError(
                    f"cannot list {self.remote} ({reason(exc)}): the run's checkpoints there "
                    "were not looked at. Run cs.session() again once Drive answers (a "
                    "Checkpointer meanwhile restores what is on the local disk)",
                    path=str(self.location),
                ) from None
        live = split_live(entries)[0]
        live.sort(key=lambda e: (-e.step, -e.manifest.time, e.store is not self.local))
        if live:  # what restoring it will import: known now, while it is being copied
            self.frameworks = tuple(sorted(frameworks_in(live[0].manifest.tree)))
            self.found.set()
        skipped = 0
        for entry in live:
            if entry.store is self.local:
                self.result = _info(entry, entry.where)
                return f"step {entry.step} of {self.location} is on the local disk already"
            try:
                where = self._fetch(entry)
            except (Damaged, OSError, TimeoutError) as exc:
                logger.warning(
                    "colabsession: skipping checkpoint step %d in %s: %s",
                    entry.step,
                    entry.where,
                    exc if isinstance(exc, Damaged) else reason(exc),
                )
                skipped += 1
                continue
            self.result = _info(entry, where)
            return (
                f"step {entry.step} of {self.location} ({format_bytes(entry.manifest.size)}) "
                "brought to the local disk"
            )
        if skipped:
            raise CheckpointError(
                f"none of the {skipped} checkpoint(s) of {self.location} could be read whole "
                "(see the warnings above): run cs.session() again; if it fails again, "
                "ckpt.verify() tells which files are damaged",
                path=str(self.location),
            )
        return f"nothing saved in {self.location} yet: training starts from the beginning"

    def _fetch(self, entry: Entry) -> str:
        """Copy *entry* into the local mirror under a temporary name, check its trailer and
        arrays, and rename it into place; its part files first, each checked likewise. Raises
        Damaged, OSError or TimeoutError."""
        assert self.remote is not None
        folder = Path(self.local.root)
        folder.mkdir(parents=True, exist_ok=True)
        for part in entry.manifest.parts or []:
            self._fetch_part(part, folder)
        temp = folder / f".{entry.name}.{secrets.token_hex(4)}.tmp"
        try:
            self.remote.fetch_file(entry.name, temp, size=entry.manifest.size)
            size = temp.stat().st_size
            with open(temp, "rb") as f:

                def tail(n: int) -> bytes:
                    f.seek(size - n)
                    return f.read(n)

                manifest = _layout.read_manifest(tail, size, entry.name)
                if manifest.crc32c != entry.manifest.crc32c or manifest.size != entry.manifest.size:
                    raise Damaged("it changed while it was being copied")
                f.seek(0)
                _layout.check_arrays(f, manifest)
                os.fsync(f.fileno())
            target = folder / entry.name
            os.replace(temp, target)
            return str(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def _fetch_part(self, part: _layout.Part, folder: Path) -> None:
        assert self.remote is not None
        temp = folder / f".{part.file}.{secrets.token_hex(4)}.tmp"
        try:
            self.remote.fetch_file(part.file, temp, size=part.size)
            with open(temp, "rb") as f:
                _layout.check_part(f, part)
                os.fsync(f.fileno())
            os.replace(temp, folder / part.file)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _info(entry: Entry, where: str) -> CheckpointInfo:
    manifest = entry.manifest
    return CheckpointInfo(
        entry.step, where, manifest.created, dict(manifest.metrics), manifest.session
    )
