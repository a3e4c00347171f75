"""The code behind :mod:`colabsession.env` (its public names are listed there)."""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import overload

from colabsession._core.errors import ConfigError, EnvError
from colabsession._core.say import say
from colabsession._core.units import format_bytes, format_duration
from colabsession._drive.location import Location
from colabsession._env import build as _build
from colabsession._env import persist as _persist
from colabsession._env.activate import activate
from colabsession._env.local import local_path, local_root, move_into_place, workspace
from colabsession._env.manifest import EnvInfo, check_name, is_name, mismatch, newest

logger = logging.getLogger(__name__)

DEFAULT_NAME = "my_env"


def install(
    *requirements: str,
    name: str = DEFAULT_NAME,
    location: str | os.PathLike[str] | Location | None = None,
    pip_args: Sequence[str] = (),
    installer: str = "auto",
) -> EnvInfo | None:
    """Install *requirements* into the environment *name*, persist it, and activate it here.

    Installing into an existing environment extends it; installing over a damaged one rebuilds
    it (the damaged files stay until the new one is saved). On any failure (a requirement that
    does not parse, a package that does not exist, a failed build, a dependency that would
    replace one of the base's packages) nothing changes: neither the persisted environment nor
    this kernel. Returns None, saving nothing, when the base already has everything asked for.

    Args:
        requirements: pip requirement strings (``"pkg"``, ``"pkg==1.2"``, ``"pkg[extra]>=2"``).
            Naming a package the base has (``"numpy==1.26.4"``) is the way to replace its
            version in this environment; a dependency that needs another version of a base
            package is refused otherwise.
        name: the environment's name.
        location: where environments are kept; default ``drive:Colab Notebooks/colabsession/envs``.
        pip_args: extra arguments for pip (``--index-url``, ``--find-links``, ``--no-index``).
        installer: ``"pip"``, ``"uv"`` (``uv pip``) or ``"auto"`` (uv when it is on PATH).
    """
    check_name(name)
    if not requirements:
        raise ConfigError("cs.env.install() needs at least one requirement, e.g. 'rich==13.9'")
    for requirement in requirements:
        _build.check_requirement(requirement)
    store = _persist.env_store(location, name)
    names = _persist.listing(store, name)
    base = newest(names)  # as it was before reading it: a save after this is noticed
    try:
        previous = _persist.current(store, name, missing_ok=True, names=names)
    except EnvError as exc:
        logger.warning("colabsession: %s; building it anew from the requirements given", exc)
        previous = None
    wanted = _build.merge_requirements(previous.requirements if previous else (), requirements)
    tool = _build.choose_installer(installer)
    with workspace(name) as tmp:
        layer = tmp / "layer"
        pins = _build.build_layer(wanted, layer, pip_args, tool)
        if not pins:
            say(
                f"the base environment already has {', '.join(requirements)}: "
                f"nothing to add, and nothing was saved to {store}"
            )
            return previous
        info = _persist.persist(store, name, layer, wanted, pins, tool, tmp, base)
        local = move_into_place(layer, info)
    activate(local, info)
    say(
        f"environment {name!r} holds {len(pins)} package(s) and is saved to "
        f"{store}; after a restart, run cs.env.restore({name!r})"
    )
    return info


@overload
def restore(
    name: str,
    *,
    location: str | os.PathLike[str] | Location | None = None,
    strict: bool = False,
    pip_args: Sequence[str] = (),
) -> EnvInfo: ...


@overload
def restore(
    name: None = None,
    *,
    location: str | os.PathLike[str] | Location | None = None,
    strict: bool = False,
    pip_args: Sequence[str] = (),
) -> EnvInfo | None: ...


def restore(
    name: str | None = None,
    *,
    location: str | os.PathLike[str] | Location | None = None,
    strict: bool = False,
    pip_args: Sequence[str] = (),
) -> EnvInfo | None:
    """Bring the environment *name* (default ``"my_env"``) back after a restart and activate it.

    Safe as the first cell of every session: with no name given and nothing saved yet it says
    so in one line and returns None (a name given that does not exist is an error). When the
    runtime's Python version or platform differs from the one the environment was built for
    (Colab upgrades Python now and then), the layer is rebuilt from the manifest's exact
    versions and persisted again; with *strict* that is an error instead.
    """
    default = name is None
    name = DEFAULT_NAME if name is None else name
    check_name(name)
    started = time.monotonic()
    store = _persist.env_store(location, name)
    names = _persist.listing(store, name)
    info = _persist.current(store, name, missing_ok=default, names=names)
    if info is None:
        say(
            f"no environment {name!r} saved yet: nothing to restore. Save your "
            "installs once with cs.env.install('package', ...)"
        )
        return None
    differs = mismatch(info)
    if differs:
        if strict:
            raise EnvError(
                f"environment {name!r} was built for {differs}; strict=True refuses "
                "to rebuild it: call cs.env.restore(strict=False) or cs.env.install()"
            )
        say(f"environment {name!r} was built for {differs}: rebuilding it from its exact versions")
        pins = tuple(f"{n}=={v}" for n, v in info.packages)
        tool = _build.choose_installer("auto")
        with workspace(name) as tmp:
            layer = tmp / "layer"
            built = _build.build_layer(pins, layer, pip_args, tool, resolve_deps=False)
            info = _persist.persist(
                store, name, layer, info.requirements, built, tool, tmp, newest(names)
            )
            local = move_into_place(layer, info)
    else:
        local = local_path(info)
        if not local.is_dir():
            local = _persist.fetch(store, info)
    activate(local, info)
    say(
        f"restored environment {name!r} ({len(info.packages)} package(s), "
        f"{format_bytes(info.unpacked or info.size)}) in "
        f"{format_duration(time.monotonic() - started, precise=True)}"
    )
    return info


def list(location: str | os.PathLike[str] | Location | None = None) -> builtins.list[EnvInfo]:
    """Every environment kept at *location*, by name; a damaged one is skipped with a warning."""
    root = _persist.env_root(location)
    found = []
    for entry in _persist.names_in(root):
        if not is_name(entry):
            continue
        try:
            info = _persist.current(_persist.store_in(root, entry), entry, missing_ok=True)
        except EnvError as exc:
            logger.warning("colabsession: skipping %s: %s", entry, exc)
            continue
        if info is not None:
            found.append(info)
    return found


def remove(name: str, location: str | os.PathLike[str] | Location | None = None) -> None:
    """Delete the environment *name* from *location* and from local disk. Packages already
    imported in this kernel stay imported until it restarts."""
    check_name(name)
    _persist.delete(_persist.env_store(location, name), name)
    shutil.rmtree(local_root() / name, ignore_errors=True)
