"""Persisting a layer to the location and fetching it back: one archive named by its content
and numbered manifests, the newest complete one being the environment; saves into one
environment serialised by compare-and-swap on the manifests' numbers; a fetch verified and
unpacked in one pass before anything is activated."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from colabsession._core.errors import ColabSessionError, EnvError
from colabsession._core.files import reason, sha256_file
from colabsession._core.progress import bar as progress_bar
from colabsession._core.records import InvalidRecord
from colabsession._core.units import format_bytes
from colabsession._data import archive as _archive
from colabsession._drive.location import Location, resolve
from colabsession._env.local import local_root, move_into_place
from colabsession._env.manifest import (
    LEGACY_MANIFEST,
    MAX_MANIFEST,
    EnvInfo,
    is_archive,
    manifest_name,
    newest,
    parse_manifest,
    sequences,
)
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)

DEFAULT_LOCATION = "drive:Colab Notebooks/colabsession/envs"
TIMEOUT = 120.0  # seconds any one Drive operation may take (more for the archive, by its size)
MAX_RATIO = 64  # unpacked bytes per archive byte at most, when the manifest does not say


def env_root(location: str | os.PathLike[str] | Location | None) -> Location:
    """The folder that holds the environments, checked to be one (and to answer in time)."""
    root = resolve(location or DEFAULT_LOCATION)
    store = Store(root, timeout=TIMEOUT, durable=False)
    try:
        is_file = store.io("look up", lambda: root.fs.isfile(root.path))
    except TimeoutError as exc:  # a mount that stopped answering: say so, never hang
        raise EnvError(f"cannot reach the environments in {root} ({reason(exc)})") from None
    except OSError:
        is_file = False
    if is_file:
        raise EnvError(
            f"{root} is a file: give the folder that holds the environments (default "
            f"{DEFAULT_LOCATION})"
        )
    return root


def env_store(location: str | os.PathLike[str] | Location | None, name: str) -> Store:
    return store_in(env_root(location), name)


def store_in(root: Location, name: str) -> Store:
    return Store(root.join(name), timeout=TIMEOUT, durable=False)


def names_in(root: Location) -> list[str]:
    """The names of what *root* holds, sorted (environments among them)."""
    try:
        return sorted(Store(root, timeout=TIMEOUT, durable=False).names())
    except (OSError, TimeoutError) as exc:
        raise EnvError(f"cannot list the environments in {root} ({reason(exc)})") from None


def current(
    store: Store, name: str, *, missing_ok: bool = False, names: set[str] | None = None
) -> EnvInfo | None:
    """The newest complete manifest of the environment in *store* (whose archive is there); an
    older one serves when a newer one is damaged. *names*: the folder's listing, if known."""
    names = listing(store, name) if names is None else names
    numbered = sorted(((k, n) for n, k in sequences(names).items()), reverse=True)
    manifests = [n for _, n in numbered] + ([LEGACY_MANIFEST] if LEGACY_MANIFEST in names else [])
    problems = []
    for manifest in manifests:
        try:
            info = parse_manifest(store.read(manifest, limit=MAX_MANIFEST), name, manifest)
        except (InvalidRecord, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        if info.archive not in names:
            problems.append(f"{manifest} names {info.archive}, which is missing")
            continue
        if problems:
            logger.warning(
                "colabsession: environment %r: skipping what is damaged (%s); using %s",
                name,
                "; ".join(problems),
                manifest,
            )
        return info
    if problems:
        raise EnvError(
            f"environment {name!r} in {store} is damaged ({'; '.join(problems)}). Rebuild it "
            f"with cs.env.install(..., name={name!r}) (the damaged files stay until the new one "
            f"is saved), or delete it with cs.env.remove({name!r})"
        )
    if missing_ok:
        return None
    raise EnvError(
        f"there is no environment {name!r} in {store}: create it with "
        f"cs.env.install(..., name={name!r})"
    )


def listing(store: Store, name: str) -> set[str]:
    """The names of the environment's files in *store*."""
    try:
        return set(store.names())
    except (OSError, TimeoutError) as exc:
        raise EnvError(f"cannot read the environment {name!r} in {store} ({reason(exc)})") from None


def delete(store: Store, name: str) -> None:
    """Delete the environment *name*, all of it, from the location."""
    try:
        if not store.names():
            raise EnvError(f"there is no environment {name!r} in {store}")
        store.io("delete", lambda: store.fs.rm(store.root, recursive=True))
    except (OSError, TimeoutError) as exc:
        raise EnvError(
            f"cannot delete the environment {name!r} in {store} ({reason(exc)})"
        ) from None


def _raced(name: str, what: str) -> EnvError:
    return EnvError(
        f"another install into environment {name!r} {what}, so this one saved nothing (two "
        "at once would leave only one of them). Run cs.env.install() again: it adds to the "
        "environment as the other one saved it"
    )


def persist(
    store: Store,
    name: str,
    layer: Path,
    requirements: Sequence[str],
    pins: Sequence[tuple[str, str]],
    tool: str,
    tmp: Path,
    base: int,
) -> EnvInfo:
    """Archive *layer* and save it: the archive under a name of its content, then a new
    manifest (the commit); only then the older manifests and archives are removed.

    Saves into one environment are serialised by compare-and-swap on the manifests' numbers:
    the new one is numbered *base* + 1, *base* being the newest when the install began. A
    newer one found before the commit (another install saved meanwhile), or another of the same
    number found after it (one saving at the same moment), means this install withdraws and
    says so: it was built on what is no longer the environment."""
    archive = tmp / "layer.tar.zst"
    stats = _archive.pack(layer, archive)
    digest = sha256_file(archive)
    try:
        names = set(store.names())
    except (OSError, TimeoutError) as exc:
        raise EnvError(
            f"saving environment {name!r} to {store} failed ({reason(exc)}); its previous "
            "version is unchanged"
        ) from None
    if newest(names) != base:
        raise _raced(name, "saved a new version while this one was building")
    sequence = base + 1
    info = EnvInfo(
        name=name,
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=sysconfig.get_platform(),
        requirements=tuple(requirements),
        packages=tuple(pins),
        archive=f"layer-{digest[:16]}{_archive.suffix('zstd')}",
        size=archive.stat().st_size,
        sha256=digest,
        created=datetime.now(timezone.utc).isoformat(),
        installer=tool,
        colab_release=os.environ.get("COLAB_RELEASE_TAG") or None,
        files=stats.files,
        unpacked=stats.unpacked,
        sequence=sequence,
        version=EnvInfo.VERSION,
    )
    manifest = manifest_name(sequence, secrets.token_hex(4))
    try:
        store.makedirs()
        if info.archive not in names:
            _copy_up(archive, store, info.archive, f"saving {name}")
            there = store.io("look up", lambda: store.fs.info(store.path(info.archive)))
            if there.get("size") != info.size:
                raise EnvError(
                    f"the archive written to {store} is incomplete; the previous version of "
                    f"{name!r} is unchanged"
                )
        store.write(manifest, info.to_json(indent=1))  # the commit
    except (OSError, TimeoutError) as exc:
        raise EnvError(
            f"saving environment {name!r} to {store} failed ({reason(exc)}); its previous "
            "version is unchanged"
        ) from None
    try:
        rivals = [n for n, k in sequences(store.names()).items() if k == sequence]
    except (OSError, TimeoutError) as exc:  # saved; the check before the commit has to do
        logger.warning("colabsession: could not look for a concurrent install: %s", exc)
        rivals = []
    if any(n != manifest for n in rivals):  # saved with another: neither may claim it
        with contextlib.suppress(OSError, TimeoutError):
            store.remove(manifest)
        raise _raced(name, "saved at the same moment")
    numbered = sequences(names)
    for old in names:  # the new manifest is whole: what it replaces can go
        stale = old in numbered or old == LEGACY_MANIFEST
        if stale or (is_archive(old) and old != info.archive):
            try:
                store.remove(old)
            except (OSError, TimeoutError) as exc:
                logger.warning("colabsession: could not remove the old %s: %s", old, exc)
    return info


def _copy_up(source: Path, store: Store, name: str, desc: str) -> None:
    with progress_bar(source.stat().st_size, desc) as bar:
        store.put_file(source, name, progress=bar.update)


def fetch(store: Store, info: EnvInfo) -> Path:
    """Read the archive from *store*, hashing and unpacking it in one pass, into a new folder
    that is moved into place only once the archive is verified; returns the local layer."""
    root = local_root() / info.name
    root.mkdir(parents=True, exist_ok=True)
    _check_space(root, info)
    temp = root / f".fetch-{secrets.token_hex(4)}"
    compression = _archive.compression_of(info.archive)
    # A manifest that declares no unpacked size (colabsession 0.1's, or one that says 0) gets a
    # limit from the archive's own size: no layer compresses that well, a bomb does.
    limit = info.unpacked or info.size * MAX_RATIO

    def job() -> _archive.HashingReader:
        # One pass: a thread reads the archive from Drive, hashes and decompresses it, while this
        # one unpacks (both libraries release the GIL, so the work shares two cores).
        with store.fs.open(store.path(info.archive), "rb") as raw:
            reader = _archive.HashingReader(raw)
            tar_bytes = _archive.decompress(reader, compression)  # type: ignore[arg-type]
            with (
                _archive.Prefetch(tar_bytes) as ahead,
                progress_bar(info.files or None, f"restoring {info.name}", unit="files") as bar,
            ):
                _archive.unpack(ahead, temp, limit=limit, progress=lambda _: bar.update())  # type: ignore[arg-type]
                ahead.drain()
            reader.drain()  # bytes after the compressed stream's end count in the hash too
            return reader

    try:
        reader = store.io(f"read {info.archive}", job, info.size)
        if reader.size != info.size or reader.sha256.hexdigest() != info.sha256:
            raise _archive.UnsafeArchive("its sha256 does not match the manifest")
    except FileNotFoundError:
        shutil.rmtree(temp, ignore_errors=True)
        raise EnvError(
            f"{store}/{info.archive}, named by the manifest, is missing; rebuild the environment "
            f"with cs.env.install(..., name={info.name!r})"
        ) from None
    except (_archive.UnsafeArchive, EnvError) as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise EnvError(
            f"{store}/{info.archive} is damaged or unsafe ({exc}); nothing was activated. "
            f"Rebuild it with cs.env.install(..., name={info.name!r})"
        ) from None
    except (OSError, TimeoutError, ColabSessionError) as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise EnvError(
            f"restoring {info.name!r} from {store} failed ({reason(exc)}); nothing was activated"
        ) from None
    return move_into_place(temp, info)


def _check_space(root: Path, info: EnvInfo) -> None:
    need = (info.unpacked or info.size * 4) + (64 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        raise EnvError(
            f"restoring {info.name!r} needs about {format_bytes(need)} on the local disk and "
            f"{format_bytes(free)} is free: free space (!df -h; delete old checkpoints or "
            "datasets under /content) and try again"
        )
