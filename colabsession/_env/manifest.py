"""The manifest of an environment: what its layer holds and for which interpreter, and the checks
a manifest read from the location (untrusted) passes before anything it names is read."""

from __future__ import annotations

import json
import platform
import re
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from colabsession._core.errors import ConfigError
from colabsession._core.records import InvalidRecord, Record, parse_record, read_json

FORMAT = "colabsession-env"
LEGACY_MANIFEST = "manifest.json"  # colabsession 0.1: one manifest, rewritten in place
MAX_MANIFEST = 16 << 20  # bytes of a manifest read back (a layer of thousands of packages: ~1 MB)
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


def parse_manifest(data: bytes, name: str, manifest: str) -> EnvInfo:
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


def is_name(name: str) -> bool:
    """Whether *name* may name an environment (and so a folder).

    >>> is_name("my_env"), is_name("../up"), is_name("a b")
    (True, False, False)
    """
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and name[0] != "."


def check_name(name: str) -> None:
    if not is_name(name):
        raise ConfigError(f"{name!r} is not an environment name: use letters, digits, - _ and .")


def manifest_name(sequence: int, tag: str) -> str:
    """The file name of the manifest numbered *sequence*; *tag* (8 hex digits) tells apart two
    saved at the same moment.

    >>> manifest_name(7, "0a1b2c3d")
    'manifest.000007.0a1b2c3d.json'
    """
    return f"manifest.{sequence:06d}.{tag}.json"


def sequences(names: Iterable[str]) -> dict[str, int]:
    """The numbered manifests among *names*, with their numbers.

    >>> sequences(["manifest.000002.0a1b2c3d.json", "manifest.json", "layer-x.tar.zst"])
    {'manifest.000002.0a1b2c3d.json': 2}
    """
    return {n: int(m.group(1)) for n in names if (m := _MANIFEST.fullmatch(n))}


def newest(names: Iterable[str]) -> int:
    """The number of the newest manifest among *names* (0: none): what a new one continues."""
    return max(sequences(names).values(), default=0)


def is_archive(name: str) -> bool:
    """Whether *name* is a layer archive's file name."""
    return _ARCHIVE.fullmatch(name) is not None


def mismatch(info: EnvInfo) -> str | None:
    """What differs between the interpreter *info*'s layer was built for and this one, if any."""
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
