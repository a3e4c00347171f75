"""The code behind :mod:`colabsession.cache` (its public names are listed there)."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from colabsession._cache import manifest as _manifest
from colabsession._cache.manifest import CacheEntry, CacheManifest
from colabsession._core.errors import CacheError, DataError
from colabsession._core.files import reason, sha256_file, write_fd
from colabsession._core.hooks import at_final_save
from colabsession._core.records import InvalidRecord, read_json
from colabsession._core.say import say
from colabsession._core.timeout import map_bounded
from colabsession._core.units import (
    Duration,
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)
from colabsession._data import archive as _archive
from colabsession._data import stage as _stage
from colabsession._data.dataset import Shard
from colabsession._data.pack import ShardWriter
from colabsession._data.walk import SourceFile, read_ahead
from colabsession._drive.location import Location, resolve
from colabsession._runtime.runtime import home_dir
from colabsession._storage.store import SLOWEST, Store

logger = logging.getLogger(__name__)

DEFAULT_LOCATION = "drive:Colab Notebooks/colabsession/caches"
KNOWN = ("huggingface", "torch", "keras", "datasets")
BLOB_MIN = 1 << 20  # files this large are blobs of their own; smaller ones go into the part
TIMEOUT = 120.0  # seconds one Drive operation may take (more for a transfer, by its size)
WORKERS = 8  # blobs copied at once
GRACE = 3600  # seconds a blob or part no manifest names is left alone (a save may be under way)
LOCK_WAIT = 600.0  # seconds a save or restore waits for another one of the same cache here
# Files a download is still writing (huggingface_hub's, torch.hub's, tempfile's) and lock files.
_PARTIAL = (".incomplete", ".lock", ".tmp", ".part", ".partial")

CacheSpec = str | os.PathLike[str]


@dataclass(frozen=True)
class CacheReport:
    """What :func:`save`, :func:`restore` or :func:`prune` did to one cache.

    >>> report = cs.cache.save("huggingface")[0]           # doctest: +SKIP
    >>> report.uploaded, format_bytes(report.uploaded_bytes)  # doctest: +SKIP
    (1, '417.7 MiB')
    """

    name: str  # "huggingface", "torch", ... or a folder's name and a digest of its path
    path: str  # the local folder
    location: str  # its folder on Drive
    action: str  # "save", "restore" or "prune"
    files: int  # files and links in the cache (after the action)
    bytes: int  # bytes of file data in the cache (after the action)
    uploaded: int = 0  # blobs and parts written to Drive
    uploaded_bytes: int = 0
    restored: int = 0  # files and links written to the local folder
    restored_bytes: int = 0
    removed: int = 0  # paths dropped (prune) and files removed from Drive
    removed_bytes: int = 0
    seconds: float = 0.0
    manifest: str = ""  # the manifest written or read ("" when none)
    note: str = ""  # why nothing was done ("up to date", "nothing saved yet", ...)


@dataclass(frozen=True)
class CacheInfo:
    """A cache kept on Drive, as :func:`size` reads it from its manifests.

    >>> [(c.name, format_bytes(c.stored)) for c in cs.cache.size()]  # doctest: +SKIP
    [('huggingface', '1.3 GiB')]
    """

    name: str
    path: str  # the local folder it was saved from
    location: str
    files: int
    bytes: int  # bytes of file data it restores
    stored: int  # bytes it takes on Drive (each blob once, and the parts)
    heads: int  # manifests not yet merged (more than one: sessions saved at the same time)
    saved: str  # when the newest manifest was written (UTC, ISO 8601)


@dataclass(frozen=True)
class _Cache:
    name: str
    path: Path


# Which folder ------------------------------------------------------------------------------


def known_path(name: str) -> Path:
    """The local folder of the known cache *name*, as its library finds it."""
    env = os.environ
    xdg = Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    hf_home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else xdg / "huggingface"
    if name == "huggingface":
        hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        return Path(hub).expanduser() if hub else hf_home / "hub"
    if name == "datasets":
        found = env.get("HF_DATASETS_CACHE")
        return Path(found).expanduser() if found else hf_home / "datasets"
    if name == "torch":
        found = env.get("TORCH_HOME")
        return Path(found).expanduser() if found else xdg / "torch"
    if name == "keras":
        found = env.get("KERAS_HOME")
        return Path(found).expanduser() if found else Path("~/.keras").expanduser()
    raise CacheError(
        f"{name!r} is not a known cache ({', '.join(KNOWN)}): give a folder's path instead",
        cache=name,
    )


def _cache(spec: CacheSpec) -> _Cache:
    text = os.fspath(spec)
    if text in KNOWN:
        return _Cache(text, known_path(text).absolute())
    if "/" not in text and not text.startswith(("~", ".")):
        known_path(text)  # raises, naming the known ones
    path = Path(text).expanduser().absolute()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.name)[-40:] or "cache"
    return _Cache(f"{slug.lstrip('.') or 'cache'}-{digest}", path)


def _root(location: str | os.PathLike[str] | Location | None) -> Location:
    return resolve(location if location is not None else DEFAULT_LOCATION)


def _stores(root: Location, name: str) -> tuple[Store, Store]:
    folder = root.join(name)
    return (
        Store(folder, timeout=TIMEOUT, durable=False),
        Store(folder.join("blobs"), timeout=TIMEOUT, durable=False),
    )


def _local_dir() -> Path:
    return home_dir() / "caches"


@contextlib.contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """Hold cache *name* on this machine (a background save and a call from a cell)."""
    from filelock import FileLock, Timeout

    folder = _local_dir()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f".{name}.lock"))
    try:
        lock.acquire(timeout=LOCK_WAIT)
    except Timeout:
        raise CacheError(
            f"another save or restore of the cache {name!r} on this machine has not finished in "
            f"{LOCK_WAIT:g} s: wait for it, or restart the runtime",
            cache=name,
        ) from None
    try:
        yield
    finally:
        lock.release()


# What is local -----------------------------------------------------------------------------


def _skip(path: str) -> bool:
    name = path.rpartition("/")[2]
    return name == ".locks" or name.endswith(_PARTIAL)


def _listing(cache: _Cache) -> builtins.list[SourceFile]:
    location = resolve(str(cache.path))
    try:
        return _stage.list_source(location, workers=16, timeout=TIMEOUT, skip=_skip, packing=True)
    except DataError as exc:
        raise CacheError(str(exc), cache=cache.name, path=exc.path) from None


def _signature(item: SourceFile) -> str:
    """A file's size and whole-second time (a restored file gets its time back, so an unchanged
    cache has the signatures it was saved with); a folder's or link's as listed."""
    if item.is_dir or item.is_link:
        return item.signature
    return f"{item.size}:{int(item.mtime)}"


def _kind(item: SourceFile) -> str:
    return "dir" if item.is_dir else "link" if item.is_link else "file"


def _index_path(name: str) -> Path:
    return _local_dir() / f"{name}.index.json"


def _read_index(name: str) -> dict[str, Any]:
    """path -> [signature, sha256] of the large files hashed before (saves hash a file once)."""
    try:
        data = read_json(_index_path(name).read_bytes(), what="the cache index")
    except (OSError, InvalidRecord):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def _restored_key(heads: builtins.list[str], cache: _Cache) -> str:
    return json.dumps([str(cache.path), sorted(heads)])


def _marker(name: str) -> Path:
    return _local_dir() / f"{name}.restored.json"


# Save --------------------------------------------------------------------------------------


def save(
    *caches: CacheSpec,
    location: str | os.PathLike[str] | Location | None = None,
    _quiet: bool = False,
) -> builtins.list[CacheReport]:
    """Save each cache to Drive: only the large files Drive does not hold yet are uploaded.

    Each of *caches* is a known name (``"huggingface"``, ``"torch"``, ``"keras"``,
    ``"datasets"``, found where the library looks: ``HF_HUB_CACHE``, ``TORCH_HOME``, ...) or a
    folder's path; with none, every known cache that exists on this machine. Large files
    (1 MiB or more: a model's weights) are stored once each, by their content; the rest goes
    into one small part; a manifest, written last, commits the save. A model downloaded once is
    uploaded once, whatever else changes; a save cut short leaves the previous one whole; two
    sessions saving the same cache keep each other's files. *location* is the folder on Drive
    (default ``drive:Colab Notebooks/colabsession/caches``).

    >>> reports = cs.cache.save("huggingface")              # doctest: +SKIP
    colabsession: saved the cache huggingface (14 files, 417.9 MiB; 2 uploaded, 417.8 MiB) ...
    """
    root = _root(location)
    chosen = (
        [_cache(c) for c in caches]
        if caches
        else [c for c in map(_cache, KNOWN) if c.path.is_dir()]
    )
    reports = []
    for cache in chosen:
        with _exclusive(cache.name):
            report = _save(cache, root)
        reports.append(report)
        if not _quiet or report.uploaded:
            _say(report)
    return reports


def _save(cache: _Cache, root: Location) -> CacheReport:
    started = time.monotonic()
    if not cache.path.is_dir():
        raise CacheError(
            f"there is no cache {cache.name!r} at {cache.path} to save: the library has not "
            "downloaded anything there yet (or its folder is set elsewhere)",
            cache=cache.name,
            path=str(cache.path),
        )
    files = _listing(cache)
    store, blobs = _stores(root, cache.name)
    try:
        names = set(store.names())
        blob_sizes = blobs.sizes()
        found = _manifest.heads(store, names)
    except (OSError, TimeoutError) as exc:
        raise CacheError(
            f"cannot read the cache {cache.name!r} at {store} ({reason(exc)}); nothing was saved",
            cache=cache.name,
        ) from None
    # Blobs that a committed manifest names and Drive holds whole: never uploaded again.
    have: dict[str, str] = {}
    for _, info in found:
        for entry in info.entries:
            blob = entry.source
            if entry.sha256 and blob_sizes.get(blob, -1) in (entry.size, None):
                have.setdefault(entry.sha256, blob)
    now = int(time.time())
    index = _read_index(cache.name)
    large = [f for f in files if not f.is_dir and not f.is_link and f.size >= BLOB_MIN]
    small = [
        dataclasses.replace(f, signature=_signature(f))
        for f in files
        if f.is_dir or f.is_link or f.size < BLOB_MIN
    ]
    uploaded = uploaded_bytes = 0
    layer: dict[str, CacheEntry] = {}
    try:
        store.makedirs()
        todo: dict[str, SourceFile] = {}
        hashes: dict[str, str] = {}
        for item in large:
            signature = _signature(item)
            known = index.get(item.path)
            if isinstance(known, list) and len(known) == 2 and known[0] == signature:
                hashes[item.path] = str(known[1])
            else:
                hashes[item.path] = sha256_file(cache.path / item.path)
            if hashes[item.path] not in have:
                todo.setdefault(hashes[item.path], item)
        if todo:
            blobs.makedirs()
        for sha, item in todo.items():
            name = _manifest.blob_name(sha)
            _put(blobs, cache.path / item.path, name, item.size)
            if not _unchanged(cache.path / item.path, item):
                with contextlib.suppress(OSError, TimeoutError):
                    blobs.remove(name)  # its content may not be its name's any more
                raise CacheError(
                    f"{cache.path / item.path} changed while it was being saved (a download "
                    "still writing it?): save again once it is complete; the cache saved "
                    "before is unchanged",
                    cache=cache.name,
                    path=str(cache.path / item.path),
                )
            have[sha] = name
            uploaded += 1
            uploaded_bytes += item.size
        for item in large:
            sha = hashes[item.path]
            layer[item.path] = CacheEntry(
                item.path, "file", item.size, _signature(item), have[sha], sha,
                item.mode, int(item.mtime), now,
            )  # fmt: skip
        part, wrote = _part(cache, store, small, found)
        if wrote:
            uploaded += 1
            uploaded_bytes += part.size if part else 0
        for item in small:
            mtime = 0 if item.is_dir or item.is_link else int(item.mtime)  # not restored
            layer[item.path] = CacheEntry(
                item.path, _kind(item), item.size, item.signature,
                part.name if part else "", "", item.mode, mtime, now,
            )  # fmt: skip
        entries = _manifest.merge([_entries(info) for _, info in found] + [layer])
        if len(found) > 1 or (found and time.monotonic() - started > _manifest_age):
            entries = _present(store, blobs, entries, layer)
        head_names = [n for n, _ in found]
        previous = found[-1][1] if len(found) == 1 else None
        if not uploaded and previous is not None and _same(previous, entries, now):
            _write_json(_index_path(cache.name), _index(entries))
            _write_json(_marker(cache.name), _restored_key(head_names, cache))
            return _report(cache, store, "save", entries, started, head_names[0], "up to date")
        parts = {p.name: p for _, info in found for p in info.parts}
        if part is not None:
            parts[part.name] = part
        used = {e.source for e in entries.values()}
        sequence = 1 + max((n for n, _ in _manifest_numbers(names)), default=0)
        info = CacheManifest(
            name=cache.name,
            path=str(cache.path),
            entries=tuple(entries.values()),
            parts=tuple(p for n, p in sorted(parts.items()) if n in used),
            merged=tuple(head_names),
            sequence=sequence,
            created=datetime.now(timezone.utc).isoformat(),
            host=socket.gethostname(),
            version=CacheManifest.VERSION,
        )
        written = f"manifest.{sequence:06d}.{secrets.token_hex(4)}.json"
        store.write(written, info.to_json())  # the commit
    except (OSError, TimeoutError) as exc:
        raise CacheError(
            f"saving the cache {cache.name!r} to {store} failed ({reason(exc)}); the cache "
            "saved before is unchanged. What was uploaded is kept: save again to continue",
            cache=cache.name,
        ) from None
    for old in head_names:  # merged into the new one: superseded
        try:
            store.remove(old)
        except (OSError, TimeoutError) as exc:
            logger.warning("colabsession: could not remove the merged %s: %s", old, exc)
    _write_json(_index_path(cache.name), _index(entries))
    _write_json(_marker(cache.name), _restored_key([written], cache))
    return _report(cache, store, "save", entries, started, written, "", uploaded, uploaded_bytes)


_manifest_age = GRACE / 2  # a save this long may have met a prune: look again before the commit


def _present(
    store: Store, blobs: Store, entries: dict[str, CacheEntry], layer: dict[str, CacheEntry]
) -> dict[str, CacheEntry]:
    """*entries* less those carried from other saves whose blob or part is gone from Drive
    (a prune removed what newer saves no longer named, while this one was under way)."""
    there = set(store.names()) | set(blobs.names())
    kept = {p: e for p, e in entries.items() if p in layer or e.source in there}
    if len(kept) != len(entries):
        logger.warning(
            "colabsession: %d path(s) of %s saved by another session are gone from Drive "
            "(pruned); not carried over",
            len(entries) - len(kept),
            store,
        )
    return kept


def _manifest_numbers(names: set[str]) -> builtins.list[tuple[int, str]]:
    return [(int(m[1]), n) for n in names if (m := _manifest.MANIFEST.fullmatch(n))]


def _entries(info: CacheManifest) -> dict[str, CacheEntry]:
    return {e.path: e for e in info.entries}


def _same(previous: CacheManifest, entries: dict[str, CacheEntry], now: int) -> bool:
    """Whether *entries* say what *previous* does (and its times of being seen are recent
    enough for pruning by age: a day)."""
    old = _entries(previous)
    if old.keys() != entries.keys():
        return False
    for path, entry in entries.items():
        before = old[path]
        if dataclasses.replace(before, seen=entry.seen) != entry:
            return False
        if entry.seen != before.seen and now - before.seen > 86400:
            return False
    return True


def _index(entries: dict[str, CacheEntry]) -> dict[str, Any]:
    return {p: [e.signature, e.sha256] for p, e in entries.items() if e.sha256}


def _unchanged(path: Path, item: SourceFile) -> bool:
    """Whether the file *path* still has the size and time it was listed (and hashed) with."""
    try:
        there = path.stat()
    except OSError:
        return False
    return there.st_size == item.size and there.st_mtime == item.mtime


def _put(store: Store, source: Path, name: str, size: int) -> None:
    """Upload *source* as *name* and check that Drive holds it whole."""
    store.put_file(source, name)
    there = store.size(name)
    if there != size:
        raise OSError(f"{name} arrived as {there} bytes, not {size}")


def _part(
    cache: _Cache,
    store: Store,
    small: builtins.list[SourceFile],
    found: builtins.list[tuple[str, CacheManifest]],
) -> tuple[Shard | None, bool]:
    """The part holding *small* (an unchanged one from before, or a new one uploaded) and
    whether it was written now."""
    if not small:
        return None, False
    wanted = sorted((f.path, f.signature) for f in small)
    for _, info in reversed(found):
        for part in info.parts:
            if sorted((m.path, m.signature) for m in part.members) == wanted:
                return part, False
    location = resolve(str(cache.path))
    folder = _local_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".part-") as tmp:
        writer = ShardWriter(Path(tmp) / "part.tar.zst", "zstd", timeout=TIMEOUT)
        try:
            for item, data in read_ahead(location, small, workers=16, timeout=TIMEOUT):
                writer.add(item, data, location)
            size, sha256 = writer.close()
        except BaseException:
            writer.abort()
            raise
        name = _manifest.part_name(sha256)
        _put(store, writer.path, name, size)
    return Shard(name, size, sha256, writer.unpacked, tuple(writer.members)), True


# Restore -----------------------------------------------------------------------------------


def restore(
    *caches: CacheSpec,
    location: str | os.PathLike[str] | Location | None = None,
) -> builtins.list[CacheReport]:
    """Bring each cache back from Drive to its local folder, verified, at local-disk speed.

    Each of *caches* is a known name or a folder's path, as for :func:`save`; with none, every
    known cache that Drive holds. Every blob and part is checked against its sha256 and every
    link against the folder before anything is moved into place; files already in the local
    folder are kept as they are. A second call with nothing new on Drive returns at once.

    >>> reports = cs.cache.restore("huggingface")           # doctest: +SKIP
    colabsession: restored the cache huggingface (14 files, 417.9 MiB) to /root/.cache/...
    """
    root = _root(location)
    if caches:
        chosen = [_cache(c) for c in caches]
    else:
        on_drive = set(_folders(root))
        chosen = [_cache(name) for name in KNOWN if name in on_drive]
    reports = []
    for cache in chosen:
        with _exclusive(cache.name):
            report = _restore(cache, root)
        reports.append(report)
        _say(report)
    return reports


def _folders(root: Location) -> builtins.list[str]:
    store = Store(root, timeout=TIMEOUT, durable=False)
    try:
        listing = store.io("list", lambda: root.fs.ls(root.path, detail=True))
    except FileNotFoundError:
        return []
    except (OSError, TimeoutError) as exc:
        raise CacheError(f"cannot list the caches in {root} ({reason(exc)})") from None
    return sorted(
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
        for e in listing
        if e.get("type") == "directory"
    )


def _restore(cache: _Cache, root: Location) -> CacheReport:
    started = time.monotonic()
    store, blobs = _stores(root, cache.name)
    try:
        found = _manifest.heads(store, set(store.names()))
    except (OSError, TimeoutError) as exc:
        raise CacheError(
            f"cannot read the cache {cache.name!r} at {store} ({reason(exc)}); nothing was "
            "restored",
            cache=cache.name,
        ) from None
    if not found:
        return _report(cache, store, "restore", {}, started, "", "nothing saved yet")
    head_names = [n for n, _ in found]
    entries = _manifest.merge([_entries(info) for _, info in found])
    key = _restored_key(head_names, cache)
    with contextlib.suppress(OSError):
        if cache.path.is_dir() and _marker(cache.name).read_text() == json.dumps(key):
            return _report(cache, store, "restore", entries, started, head_names[-1], "restored")
    parts = {p.name: p for _, info in found for p in info.parts}
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.path.parent / f".{cache.path.name}.restoring-{secrets.token_hex(4)}"
    (_local_dir() / ".download").mkdir(parents=True, exist_ok=True)
    try:
        restored_bytes = _fetch_all(cache, store, blobs, entries, parts, partial)
        moved = _place(partial, cache.path, entries)
    except _archive.UnsafeArchive as exc:
        raise CacheError(
            f"the cache {cache.name!r} at {store} is damaged or unsafe ({exc}); nothing was "
            "restored. Save it again from a machine that holds it",
            cache=cache.name,
        ) from None
    except FileNotFoundError as exc:
        raise CacheError(
            f"the cache {cache.name!r} at {store} misses a file its manifest names "
            f"({reason(exc)}); nothing was restored. Save it again from a machine that holds it",
            cache=cache.name,
        ) from None
    except (OSError, TimeoutError) as exc:
        raise CacheError(
            f"restoring the cache {cache.name!r} from {store} failed ({reason(exc)}). What was "
            "copied is kept: run the same call again to continue",
            cache=cache.name,
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _write_json(_index_path(cache.name), _index(entries))
    _write_json(_marker(cache.name), key)
    skipped = sum(1 for e in entries.values() if e.kind != "dir") - moved
    return _report(
        cache, store, "restore", entries, started, head_names[-1],
        f"{skipped} kept as they were here" if skipped else "",
        restored=moved, restored_bytes=restored_bytes,
    )  # fmt: skip


def _fetch_all(
    cache: _Cache,
    store: Store,
    blobs: Store,
    entries: dict[str, CacheEntry],
    parts: dict[str, Shard],
    partial: Path,
) -> int:
    """Copy every part and blob to the local disk, verify each and unpack it into the new
    folder *partial* as one tree (the rules of :class:`~._archive.Unpacker`)."""
    downloads = _local_dir() / ".download"
    used_parts = [parts[n] for n in sorted({e.source for e in entries.values()}) if n in parts]
    # A blob this machine holds already at each of its paths is not copied (the local files
    # are kept as they are anyway).
    here = {p for p, e in entries.items() if e.sha256 and os.path.lexists(cache.path / p)}
    large: dict[str, CacheEntry] = {}
    for path, entry in entries.items():
        if entry.sha256 and path not in here:
            large.setdefault(entry.sha256, entry)
    jobs: builtins.list[tuple[Store, str, int, str, Path]] = [
        (store, p.name, p.size, p.sha256, downloads / f"{p.sha256}.tar.zst") for p in used_parts
    ] + [(blobs, e.source, e.size, e.sha256, downloads / e.sha256) for e in large.values()]

    def fetch(job: tuple[Store, str, int, str, Path]) -> Path:
        where, name, size, sha256, local = job
        part = local.with_name(local.name + ".part")
        with contextlib.suppress(FileNotFoundError):
            if local.stat().st_size == size:
                return local  # verified when it was moved there
        for _ in range(2):
            digest = where.fetch_file(name, part, size=size)
            if digest == sha256 and part.stat().st_size == size:
                os.replace(part, local)
                return local
            part.unlink()
        raise _archive.UnsafeArchive(f"{name} does not match its sha256 (copied twice)")

    unpacker = _archive.Unpacker(partial)
    largest = max((j[2] for j in jobs), default=0)
    arrived = map_bounded(
        fetch, jobs, workers=WORKERS, timeout=(TIMEOUT + largest / SLOWEST) * 2, what="copy"
    )
    written = 0
    try:
        for job, local in zip(jobs, arrived, strict=True):
            if local.name.endswith(".tar.zst"):
                part = parts[job[1]]
                owned = {p: e for p, e in entries.items() if e.source == part.name}
                with open(local, "rb") as raw:
                    stats = unpacker.add(
                        _owned(_archive.members(_archive.decompress(raw, "zstd")), owned),
                        limit=part.unpacked,
                    )
                if stats.files != len(owned):
                    raise _archive.UnsafeArchive(
                        f"{part.name} holds {stats.files} of the {len(owned)} paths its manifest "
                        "says it does"
                    )
                written += stats.unpacked
            else:
                for entry in entries.values():
                    if entry.sha256 == job[3] and entry.path not in here:
                        _place_blob(local, partial, entry)
                        written += entry.size
        unpacker.finish()
    finally:
        arrived.close()
    for entry in entries.values():
        if entry.kind == "file" and entry.mtime and entry.path not in here:
            os.utime(partial / entry.path, (entry.mtime, entry.mtime))
    for job in jobs:
        with contextlib.suppress(OSError):
            job[4].unlink()
    return written


def _place_blob(local: Path, partial: Path, entry: CacheEntry) -> None:
    """Put the verified blob *local* at *entry*'s path in the new folder *partial*: a hard link
    where the disk allows (no copy of a model's weights), else a copy; never through a link and
    never over a file. The manifest was checked to be one tree whose folders hold each blob's
    path (no link above one): checked here again on the disk."""
    target = partial / entry.path
    folder = entry.path.rpartition("/")[0]
    os.makedirs(target.parent, mode=0o755, exist_ok=True)
    inside = os.path.join(os.path.realpath(partial), *folder.split("/")) if folder else None
    if os.path.realpath(target.parent) != (inside or os.path.realpath(partial)):
        raise _archive.UnsafeArchive(f"{entry.path!r} passes through a link")
    try:
        os.link(local, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        with open(local, "rb") as src:
            chunks = iter(functools.partial(src.read, _archive.CHUNK), b"")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            write_fd(str(target), chunks, flags, entry.mode & 0o755 | 0o600)
    os.chmod(target, entry.mode & 0o755 | 0o600)


def _owned(
    members: Iterable[tuple[tarfile.TarInfo, Any]], owned: dict[str, CacheEntry]
) -> Iterator[tuple[tarfile.TarInfo, Any]]:
    """The members of a part that the manifest takes from it, each checked to be what the
    manifest says (a path another part or a blob holds now is passed over)."""
    for member, data in members:
        entry = owned.get(_archive.clean(member.name))
        if entry is None:
            continue
        kind = "dir" if member.isdir() else "link" if member.issym() else "file"
        if (
            kind != entry.kind
            or (kind == "link" and member.linkname != entry.link)
            or (kind == "file" and (not member.isreg() or member.size != entry.size))
        ):
            raise _archive.UnsafeArchive(f"{member.name!r} is not what the manifest says")
        yield member, data


def _place(partial: Path, dest: Path, entries: dict[str, CacheEntry]) -> int:
    """Move the restored tree into *dest*: whole when nothing is there, else path by path,
    keeping what is there already; the paths moved (files and links)."""
    if not os.path.lexists(dest):
        os.rename(partial, dest)
        return sum(1 for e in entries.values() if e.kind != "dir")
    real = os.path.realpath(dest)
    moved = 0
    for path, entry in entries.items():  # sorted: a folder before what it holds
        target = dest / path
        if os.path.lexists(target) or not (partial / path).parent.exists():
            continue
        parent = os.path.realpath(target.parent)
        if parent != real and not parent.startswith(real + os.sep):
            continue  # a link of this machine's own leads elsewhere: never write through it
        if not target.parent.is_dir():
            continue
        os.rename(partial / path, target)
        if entry.kind == "dir":
            moved += sum(
                1 for p, e in entries.items() if p.startswith(path + "/") and e.kind != "dir"
            )
        else:
            moved += 1
    return moved


# Size and pruning --------------------------------------------------------------------------


def size(
    *caches: CacheSpec, location: str | os.PathLike[str] | Location | None = None
) -> builtins.list[CacheInfo]:
    """The caches kept on Drive (*caches*, or all of them): files, bytes, and room on Drive.

    >>> for info in cs.cache.size():                        # doctest: +SKIP
    ...     print(info.name, info.files, format_bytes(info.stored))
    huggingface 14 417.9 MiB
    """
    root = _root(location)
    names = [_cache(c).name for c in caches] if caches else _folders(root)
    found = []
    for name in names:
        store, _ = _stores(root, name)
        try:
            heads = _manifest.heads(store, set(store.names()))
        except (OSError, TimeoutError) as exc:
            raise CacheError(f"cannot read {store} ({reason(exc)})", cache=name) from None
        if not heads:
            continue
        entries = _manifest.merge([_entries(info) for _, info in heads])
        blob_bytes = {e.source: e.size for e in entries.values() if e.sha256}
        parts = {p.name: p.size for _, i in heads for p in i.parts}
        used = {e.source for e in entries.values()}
        found.append(
            CacheInfo(
                name=name,
                path=heads[-1][1].path,
                location=str(store),
                files=sum(1 for e in entries.values() if e.kind != "dir"),
                bytes=sum(e.size for e in entries.values()),
                stored=sum(blob_bytes.values()) + sum(s for n, s in parts.items() if n in used),
                heads=len(heads),
                saved=max(i.created for _, i in heads),
            )
        )
    return found


def prune(
    *caches: CacheSpec,
    older_than: Duration | None = None,
    max_size: int | str | None = None,
    location: str | os.PathLike[str] | Location | None = None,
    _now: Callable[[], float] = time.time,
) -> builtins.list[CacheReport]:
    """Make the caches on Drive smaller: drop the files no save has seen for *older_than*
    (``"30d"``), then the least recently seen large files until a cache takes at most
    *max_size* (``"5GB"``); then delete from Drive what no manifest names any more (and what
    saves cut short left, once an hour old). With neither limit, only that clean-up runs.

    >>> reports = cs.cache.prune("huggingface", older_than="30d")  # doctest: +SKIP
    """
    age = parse_duration(older_than, name="older_than") if older_than is not None else None
    limit = parse_bytes(max_size, name="max_size") if max_size is not None else None
    root = _root(location)
    names = [_cache(c).name for c in caches] if caches else _folders(root)
    reports = []
    for name in names:
        with _exclusive(name):
            reports.append(_prune(name, root, age, limit, _now()))
        _say(reports[-1])
    return reports


def _prune(name: str, root: Location, age: float | None, limit: int | None, now: float) -> Any:
    started = time.monotonic()
    store, blobs = _stores(root, name)
    cache = _Cache(name, Path())
    try:
        names = set(store.names())
        heads = _manifest.heads(store, names)
        if not heads:
            return _report(cache, store, "prune", {}, started, "", "nothing saved")
        cache = _Cache(name, Path(heads[-1][1].path))
        entries = _manifest.merge([_entries(info) for _, info in heads])
        dropped = {p for p, e in entries.items() if age is not None and e.kind != "dir"
                   and e.seen < now - age}  # fmt: skip
        if limit is not None:
            by_blob: dict[str, tuple[int, int]] = {}
            for p, e in entries.items():
                if e.sha256 and p not in dropped:
                    seen = max(e.seen, by_blob.get(e.source, (0, 0))[0])
                    by_blob[e.source] = (seen, e.size)
            total = sum(s for _, s in by_blob.values())
            for blob, (_, blob_size) in sorted(by_blob.items(), key=lambda kv: kv[1][0]):
                if total <= limit:
                    break
                dropped |= {p for p, e in entries.items() if e.source == blob}
                total -= blob_size
        for p, e in entries.items():  # a link to what goes, goes too
            if (
                e.kind == "link"
                and os.path.normpath(f"{p.rpartition('/')[0]}/{e.link}").lstrip("/") in dropped
            ):
                dropped.add(p)
        removed_bytes = sum(entries[p].size for p in dropped)
        head = heads[-1][0]
        if dropped or len(heads) > 1:
            kept = {p: e for p, e in entries.items() if p not in dropped}
            used = {e.source for e in kept.values()}
            parts = {p.name: p for _, info in heads for p in info.parts}
            sequence = 1 + max((n for n, _ in _manifest_numbers(names)), default=0)
            info = CacheManifest(
                name=name,
                path=heads[-1][1].path,
                entries=tuple(kept.values()),
                parts=tuple(p for n, p in sorted(parts.items()) if n in used),
                merged=tuple(n for n, _ in heads),
                sequence=sequence,
                created=datetime.now(timezone.utc).isoformat(),
                host=socket.gethostname(),
                version=CacheManifest.VERSION,
            )
            head = f"manifest.{sequence:06d}.{secrets.token_hex(4)}.json"
            store.write(head, info.to_json())
            for old, _ in heads:
                store.remove(old)
            entries = kept
        used = {e.source for e in entries.values()}
        removed = len(dropped)
        old_enough = now - GRACE
        for where, listing in ((store, names), (blobs, set(blobs.names()))):
            for file in sorted(listing):
                written = _manifest.name_time(file)
                if written is None or file in used or written > old_enough:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    where.remove(file)
                removed += 1
    except (OSError, TimeoutError) as exc:
        raise CacheError(
            f"pruning the cache {name!r} at {store} failed ({reason(exc)}); what it holds is "
            "whole (a manifest is only replaced by a complete one)",
            cache=name,
        ) from None
    return _report(
        cache, store, "prune", entries, started, head, "", removed=removed,
        removed_bytes=removed_bytes,
    )  # fmt: skip


# Saving in the background ------------------------------------------------------------------


class Keeper:
    """Saves caches in the background when they change (see :func:`keep`).

    >>> keeper = cs.cache.keep("huggingface")               # doctest: +SKIP
    >>> keeper.stop()                                       # doctest: +SKIP
    """

    def __init__(
        self,
        caches: tuple[CacheSpec, ...],
        every: float,
        location: str | os.PathLike[str] | Location | None,
    ) -> None:
        self.caches = [_cache(c) for c in caches] if caches else [_cache(c) for c in KNOWN]
        self.every = every
        self.location = location
        self.reports: builtins.list[CacheReport] = []  # every save made, oldest first
        self.errors: builtins.list[str] = []  # why a save failed (it is tried again later)
        self._saved: dict[str, str] = {}
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._now = threading.Event()  # a Checkpointer's final save: save what changed, now
        self._forget = at_final_save(self._now.set)
        self._thread = threading.Thread(
            target=self._run, name="colabsession-cache-keep", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._now.wait(self.every)
            if self._stop.is_set():
                return
            force = self._now.is_set()
            self._now.clear()
            self.check(force=force)

    def check(self, *, force: bool = False) -> builtins.list[CacheReport]:
        """Save each cache that changed and has stayed unchanged since the last check (a
        download has finished), or, with *force*, each one that changed."""
        done = []
        for cache in self.caches:
            if not cache.path.is_dir():
                continue
            try:
                key = _stage.listing_key(_listing(cache))
            except (CacheError, OSError) as exc:
                self.errors.append(str(exc))
                continue
            stable = force or key == self._seen.get(cache.name)
            self._seen[cache.name] = key
            if key == self._saved.get(cache.name) or not stable:
                continue
            try:
                (report,) = save(str(cache.path), location=self.location, _quiet=True)
            except CacheError as exc:
                self.errors.append(str(exc))
                logger.warning("colabsession: saving the cache in the background failed: %s", exc)
                continue
            self._saved[cache.name] = key
            self.reports.append(report)
            done.append(report)
        return done

    def stop(self, *, save: bool = True, timeout: Duration = "10min") -> None:
        """Stop saving in the background; with *save*, save once more what changed (waiting
        at most *timeout* for a save under way)."""
        self._forget()
        self._stop.set()
        self._now.set()
        self._thread.join(parse_duration(timeout, name="timeout"))
        if save:
            self.check(force=True)


def keep(
    *caches: CacheSpec,
    every: Duration = "2min",
    location: str | os.PathLike[str] | Location | None = None,
) -> Keeper:
    """Save the caches in the background whenever they change: each *every*, a cache whose
    files changed and then stayed as they are for one more look (a download has finished) is
    saved, incrementally; and at once when a :class:`~colabsession.Checkpointer` makes its final
    save (the session deadline is near). Colab ends a runtime without running ``atexit``: this
    saves a model soon after it is downloaded, without a cell to remember. Returns the
    :class:`Keeper`; its ``stop()`` ends it (saving what changed meanwhile).

    >>> keeper = cs.cache.keep("huggingface", every="1min")  # doctest: +SKIP
    """
    seconds = parse_duration(every, name="every")
    return Keeper(caches, seconds, location)


# Reports -----------------------------------------------------------------------------------


def _report(
    cache: _Cache,
    store: Store,
    action: str,
    entries: dict[str, CacheEntry],
    started: float,
    manifest: str,
    note: str,
    uploaded: int = 0,
    uploaded_bytes: int = 0,
    *,
    restored: int = 0,
    restored_bytes: int = 0,
    removed: int = 0,
    removed_bytes: int = 0,
) -> CacheReport:
    return CacheReport(
        name=cache.name,
        path=str(cache.path),
        location=str(store),
        action=action,
        files=sum(1 for e in entries.values() if e.kind != "dir"),
        bytes=sum(e.size for e in entries.values()),
        uploaded=uploaded,
        uploaded_bytes=uploaded_bytes,
        restored=restored,
        restored_bytes=restored_bytes,
        removed=removed,
        removed_bytes=removed_bytes,
        seconds=round(time.monotonic() - started, 3),
        manifest=manifest,
        note=note,
    )


def _say(report: CacheReport) -> None:
    took = format_duration(report.seconds, precise=True)
    what = f"{report.files:,} files, {format_bytes(report.bytes)}"
    if report.action == "save":
        if report.note:
            say(f"the cache {report.name} is {report.note} on Drive ({what}; checked in {took})")
        else:
            say(
                f"saved the cache {report.name} ({what}; {report.uploaded} uploaded, "
                f"{format_bytes(report.uploaded_bytes)}) to {report.location} in {took}"
            )
    elif report.action == "restore":
        if report.note == "nothing saved yet":
            say(f"nothing is saved for the cache {report.name} at {report.location} yet")
        elif report.note == "restored":
            say(f"the cache {report.name} is restored already at {report.path} ({what})")
        else:
            extra = f"; {report.note}" if report.note else ""
            say(f"restored the cache {report.name} ({what}{extra}) to {report.path} in {took}")
    else:
        say(
            f"pruned the cache {report.name}: {report.removed} removed "
            f"({format_bytes(report.removed_bytes)} of files); {what} kept"
        )
