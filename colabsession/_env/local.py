"""The layers' home on this machine's disk: each layer in a folder named by its archive's
sha256, moved there whole by a rename so that a layer folder is complete or absent."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from colabsession._env.manifest import EnvInfo
from colabsession._runtime.runtime import home_dir


def local_root() -> Path:
    """The folder that holds every environment's local layers."""
    return home_dir() / "envs"


def local_path(info: EnvInfo) -> Path:
    """Where the environment *info* lives on this machine's disk once restored."""
    return local_root() / info.name / f"layer-{info.sha256[:16]}"


@contextlib.contextmanager
def workspace(name: str) -> Iterator[Path]:
    """A temporary folder on the same file system as the local layers: moving a layer from it
    into place is a rename, never a copy that a kill could cut short."""
    root = local_root() / name
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        yield Path(tmp)


def move_into_place(folder: Path, info: EnvInfo) -> Path:
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
