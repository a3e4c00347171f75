"""Where a run lives: one rule turns a run name or a location into its location, its local
mirror and its stores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from colabsession._core.errors import ConfigError, RunNotFoundError
from colabsession._drive.location import Location, resolve
from colabsession._runtime.runtime import home_dir, mount_type
from colabsession._storage.store import Store

RUNS = "drive:checkpoints"


def run_location(run: str | os.PathLike[str] | Location) -> Location:
    """Where a run lives, by one rule everywhere a run is taken (the ``run`` argument of
    ``cs.Checkpointer``, ``cs.fit``, ``SessionCheckpoint``, ``cs.hf.train``, ``cs.history``,
    ``cs.plot_history``, and ``colabsession ckpt ... RUN``):

    - ``drive:...``, a URL with a scheme (``gs://...``, ``gdrive://...``), a path that starts
      with ``/``, ``./``, ``../`` or ``~``, and a ``pathlib.Path`` are locations;
    - anything else is a run name, stored at ``drive:checkpoints/<name>`` (``"exp/v2"`` too).
    """
    if isinstance(run, Location):
        return run
    if not isinstance(run, str):
        return resolve(run)
    text = run
    if text.startswith(("drive:", "/", "./", "../", "~")) or "://" in text or text in (".", ".."):
        return resolve(text)
    parts = PurePosixPath(text).parts
    if not text.strip() or "\\" in text or any(p in (".", "..") for p in parts):
        raise ConfigError(
            f"{text!r} is not a run name: use letters, digits, '-', '_' and '/' (a run name "
            "is stored at drive:checkpoints/<name>), or give a location such as ./runs/x"
        )
    return resolve(f"{RUNS}/{text}")


def run_stores(
    location: str | os.PathLike[str] | Location,
    local_dir: str | os.PathLike[str] | None,
    *,
    timeout: float,
) -> tuple[Store, Store | None]:
    """The run's local store (its folder, or its mirror under the home) and its location's
    store (None when the location is a plain local folder, written directly), whose every
    operation is bounded by *timeout* seconds."""
    loc = run_location(location)
    if is_direct(loc) and local_dir is None:
        return Store(loc, timeout=None, durable=True), None
    mirror = Path(local_dir) if local_dir is not None else default_local_dir(loc)
    return Store.local_disk(mirror), Store(loc, timeout=timeout, durable=False)


def require_run(
    location: str | os.PathLike[str] | Location,
    local_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 30.0,
) -> Location:
    """The run's location if anything of the run is there or in its local mirror; else
    RunNotFoundError naming the runs that exist. Creates nothing. A location that does not
    answer counts as existing: its readers fall back to the local copy and say so."""
    loc = run_location(location)
    local, remote = run_stores(loc, local_dir, timeout=timeout)
    for store in (local, remote):
        try:
            if store is not None and store.names():
                return loc
        except (OSError, TimeoutError):
            return loc
    known = known_runs(timeout=timeout)
    hint = f"runs in {RUNS}: {', '.join(known)}" if known else f"no runs in {RUNS} yet"
    raise RunNotFoundError(
        f"no run at {loc}: nothing was saved there (a typo?); {hint}",
        path=str(loc),
        run=str(location),
        runs=tuple(known),
    )


def known_runs(*, timeout: float = 30.0) -> list[str]:
    """The run names kept in ``drive:checkpoints`` (top level), sorted; empty when that folder
    does not exist or does not answer."""
    store = Store(resolve(RUNS), timeout=timeout, durable=False)

    def folders() -> list[str]:
        try:
            found = store.fs.ls(store.root, detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            str(f["name"]).rstrip("/").rsplit("/", 1)[-1]
            for f in found
            if f.get("type") == "directory"
        )

    try:
        return store.io("list", folders)
    except (OSError, TimeoutError):
        return []


def default_local_dir(location: Location) -> Path:
    """The run's local mirror under colabsession's home: readable name, unique suffix."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in location.description)[-60:]
    digest = hashlib.sha256(f"{location.fs.protocol}:{location.path}".encode()).hexdigest()[:8]
    return home_dir() / "checkpoints" / f"{slug.strip('-')}-{digest}"


def is_direct(location: Location) -> bool:
    """A local folder that is not a network mount needs no local mirror."""
    return location.is_local and not (mount_type(location.path) or "").startswith("fuse")
