"""Persistent environments: pip installs that survive a runtime restart, restored in seconds.

>>> cs.env.install("transformers==4.46.0", "evaluate")   # once: build, persist to Drive, activate
>>> cs.env.restore()                                      # first cell after each restart

An environment is a *layer* over the running interpreter: only what the base environment lacks
(or what you asked for at another version) goes into it, so Colab's own TensorFlow, NumPy and the
rest stay as they are. The layer is built on local disk and persisted to Drive as one archive and
one manifest; a restore reads those two files, verifies the archive's sha256, extracts it to local
disk (code never runs from the Drive folder) and puts it ahead of the base on ``sys.path``, on
``PYTHONPATH`` for ``!python`` and its console scripts on ``PATH``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from ._errors import ConfigError, EnvError
from ._runtime import home_dir
from ._storage import sha256_file
from .drive import Location, resolve

__all__ = ["EnvInfo", "install", "list", "remove", "restore"]

logger = logging.getLogger("colabsession.env")
_list = list  # this module defines list()

DEFAULT_LOCATION = "drive:Colab Notebooks/colabsession/envs"
MANIFEST = "manifest.json"
FORMAT = "colabsession-env"
CHUNK = 8 << 20


@dataclass(frozen=True)
class EnvInfo:
    """What a manifest says of an environment."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["format"] = FORMAT
        data["packages"] = [{"name": n, "version": v} for n, v in self.packages]
        data["requirements"] = _list(self.requirements)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvInfo:
        return cls(
            name=str(data["name"]),
            python=str(data["python"]),
            implementation=str(data["implementation"]),
            platform=str(data["platform"]),
            requirements=tuple(data["requirements"]),
            packages=tuple((p["name"], p["version"]) for p in data["packages"]),
            archive=str(data["archive"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            created=str(data["created"]),
            installer=str(data.get("installer", "pip")),
            colab_release=data.get("colab_release"),
            files=int(data.get("files", 0)),
        )


# Public API ------------------------------------------------------------------------------------


def install(
    *requirements: str,
    name: str = "my_env",
    location: str | os.PathLike[str] | Location | None = None,
    pip_args: Sequence[str] = (),
    installer: str = "auto",
) -> EnvInfo:
    """Install *requirements* into the environment *name*, persist it, and activate it here.

    Installing into an existing environment extends it. On any failure (a requirement that does
    not parse, a package that does not exist, a failed build) nothing changes: neither the
    persisted environment nor this kernel.

    Args:
        requirements: pip requirement strings (``"pkg"``, ``"pkg==1.2"``, ``"pkg[extra]>=2"``).
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
    folder = _env_folder(location, name)
    previous = _read_manifest(folder, missing_ok=True)
    wanted = _merge_requirements(previous.requirements if previous else (), requirements)
    tool = _choose_installer(installer)
    with tempfile.TemporaryDirectory(prefix=f"cs-env-{name}-") as tmp:
        layer = Path(tmp) / "layer"
        pins = _build_layer(wanted, layer, pip_args, tool)
        info = _persist(folder, name, layer, wanted, pins, tool, Path(tmp), old=previous)
        local = _install_local(layer, info)
    _activate(local, info)
    print(
        f"colabsession: environment {name!r} holds {len(pins)} package(s) and is saved to "
        f"{folder}; after a restart, run cs.env.restore({name!r})",
        flush=True,
    )
    return info


def restore(
    name: str = "my_env",
    *,
    location: str | os.PathLike[str] | Location | None = None,
    strict: bool = False,
    pip_args: Sequence[str] = (),
) -> EnvInfo:
    """Bring the environment *name* back after a restart and activate it.

    When the runtime's Python version or platform differs from the one the environment was built
    for (Colab upgrades Python now and then), the layer is rebuilt from the manifest's exact
    versions and persisted again; with *strict* that is an error instead.
    """
    _check_name(name)
    folder = _env_folder(location, name)
    info = _read_manifest(folder)
    assert info is not None
    mismatch = _mismatch(info)
    if mismatch:
        if strict:
            raise EnvError(
                f"environment {name!r} was built for {mismatch}; strict=True refuses "
                "to rebuild it: call cs.env.restore(strict=False) or cs.env.install()"
            )
        print(
            f"colabsession: environment {name!r} was built for {mismatch}: rebuilding it "
            "from its exact versions",
            flush=True,
        )
        pins = tuple(f"{n}=={v}" for n, v in info.packages)
        tool = _choose_installer("auto")
        with tempfile.TemporaryDirectory(prefix=f"cs-env-{name}-") as tmp:
            layer = Path(tmp) / "layer"
            built = _build_layer(pins, layer, pip_args, tool, resolve_deps=False)
            info = _persist(
                folder, name, layer, info.requirements, built, tool, Path(tmp), old=info
            )
            local = _install_local(layer, info)
    else:
        local = _local_layer(info)
        if not local.is_dir():
            local = _fetch(folder, info)
    _activate(local, info)
    return info


def list(location: str | os.PathLike[str] | Location | None = None) -> _list[EnvInfo]:
    """Every environment kept at *location*, by name."""
    root = resolve(location or DEFAULT_LOCATION)
    try:
        names = sorted(PurePosixPath(str(p)).name for p in root.fs.ls(root.path, detail=False))
    except FileNotFoundError:
        return []
    found = []
    for entry in names:
        try:
            info = _read_manifest(root.join(entry), missing_ok=True)
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
    folder = _env_folder(location, name)
    if not folder.fs.exists(folder.path):
        raise EnvError(f"there is no environment {name!r} in {folder}")
    folder.fs.rm(folder.path, recursive=True)
    shutil.rmtree(_local_root() / name, ignore_errors=True)


# Building -----------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(f"{name!r} is not an environment name: use letters, digits, - _ and .")


def _check_requirement(requirement: str) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    if os.path.exists(requirement):
        return  # a local wheel or project folder
    try:
        Requirement(requirement)
    except InvalidRequirement as exc:
        raise EnvError(f"cannot read the requirement {requirement!r}: {exc}") from None


def _merge_requirements(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    """The old requirements with the new ones added; a new one for a package replaces the old."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def key(text: str) -> str:
        try:
            return canonicalize_name(Requirement(text).name)
        except Exception:
            return text

    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
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


# Persisting and fetching ------------------------------------------------------------------------


def _env_folder(location: str | os.PathLike[str] | Location | None, name: str) -> Location:
    return resolve(location or DEFAULT_LOCATION).join(name)


def _read_manifest(folder: Location, *, missing_ok: bool = False) -> EnvInfo | None:
    path = f"{folder.path}/{MANIFEST}"
    try:
        raw = folder.fs.cat_file(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise EnvError(
            f"there is no environment at {folder}: create it with "
            f"cs.env.install(..., name={PurePosixPath(folder.path).name!r})"
        ) from None
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError("not a colabsession environment manifest")
        return EnvInfo.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvError(
            f"the manifest {folder}/{MANIFEST} is damaged ({exc}); reinstall with cs.env.install()"
        ) from None


def _persist(
    folder: Location,
    name: str,
    layer: Path,
    requirements: Sequence[str],
    pins: Sequence[tuple[str, str]],
    tool: str,
    tmp: Path,
    *,
    old: EnvInfo | None,
) -> EnvInfo:
    """Archive *layer* and save it next to *old* (the manifest already read, or None); the old
    archive is removed once the new manifest points to the new one."""
    archive = tmp / "layer.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for child in sorted(layer.iterdir()):
            tar.add(child, arcname=child.name)
        members = len(tar.getmembers())
    digest = sha256_file(archive)
    info = EnvInfo(
        name=name,
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=sysconfig.get_platform(),
        requirements=tuple(requirements),
        packages=tuple(pins),
        archive=f"layer-{digest[:16]}.tar.gz",
        size=archive.stat().st_size,
        sha256=digest,
        created=datetime.now(timezone.utc).isoformat(),
        installer=tool,
        colab_release=os.environ.get("COLAB_RELEASE_TAG") or None,
        files=members,
    )
    folder.fs.makedirs(folder.path, exist_ok=True)
    remote = f"{folder.path}/{info.archive}"
    _copy_up(archive, folder.fs, remote, f"saving {name}")
    if folder.fs.info(remote)["size"] != info.size:
        raise EnvError(
            f"the archive written to {folder} is incomplete; the previous version of "
            f"{name!r} is unchanged"
        )
    folder.fs.pipe_file(f"{folder.path}/{MANIFEST}", json.dumps(info.to_dict(), indent=1).encode())
    if old is not None and old.archive != info.archive:  # only now: the new one is committed
        try:
            folder.fs.rm_file(f"{folder.path}/{old.archive}")
        except OSError as exc:
            logger.warning(
                "colabsession: could not remove the old archive %s: %s", old.archive, exc
            )
    return info


def _copy_up(source: Path, fs: Any, target: str, desc: str) -> None:
    from tqdm.auto import tqdm

    with (
        open(source, "rb") as src,
        fs.open(target, "wb") as dst,
        tqdm(total=source.stat().st_size, unit="B", unit_scale=True, desc=desc, leave=False) as bar,
    ):
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            bar.update(len(chunk))


def _fetch(folder: Location, info: EnvInfo) -> Path:
    """Download, verify and extract the archive; returns the local layer."""
    from tqdm.auto import tqdm

    remote = f"{folder.path}/{info.archive}"
    _local_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_local_root(), prefix=".fetch-") as tmp:
        archive = Path(tmp) / info.archive
        digest = hashlib.sha256()
        try:
            with (
                folder.fs.open(remote, "rb") as src,
                open(archive, "wb") as dst,
                tqdm(
                    total=info.size,
                    unit="B",
                    unit_scale=True,
                    desc=f"restoring {info.name}",
                    leave=False,
                ) as bar,
            ):
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    bar.update(len(chunk))
        except FileNotFoundError:
            raise EnvError(
                f"{folder}/{info.archive}, named by the manifest, is missing; "
                "reinstall with cs.env.install()"
            ) from None
        if digest.hexdigest() != info.sha256 or archive.stat().st_size != info.size:
            raise EnvError(
                f"{folder}/{info.archive} is damaged (its sha256 does not match the "
                "manifest); nothing was activated. Reinstall with cs.env.install()"
            )
        return _install_local_archive(archive, info, Path(tmp))


def _install_local(layer: Path, info: EnvInfo) -> Path:
    """Move a freshly built layer to its local home."""
    target = _local_layer(info)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(layer), str(target))
    return target


def _install_local_archive(archive: Path, info: EnvInfo, tmp: Path) -> Path:
    extracted = tmp / "layer"
    extracted.mkdir()
    safe_extract(archive, extracted, files=info.files, desc=f"extracting {info.name}")
    return _install_local(extracted, info)


def safe_extract(
    archive: Path, target: Path, *, files: int | None = None, desc: str | None = None
) -> None:
    """Extract *archive* into *target*, refusing absolute paths, ``..`` components, links that
    point outside *target*, and device files. With *desc*, a progress bar over its *files*."""
    from tqdm.auto import tqdm

    root = target.resolve()
    # One streaming pass: listing the members first would decompress the archive twice. A bad
    # member stops the extraction; the caller then discards the half-filled folder. Our own
    # checks replace tarfile's "data" filter, whose realpath() per member doubles the time.
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    try:
        with (
            tarfile.open(archive, "r|*") as tar,
            tqdm(
                total=files or None, unit="files", desc=desc, disable=desc is None, leave=False
            ) as bar,
        ):
            for member in tar:
                _check_member(member, root)
                member.mode &= 0o755  # no setuid/setgid/sticky bits, no group or other writes
                tar.extract(member, root, **trusted)  # type: ignore[arg-type]
                bar.update()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise EnvError(
            f"{archive.name} cannot be extracted ({exc}); nothing was activated"
        ) from None


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts:
        raise EnvError(f"refusing the archive: {name!r} would land outside the environment")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise EnvError(f"refusing the archive: {name!r} is a device or special file")
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        resolved = (root / base / link).resolve() if not link.is_absolute() else Path(link)
        if link.is_absolute() or not str(resolved).startswith(str(root)):
            raise EnvError(
                f"refusing the archive: the link {name!r} -> {member.linkname!r} "
                "points outside the environment"
            )


def _local_root() -> Path:
    return home_dir() / "envs"


def _local_layer(info: EnvInfo) -> Path:
    return _local_root() / info.name / f"layer-{info.sha256[:16]}"


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
