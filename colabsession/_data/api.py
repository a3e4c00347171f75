"""The code behind :mod:`colabsession.data` (its public names are listed there)."""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from colabsession._core.errors import ConfigError, DataError
from colabsession._core.files import reason
from colabsession._core.progress import bar as progress_bar
from colabsession._core.say import say
from colabsession._core.units import (
    Duration,
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)
from colabsession._data import dataset as _dataset
from colabsession._data import pack as _pack
from colabsession._data import stage as _stage
from colabsession._data.dataset import DatasetInfo
from colabsession._data.stage import StagedInfo
from colabsession._data.walk import SourceFile
from colabsession._drive.location import Location, resolve
from colabsession._runtime.runtime import home_dir
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)
PACKED = ".packed"
DEFAULT_LOCATION = "drive:datasets"
_advised: set[str] = set()  # sources told once that packing them would be faster


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset in a folder, as :func:`list` sees it without reading it whole."""

    name: str
    kind: str  # "packed", "folder" or "archive"
    files: int | None  # known for packed datasets
    size: int | None  # bytes of file data (packed), or of the archive
    shards: int | None


def pack(
    source: str | os.PathLike[str] | Location,
    dest: str | os.PathLike[str] | Location | None = None,
    *,
    shard_size: int | str = "256MiB",
    compression: str = "zstd",
    workers: int = 32,
    verify: bool = False,
    timeout: Duration = "120s",
) -> DatasetInfo:
    """Pack the folder *source* into shards at *dest* (default: ``<source>.packed`` beside it).

    The files are read by *workers* threads at once and written in their sorted order into
    tar shards of about *shard_size* bytes of data each (``zstd`` or ``none``: a plain tar that
    WebDataset reads as it is), a sample's files (``x.jpg``, ``x.json``) kept in one shard. The
    manifest, with each shard's size and sha256, is committed last. Packing again is
    incremental: shards whose files are unchanged are kept, new or changed files go into new
    shards; packing that was cut short continues. With *verify*, kept shards are read back and
    checked against their sha256 first (after :func:`stage` reported a damaged shard).
    """
    if compression not in ("zstd", "none"):
        raise ConfigError(f"compression must be 'zstd' or 'none', not {compression!r}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}")
    size = parse_bytes(shard_size, name="shard_size")
    seconds = parse_duration(timeout, name="timeout")
    started = time.monotonic()
    src = resolve(source)
    if _stage.is_archive(_name(src)):
        raise DataError(f"{src} is an archive already: stage it as it is, cs.data.stage({src})")
    target = resolve(dest) if dest is not None else _sibling(src)
    if _has_manifest(src, seconds):
        raise DataError(f"{src} is a packed dataset already: stage it, cs.data.stage({src})")
    inside = target.is_local == src.is_local and _within(target.path, src.path)
    skip_inside = (lambda p: p == target.path[len(src.path) :].strip("/")) if inside else None
    files = _stage.list_source(
        src, workers=workers, timeout=seconds, skip=skip_inside, packing=True
    )
    if not any(not f.is_dir for f in files):
        raise DataError(f"{src} holds no files to pack")
    total = sum(f.size for f in files)
    with progress_bar(total, f"packing {_name(src)}") as bar:
        info, written = _pack.pack(
            src,
            target,
            shard_size=size,
            compression=compression,
            workers=workers,
            timeout=seconds,
            verify=verify,
            files=files,
            progress=bar.update,
        )
    took = format_duration(time.monotonic() - started, precise=True)
    if written == 0:
        say(f"{target} is up to date with {src} ({info.files:,} files): nothing to pack")
    else:
        kept = len(info.shards) - written
        say(
            f"packed {src} ({info.files:,} files, {format_bytes(info.unpacked)}) into "
            f"{len(info.shards)} shard(s) at {target} ({written} written"
            + (f", {kept} unchanged" if kept else "")
            + f") in {took}; stage it in each session with cs.data.stage({str(src)!r})"
        )
    return info


def stage(
    source: str | os.PathLike[str] | Location,
    dest: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    timeout: Duration = "120s",
) -> Path:
    """Put the dataset *source* on this machine's disk and return the local folder.

    *source* is anything :func:`cs.drive.resolve` takes (``drive:datasets/flowers``, a path
    under the mount, an fsspec URL): a packed dataset (its ``.packed`` folder, or the folder
    that was packed), an archive (``.zip``, ``.tar``, ``.tar.gz``, ``.tar.zst``), or a plain
    folder. *dest* defaults to a folder under colabsession's home. Free space is checked first;
    copies run on *workers* threads (default 8 for shards, 32 for single files) and survive a
    kill: the same call continues. A call with an unchanged source returns at once.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}")
    seconds = parse_duration(timeout, name="timeout")
    started = time.monotonic()
    src = resolve(source)
    target = _destination(src, dest)
    with _stage.exclusive(target):  # another notebook on this machine staging the same
        result, again = _stage_now(src, target, workers, seconds, started)
    _report(result, started, again=again)
    if result.origin == "folder" and not again and str(src) not in _advised:
        _advised.add(str(src))
        say(
            f"{src} is not packed, so each of its {result.files:,} files was copied on its "
            f"own. Pack it once, cs.data.pack({str(src)!r}), and later sessions stage it from "
            "a few large shards instead (through a mount at 50 ms per operation, 20,000 small "
            "files took 10 min file by file and 6 s packed)"
        )
    return Path(result.path)


def _stage_now(
    src: Location, target: Path, workers: int | None, seconds: float, started: float
) -> tuple[StagedInfo, bool]:
    """What is staged at *target* from *src*, and whether it was there already."""
    if _stage.is_archive(_name(src)):
        return _stage.stage_archive(src, target, timeout=seconds, started=started)
    packed = _find_packed(src, seconds)
    if packed is not None:
        store, info, manifest = packed
        key = f"packed:{manifest}"
        found = _stage.cached(target, key)
        if found is not None:
            return found, True
        shards = workers or 8
        return _stage.stage_packed(
            store, info, key, target, workers=shards, timeout=seconds, started=started
        ), False
    files = _list(src, workers or 32, seconds, None)
    key = _stage.listing_key(files)
    found = _stage.cached(target, key)
    if found is not None:
        return found, True
    return _stage.stage_folder(
        src, files, key, target, workers=workers or 32, timeout=seconds, started=started
    ), False


def staged() -> builtins.list[StagedInfo]:
    """What is staged on this machine (in colabsession's home), newest first."""
    root = home_dir() / "datasets"
    found = []
    for path in root.glob(".*.staged.json"):
        record = _stage.staged_record(root / path.name[1 : -len(".staged.json")])
        if record is not None and Path(record.path).is_dir():
            found.append(record)
    return sorted(found, key=lambda r: r.staged, reverse=True)


def list(
    location: str | os.PathLike[str] | Location = DEFAULT_LOCATION,
    *,
    timeout: Duration = "120s",
) -> builtins.list[DatasetEntry]:
    """The datasets in the folder *location*: packed ones (with their size, from the
    manifest), archives, and plain folders (not read: they may hold many files)."""
    seconds = parse_duration(timeout, name="timeout")
    root = resolve(location)
    store = Store(root, timeout=seconds, durable=False)
    try:
        entries = store.io("list", lambda: root.fs.ls(root.path, detail=True))
    except FileNotFoundError:
        return []
    except (OSError, TimeoutError) as exc:
        raise DataError(f"cannot list {root} ({reason(exc)})") from None
    folders = {
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
        for e in entries
        if e.get("type") == "directory"
    }
    found = []
    for entry in sorted(entries, key=lambda e: str(e["name"])):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if entry.get("type") != "directory":
            if _stage.is_archive(name):
                found.append(DatasetEntry(name, "archive", None, int(entry.get("size") or 0), None))
            continue
        if name.endswith(PACKED) or f"{name}{PACKED}" not in folders:
            try:
                packed = _find_packed(root.join(name), seconds)
            except DataError as exc:
                logger.warning("colabsession: skipping %s: %s", name, exc)
                continue
            if packed is not None:
                _, info, _ = packed
                entry_name = name.removesuffix(PACKED)
                found.append(
                    DatasetEntry(entry_name, "packed", info.files, info.unpacked, len(info.shards))
                )
            elif not name.endswith(PACKED):
                found.append(DatasetEntry(name, "folder", None, None, None))
    return found


# Helpers ------------------------------------------------------------------------------------


def _name(location: Location) -> str:
    return location.path.rstrip("/").rsplit("/", 1)[-1]


def _sibling(location: Location) -> Location:
    path = location.path.rstrip("/")
    if "/" not in path.strip("/") and not location.is_local:
        raise ConfigError(f"{location}: pack a folder inside Drive, not its top folder")
    return Location(location.fs, path + PACKED, str(location).rstrip("/") + PACKED)


def _within(path: str, folder: str) -> bool:
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path.startswith(folder + "/")


def _has_manifest(location: Location, timeout: float) -> bool:
    try:
        names = Store(location, timeout=timeout, durable=False).names()
    except (OSError, TimeoutError):
        return False
    return bool(_dataset.manifests(set(names)))


def _find_packed(location: Location, timeout: float) -> tuple[Store, DatasetInfo, str] | None:
    """The packed dataset for *location*: itself, or ``<location>.packed`` beside it."""
    candidates = [location]
    if not _name(location).endswith(PACKED):
        candidates.insert(0, _sibling(location))
    for candidate in candidates:
        store = Store(candidate, timeout=timeout, durable=False)
        try:
            names = set(store.names())
        except (OSError, TimeoutError) as exc:
            raise DataError(f"cannot list {candidate} ({reason(exc)})") from None
        if not _dataset.manifests(names):
            continue
        found = _dataset.newest(store, names)
        if found is None:
            raise DataError(
                f"packing into {candidate} did not finish: run cs.data.pack() on the source "
                "again to continue it"
            )
        info, manifest = found
        return store, info, manifest
    return None


def _destination(source: Location, dest: str | os.PathLike[str] | None) -> Path:
    if dest is not None:
        return Path(dest).expanduser().absolute()
    name = _name(source).removesuffix(PACKED)
    for suffix in _stage.ARCHIVES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    origin = str(source).removesuffix(PACKED)
    for suffix in _stage.ARCHIVES:
        origin = origin.removesuffix(suffix)
    digest = hashlib.sha256(origin.encode()).hexdigest()[:8]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[-60:] or "data"
    return home_dir() / "datasets" / f"{slug}-{digest}"


def _list(
    location: Location, workers: int, timeout: float, skip: Callable[[str], bool] | None
) -> builtins.list[SourceFile]:
    return _stage.list_source(location, workers=workers, timeout=timeout, skip=skip)


def _report(record: StagedInfo, started: float, *, again: bool = False) -> Path:
    took = format_duration(time.monotonic() - started, precise=True)
    what = f"{record.files:,} files, {format_bytes(record.size)}"
    if again:
        say(f"{record.source} is staged already at {record.path} ({what}; checked in {took})")
    else:
        say(f"staged {record.source} ({what}) at {record.path} in {took}")
    return Path(record.path)
