"""Building a layer: resolving the requirements against the base environment with pip, then
installing only what the base lacks into a folder of its own with pip or uv, and compiling it.
Every pip, uv and compileall runs through the one bounded runner, and is stopped at its timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from colabsession._core.errors import ConfigError, EnvError
from colabsession._core.say import say
from colabsession._core.timeout import run_command
from colabsession._core.units import format_duration
from colabsession._env.local import local_root

PIP_TIMEOUT = 3600.0  # seconds one pip or uv step (a resolution, an install) may take
COMPILE_TIMEOUT = 1800.0  # seconds compiling a layer may take
UV_CONSTRAINTS = ("UV_CONSTRAINT", "UV_BUILD_CONSTRAINT")


def check_requirement(requirement: str) -> None:
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


def merge_requirements(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    """The old requirements with the new ones added; a new one for a package replaces the old.

    >>> merge_requirements(["rich==13.9", "tqdm"], ["Rich>=14"])
    ('Rich>=14', 'tqdm')
    """
    merged = {_key(r): r for r in old}
    merged.update({_key(r): r for r in new})
    return tuple(merged.values())


def choose_installer(installer: str) -> str:
    if installer not in ("auto", "pip", "uv"):
        raise ConfigError(f"installer must be 'auto', 'pip' or 'uv', not {installer!r}")
    if installer == "auto":
        return "uv" if find_uv() else "pip"
    if installer == "uv" and not find_uv():
        raise EnvError("uv is not installed: pip install uv, or use installer='pip'")
    return installer


def find_uv() -> str | None:
    """uv's executable: on PATH (Colab preinstalls it), or from the uv package."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def build_layer(
    requirements: Sequence[str],
    layer: Path,
    pip_args: Sequence[str],
    tool: str,
    *,
    resolve_deps: bool = True,
) -> tuple[tuple[str, str], ...]:
    """Resolve against the base environment, then install only what it lacks into *layer* and
    compile it; returns the (name, version) of each package the layer holds."""
    env = base_env()
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
        targets = list(requirements)
    layer.mkdir(parents=True)
    if not targets:
        return pins
    if tool == "uv":
        command = [
            find_uv() or "uv",
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
        _run(command, _without_uv_constraints(env), "install the packages", program="uv")
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
    compile_layer(layer)
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


def base_env() -> dict[str, str]:
    """This process's environment without our layers, so that pip sees the base alone."""
    env = dict(os.environ)
    root = str(local_root())
    for var in ("PYTHONPATH", "PATH"):
        parts = [p for p in env.get(var, "").split(os.pathsep) if p and not p.startswith(root)]
        env[var] = os.pathsep.join(parts)
    if not env["PYTHONPATH"]:
        env.pop("PYTHONPATH")
    return env


def _run(command: Sequence[str], env: dict[str, str], what: str, *, program: str = "pip") -> str:
    """The output of *command*; EnvError when it fails, or when it runs past PIP_TIMEOUT (a
    package index that stopped answering, a build that hangs): it is then killed."""
    try:
        result = run_command(command, PIP_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        raise EnvError(
            f"{program} did not {what} within {format_duration(PIP_TIMEOUT, precise=True)} and "
            "was stopped; nothing was changed. Check that the package index answers (or give "
            "another with pip_args=['--index-url', ...]) and try again"
        ) from None
    except OSError as exc:
        raise EnvError(f"{program} could not be started ({exc}); nothing was changed") from None
    if result.returncode != 0:
        lines = [
            line
            for line in (result.stderr or result.stdout).strip().splitlines()
            if line.strip() and "Location 'file" not in line
        ]
        detail = "\n  ".join(lines[-8:]) or f"exit status {result.returncode}"
        raise EnvError(f"{program} could not {what}; nothing was changed:\n  {detail}")
    return result.stdout


def compile_layer(layer: Path) -> None:
    """Ship compiled files for this interpreter, checked by nothing but their presence: a layer
    is never edited, and its files' times change when it is unpacked. In a process of its own:
    compileall's workers fork, and forking a process that runs threads can deadlock. A file
    that does not compile is left as it is (the import would say why)."""
    command = [sys.executable, "-m", "compileall", "-q", "-q", "-f", "-j", "0"]
    command += ["--invalidation-mode", "unchecked-hash", str(layer)]
    try:
        run_command(command, COMPILE_TIMEOUT, env=base_env())
    except subprocess.TimeoutExpired:
        raise EnvError(
            f"compiling the packages did not finish within "
            f"{format_duration(COMPILE_TIMEOUT)} and was stopped; nothing was changed. Try again"
        ) from None
