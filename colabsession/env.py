"""Persistent environments: pip installs that survive a runtime restart, restored in seconds.

>>> cs.env.install("transformers==4.46.0", "evaluate")  # once: build, persist  # doctest: +SKIP
>>> cs.env.restore()  # the first cell after each restart  # doctest: +SKIP

An environment is a *layer* over the running interpreter: only what the base environment lacks
(or what you asked for at another version) goes into it, so Colab's own TensorFlow, NumPy and the
rest stay as they are. The layer is built on local disk and persisted to Drive as one archive and
one manifest; a restore reads those two files, verifies the archive's sha256, extracts it to local
disk (code never runs from the Drive folder) and puts it ahead of the base on ``sys.path``, on
``PYTHONPATH`` for ``!python`` and its console scripts on ``PATH``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, overload

from colabsession._core.errors import ColabSessionError, ConfigError, EnvError
from colabsession._core.files import reason, sha256_file
from colabsession._core.records import InvalidRecord, Record, parse_record, read_json
from colabsession._core.say import say
from colabsession._core.units import format_bytes, format_duration
from colabsession._data import archive as _archive
from colabsession._drive.location import Location, resolve
from colabsession._runtime.runtime import home_dir
from colabsession._storage.store import Store

__all__ = ["EnvInfo", "install", "list", "local_path", "remove", "restore"]

logger = logging.getLogger("colabsession.env")
_list = list  # this module defines list()

DEFAULT_LOCATION = "drive:Colab Notebooks/colabsession/envs"
DEFAULT_NAME = "my_env"
LEGACY_MANIFEST = "manifest.json"  # colabsession 0.1: one manifest, rewritten in place
FORMAT = "colabsession-env"
TIMEOUT = 120.0  # seconds any one Drive operation may take (more for the archive, by its size)
MAX_RATIO = 64  # unpacked bytes per archive byte at most, when the manifest does not say
MAX_MANIFEST = 16 << 20  # bytes of a manifest read back (a layer of thousands of packages: ~1 MB)
UV_CONSTRAINTS = ("UV_CONSTRAINT", "UV_BUILD_CONSTRAINT")
_MANIFEST = re.compile(r"manifest\.(\d{6,})\.([0-9a-f]{8})\.json")
_ARCHIVE = re.compile(r"layer-[0-9a-f]{16,64}\.tar\.(gz|zst)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EnvInfo(Record):
    """What an environment's manifest says of it (validated when read from Drive)."""

    KIND: ClassVar[str] = FORMAT
    VERSION: ClassVar[int] = 2
    name: str
    python: str
    implementation: str
    platform: str
    requirements: tuple[str, ...]
    packages: tuple[tuple[str, str], ...]  # (name, version), what the layer holds
    archive: str
    size: int
    sha256: str
    created: str
    installer: str
    colab_release: str | None = None
    files: int = 0  # archive members, for the extraction's progress bar
    unpacked: int = 0  # bytes of file data once unpacked; 0 for layers of colabsession 0.1
    sequence: int = 0  # the manifest's number: the newest complete one counts

    def to_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.to_json()))


def _parse(data: bytes, name: str, manifest: str) -> EnvInfo:
    """Decode a manifest read from Drive (untrusted) and check what it may point at."""
    raw = read_json(data, what=manifest, max_bytes=MAX_MANIFEST)
    if isinstance(raw, dict) and raw.get("format") == FORMAT and "kind" not in raw:
        try:  # colabsession 0.1's layout: packages as objects
            raw = {
                **{k: v for k, v in raw.items() if k != "format"},
                "kind": FORMAT,
                "version": 1,
                "packages": [[p["name"], p["version"]] for p in raw["packages"]],
            }
        except (KeyError, TypeError) as exc:
            raise InvalidRecord(f"{manifest} lacks {exc}") from None
    info = parse_record(EnvInfo, raw, what=manifest)
    problems = []
    if info.name != name:
        problems.append(f"it names the environment {info.name!r}, not {name!r}")
    if not _ARCHIVE.fullmatch(info.archive):
        problems.append(f"its archive {info.archive!r} is not a layer archive's name")
    if not _SHA256.fullmatch(info.sha256) or not info.archive[6:].startswith(info.sha256[:16]):
        problems.append("its sha256 does not match its archive's name")
    if info.size <= 0 or info.files < 0 or info.unpacked < 0:
        problems.append("its sizes are not possible")
    if any(len(p) != 2 for p in info.packages):
        problems.append("its package list is malformed")
    if problems:
        raise InvalidRecord(f"{manifest}: {'; '.join(problems)}")
    return info


# Public API ------------------------------------------------------------------------------------


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
    _check_name(name)
    if not requirements:
        raise ConfigError("cs.env.install() needs at least one requirement, e.g. 'rich==13.9'")
    for requirement in requirements:
        _check_requirement(requirement)
    store = _env_store(location, name)
    names = _listing(store, name)
    base = _newest(names)  # as it was before reading it: a save after this is noticed
    try:
        previous = _current(store, name, missing_ok=True, names=names)
    except EnvError as exc:
        logger.warning("colabsession: %s; building it anew from the requirements given", exc)
        previous = None
    wanted = _merge_requirements(previous.requirements if previous else (), requirements)
    tool = _choose_installer(installer)
    with _workspace(name) as tmp:
        layer = tmp / "layer"
        pins = _build_layer(wanted, layer, pip_args, tool)
        if not pins:
            say(
                f"the base environment already has {', '.join(requirements)}: "
                f"nothing to add, and nothing was saved to {store}"
            )
            return previous
        info = _persist(store, name, layer, wanted, pins, tool, tmp, base)
        local = _move_into_place(layer, info)
    _activate(local, info)
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
    _check_name(name)
    started = time.monotonic()
    store = _env_store(location, name)
    names = _listing(store, name)
    info = _current(store, name, missing_ok=default, names=names)
    if info is None:
        say(
            f"no environment {name!r} saved yet: nothing to restore. Save your "
            "installs once with cs.env.install('package', ...)"
        )
        return None
    mismatch = _mismatch(info)
    if mismatch:
        if strict:
            raise EnvError(
                f"environment {name!r} was built for {mismatch}; strict=True refuses "
                "to rebuild it: call cs.env.restore(strict=False) or cs.env.install()"
            )
        say(f"environment {name!r} was built for {mismatch}: rebuilding it from its exact versions")
        pins = tuple(f"{n}=={v}" for n, v in info.packages)
        tool = _choose_installer("auto")
        with _workspace(name) as tmp:
            layer = tmp / "layer"
            built = _build_layer(pins, layer, pip_args, tool, resolve_deps=False)
            info = _persist(store, name, layer, info.requirements, built, tool, tmp, _newest(names))
            local = _move_into_place(layer, info)
    else:
        local = local_path(info)
        if not local.is_dir():
            local = _fetch(store, info)
    _activate(local, info)
    say(
        f"restored environment {name!r} ({len(info.packages)} package(s), "
        f"{format_bytes(info.unpacked or info.size)}) in "
        f"{format_duration(time.monotonic() - started, precise=True)}"
    )
    return info


def list(location: str | os.PathLike[str] | Location | None = None) -> _list[EnvInfo]:
    """Every environment kept at *location*, by name; a damaged one is skipped with a warning."""
    root = _env_root(location)
    try:
        names = sorted(Store(root, timeout=TIMEOUT, durable=False).names())
    except (OSError, TimeoutError) as exc:
        raise EnvError(f"cannot list the environments in {root} ({reason(exc)})") from None
    found = []
    for entry in names:
        if not _is_name(entry):
            continue
        try:
            info = _current(_store_in(root, entry), entry, missing_ok=True)
        except EnvError as exc:
            logger.warning("colabsession: skipping %s: %s", entry, exc)
            continue
        if info is not None:
            found.append(info)
    return found


def remove(name: str, location: str | os.PathLike[str] | Location | None = None) -> None:
    """Delete the environment *name* from *location* and from local disk. Packages already
    imported in this kernel stay imported until it restarts."""
    _check_name(name)
    store = _env_store(location, name)
    try:
        if not store.names():
            raise EnvError(f"there is no environment {name!r} in {store}")
        store.io("delete", lambda: store.fs.rm(store.root, recursive=True))
    except (OSError, TimeoutError) as exc:
        raise EnvError(
            f"cannot delete the environment {name!r} in {store} ({reason(exc)})"
        ) from None
    shutil.rmtree(_local_root() / name, ignore_errors=True)


def local_path(info: EnvInfo) -> Path:
    """Where the environment *info* lives on this machine's disk once restored."""
    return _local_root() / info.name / f"layer-{info.sha256[:16]}"


# Building -----------------------------------------------------------------------------------


def _is_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and name[0] != "."


def _check_name(name: str) -> None:
    if not _is_name(name):
        raise ConfigError(f"{name!r} is not an environment name: use letters, digits, - _ and .")


def _check_requirement(requirement: str) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    if os.path.exists(requirement):
        return  # a local wheel or project folder
    try:
        Requirement(requirement)
    except InvalidRequirement as exc:
        raise EnvError(f"cannot read the requirement {requirement!r}: {exc}") from None


def _key(requirement: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        return str(canonicalize_name(Requirement(requirement).name))
    except Exception:
        return requirement


def _merge_requirements(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    """The old requirements with the new ones added; a new one for a package replaces the old."""
    merged = {_key(r): r for r in old}
    merged.update({_key(r): r for r in new})
    return tuple(merged.values())


def _choose_installer(installer: str) -> str:
    if installer not in ("auto", "pip", "uv"):
        raise ConfigError(f"installer must be 'auto', 'pip' or 'uv', not {installer!r}")
    if installer == "auto":
        return "uv" if _uv() else "pip"
    if installer == "uv" and not _uv():
        raise EnvError("uv is not installed: pip install uv, or use installer='pip'")
    return installer


def _uv() -> str | None:
    """uv's executable: on PATH (Colab preinstalls it), or from the uv package."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def _build_layer(
    requirements: Sequence[str],
    layer: Path,
    pip_args: Sequence[str],
    tool: str,
    *,
    resolve_deps: bool = True,
) -> tuple[tuple[str, str], ...]:
    """Resolve against the base environment, then install only what it lacks into *layer*."""
    env = _base_env()
    if resolve_deps:
        report = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--quiet",
                "--report",
                "-",
                "--disable-pip-version-check",
                *pip_args,
                *requirements,
            ],
            env,
            "resolve the requirements",
        )
        try:
            items = json.loads(report)["install"]
        except (ValueError, KeyError) as exc:
            raise EnvError(f"pip's resolution report cannot be read: {exc}") from None
        pins = tuple((i["metadata"]["name"], i["metadata"]["version"]) for i in items)
        _refuse_shadowing(pins, requirements, env)
        targets = [
            i["download_info"]["url"]
            if i.get("is_direct")
            else f"{i['metadata']['name']}=={i['metadata']['version']}"
            for i in items
        ]
    else:
        pins = tuple((r.split("==")[0], r.split("==")[1]) for r in requirements)
        targets = _list(requirements)
    layer.mkdir(parents=True)
    if not targets:
        return pins
    if tool == "uv":
        command = [
            _uv() or "uv",
            "pip",
            "install",
            "--python",
            sys.executable,
            "--target",
            str(layer),
            "--no-deps",
            *pip_args,
            *targets,
        ]
        env = _without_uv_constraints(env)
    else:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--target",
            str(layer),
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            *pip_args,
            *targets,
        ]
    _run(command, env, "install the packages")
    return pins


def _refuse_shadowing(
    pins: Sequence[tuple[str, str]], requirements: Sequence[str], env: dict[str, str]
) -> None:
    """A dependency that needs another version of a package the base has would shadow it (on
    Colab: numpy<2 under TensorFlow). Refuse unless that package is named."""
    from packaging.utils import canonicalize_name

    named = {_key(r) for r in requirements}
    base = _base_versions(env)
    clashes = [
        (n, v, base[str(canonicalize_name(n))])
        for n, v in pins
        if str(canonicalize_name(n)) in base
        and base[str(canonicalize_name(n))] != v
        and str(canonicalize_name(n)) not in named
    ]
    if clashes:
        name, version, there = clashes[0]
        raise EnvError(
            f"{', '.join(requirements)} needs {name} {version}, but the base environment has "
            f"{name} {there}, which the environment would then shadow (and packages of the "
            f"base built for {there} may break). Nothing was changed. To use {name} {version} "
            f"in this environment anyway, name it: cs.env.install(..., '{name}=={version}'); "
            f"or choose versions that work with {name} {there}"
        )


def _base_versions(env: dict[str, str]) -> dict[str, str]:
    """Every distribution of the base environment: canonical name -> version."""
    script = (
        "import importlib.metadata as m, json, re\n"
        "print(json.dumps({re.sub(r'[-_.]+', '-', (d.metadata['Name'] or '')).lower(): "
        "d.version for d in m.distributions()}))"
    )
    return dict(json.loads(_run([sys.executable, "-c", script], env, "list the base packages")))


def _without_uv_constraints(env: dict[str, str]) -> dict[str, str]:
    """Colab points uv at its own constraint files. The layer's versions are resolved already
    and installed exactly (``--no-deps``), and base packages are guarded by
    _refuse_shadowing, so the constraints are deliberately not applied to that install."""
    set_here = [var for var in UV_CONSTRAINTS if env.get(var)]
    if set_here:
        say(
            f"not applying {' and '.join('$' + v for v in set_here)} (Colab's "
            "constraints for uv) to the layer: its versions are resolved against the base "
            "already, and none of the base's packages is replaced unless you name it"
        )
    return {k: v for k, v in env.items() if k not in UV_CONSTRAINTS}


def _base_env() -> dict[str, str]:
    """This process's environment without our layers, so that pip sees the base alone."""
    env = dict(os.environ)
    root = str(_local_root())
    for var in ("PYTHONPATH", "PATH"):
        parts = [p for p in env.get(var, "").split(os.pathsep) if p and not p.startswith(root)]
        env[var] = os.pathsep.join(parts)
    if not env["PYTHONPATH"]:
        env.pop("PYTHONPATH")
    return env


def _run(command: Sequence[str], env: dict[str, str], what: str) -> str:
    result = subprocess.run(_list(command), capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [
            line
            for line in (result.stderr or result.stdout).strip().splitlines()
            if line.strip() and "Location 'file" not in line
        ]
        detail = "\n  ".join(lines[-8:]) or f"exit status {result.returncode}"
        raise EnvError(f"pip could not {what}; nothing was changed:\n  {detail}")
    return result.stdout


def _compile(layer: Path) -> None:
    """Ship compiled files for this interpreter, checked by nothing but their presence: a layer
    is never edited, and its files' times change when it is unpacked. In a process of its own:
    compileall's workers fork, and forking a process that runs threads can deadlock."""
    command = [sys.executable, "-m", "compileall", "-q", "-q", "-f", "-j", "0"]
    command += ["--invalidation-mode", "unchecked-hash", str(layer)]
    subprocess.run(command, capture_output=True, env=_base_env(), timeout=1800, check=False)


# Persisting and fetching ------------------------------------------------------------------------


def _env_root(location: str | os.PathLike[str] | Location | None) -> Location:
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


def _env_store(location: str | os.PathLike[str] | Location | None, name: str) -> Store:
    return _store_in(_env_root(location), name)


def _store_in(root: Location, name: str) -> Store:
    return Store(root.join(name), timeout=TIMEOUT, durable=False)


def _current(
    store: Store, name: str, *, missing_ok: bool = False, names: set[str] | None = None
) -> EnvInfo | None:
    """The newest complete manifest of the environment in *store* (whose archive is there); an
    older one serves when a newer one is damaged. *names*: the folder's listing, if known."""
    names = _listing(store, name) if names is None else names
    numbered = sorted(
        ((int(m.group(1)), n) for n in names if (m := _MANIFEST.fullmatch(n))), reverse=True
    )
    manifests = [n for _, n in numbered] + ([LEGACY_MANIFEST] if LEGACY_MANIFEST in names else [])
    problems = []
    for manifest in manifests:
        try:
            info = _parse(store.read(manifest, limit=MAX_MANIFEST), name, manifest)
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


def _sequences(names: Iterable[str]) -> dict[str, int]:
    """The numbered manifests among *names*, with their numbers."""
    return {n: int(m.group(1)) for n in names if (m := _MANIFEST.fullmatch(n))}


def _listing(store: Store, name: str) -> set[str]:
    """The names of the environment's files in *store*."""
    try:
        return set(store.names())
    except (OSError, TimeoutError) as exc:
        raise EnvError(f"cannot read the environment {name!r} in {store} ({reason(exc)})") from None


def _newest(names: set[str]) -> int:
    """The number of the newest manifest among *names* (0: none): what a new one continues."""
    return max(_sequences(names).values(), default=0)


def _raced(name: str, what: str) -> EnvError:
    return EnvError(
        f"another install into environment {name!r} {what}, so this one saved nothing (two "
        "at once would leave only one of them). Run cs.env.install() again: it adds to the "
        "environment as the other one saved it"
    )


def _persist(
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
    _compile(layer)
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
    if _newest(names) != base:
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
    manifest = f"manifest.{sequence:06d}.{secrets.token_hex(4)}.json"
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
        rivals = [n for n, k in _sequences(store.names()).items() if k == sequence]
    except (OSError, TimeoutError) as exc:  # saved; the check before the commit has to do
        logger.warning("colabsession: could not look for a concurrent install: %s", exc)
        rivals = []
    if any(n != manifest for n in rivals):  # saved with another: neither may claim it
        with contextlib.suppress(OSError, TimeoutError):
            store.remove(manifest)
        raise _raced(name, "saved at the same moment")
    for old in names:  # the new manifest is whole: what it replaces can go
        stale = _MANIFEST.fullmatch(old) or old == LEGACY_MANIFEST
        if stale or (_ARCHIVE.fullmatch(old) and old != info.archive):
            try:
                store.remove(old)
            except (OSError, TimeoutError) as exc:
                logger.warning("colabsession: could not remove the old %s: %s", old, exc)
    return info


def _copy_up(source: Path, store: Store, name: str, desc: str) -> None:
    from tqdm.auto import tqdm

    with tqdm(
        total=source.stat().st_size, unit="B", unit_scale=True, desc=desc, leave=False
    ) as bar:
        store.put_file(source, name, progress=bar.update)


def _fetch(store: Store, info: EnvInfo) -> Path:
    """Read the archive from *store*, hashing and unpacking it in one pass, into a new folder
    that is moved into place only once the archive is verified; returns the local layer."""
    from tqdm.auto import tqdm

    root = _local_root() / info.name
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
                tqdm(
                    total=info.files or None,
                    unit="files",
                    desc=f"restoring {info.name}",
                    leave=False,
                ) as bar,
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
    return _move_into_place(temp, info)


def _check_space(root: Path, info: EnvInfo) -> None:
    need = (info.unpacked or info.size * 4) + (64 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        raise EnvError(
            f"restoring {info.name!r} needs about {format_bytes(need)} on the local disk and "
            f"{format_bytes(free)} is free: free space (!df -h; delete old checkpoints or "
            "datasets under /content) and try again"
        )


@contextlib.contextmanager
def _workspace(name: str) -> Iterator[Path]:
    """A temporary folder on the same file system as the local layers: moving a layer from it
    into place is a rename, never a copy that a kill could cut short."""
    root = _local_root() / name
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        yield Path(tmp)


def _move_into_place(folder: Path, info: EnvInfo) -> Path:
    """Move a freshly built or unpacked layer to its local home: a rename, so a layer folder is
    complete or absent."""
    target = local_path(info)
    if target.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(folder, target)
    except OSError:
        if not target.is_dir():  # not a concurrent restore that got there first
            raise
        shutil.rmtree(folder, ignore_errors=True)
    return target


def _local_root() -> Path:
    return home_dir() / "envs"


def _mismatch(info: EnvInfo) -> str | None:
    here_python = ".".join(platform.python_version_tuple()[:2])
    there_python = ".".join(info.python.split(".")[:2])
    if (info.implementation, there_python, info.platform) != (
        sys.implementation.name,
        here_python,
        sysconfig.get_platform(),
    ):
        return (
            f"{info.implementation} {info.python} on {info.platform}, not "
            f"{sys.implementation.name} {platform.python_version()} on {sysconfig.get_platform()}"
        )
    return None


# Activating ------------------------------------------------------------------------------------


def _activate(layer: Path, info: EnvInfo) -> None:
    """Put *layer* ahead of the base on sys.path (through site.addsitedir, so .pth files work),
    on PYTHONPATH for subprocesses, and its scripts on PATH."""
    entry = str(layer)
    if entry not in sys.path:
        before = _list(sys.path)
        site.addsitedir(entry)
        added = [p for p in sys.path if p not in before]
        rest = [p for p in sys.path if p not in added]
        head = 1 if rest and rest[0] in ("", os.getcwd()) else 0  # keep the notebook's folder first
        sys.path[:] = rest[:head] + added + rest[head:]
    _prepend_env("PYTHONPATH", entry)
    scripts = layer / "bin"
    if scripts.is_dir():
        _prepend_env("PATH", str(scripts))
        for script in scripts.iterdir():  # archives on Drive can lose execute bits
            script.chmod(script.stat().st_mode | 0o111)
    importlib.invalidate_caches()
    _warn_imported_elsewhere(layer, info)


def _prepend_env(var: str, entry: str) -> None:
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p and p != entry]
    os.environ[var] = os.pathsep.join([entry, *parts])


def _warn_imported_elsewhere(layer: Path, info: EnvInfo) -> None:
    """Like Colab's own warning: a package already imported from the base keeps its old version
    until the runtime restarts."""
    stale = []
    for dist in layer.glob("*.dist-info"):
        top_level = dist / "top_level.txt"
        modules = (
            top_level.read_text().split()
            if top_level.exists()
            else [dist.name.split("-")[0].lower()]
        )
        for module in modules:
            loaded = sys.modules.get(module)
            where = getattr(loaded, "__file__", None) or ""
            if loaded is not None and where and not where.startswith(str(layer)):
                stale.append(module)
    if stale:
        logger.warning(
            "colabsession: %s %s already imported from the base environment; restart the "
            "runtime (Runtime > Restart session) and run cs.env.restore(%r) before importing "
            "them to use the environment's versions",
            ", ".join(sorted(set(stale))),
            "is" if len(set(stale)) == 1 else "are",
            info.name,
        )
