"""Runs the training scripts of the tests (mnist_main.py, hf_finetune.py) as a user would, each
run on a "runtime" of its own choosing: a colabsession home (the local mirror; a fresh one is a
new VM) and a folder that stands in for Drive, seen as its FUSE mount, killed where ``kill_at``
says (kill_harness.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
HARNESS = HERE / "kill_harness.py"


def fuse_mount_line(drive: Path) -> str:
    """A mount table line that shows *drive* as Drive's FUSE mount (a location with a local
    mirror, as on Colab)."""
    return f"drive {drive} fuse.drive rw,nosuid,nodev 0 0\n"


def run_script(
    script: str,
    args: list[str],
    *,
    cwd: Path,
    home: Path,
    drive: Path,
    kill_at: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run tests/*script* with *args* in *cwd*; ``KILLED ...`` in its stderr when killed."""
    env = dict(os.environ, COLABSESSION_HOME=str(home), COLABSESSION_DRIVE=str(drive))
    table = drive.parent / f"{drive.name}.mounts"
    table.write_text(fuse_mount_line(drive))
    env["CS_TEST_MOUNT_TABLE"] = str(table)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    env.pop("KILL_AT", None)
    if kill_at is not None:
        env["KILL_AT"] = kill_at
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(HARNESS), str(HERE / script), *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
