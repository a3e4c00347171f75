"""The main job, end to end: `colabsession demo`, interrupted with Ctrl-C and run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colabsession._core.optional import installed


def _needs_demo_extra() -> None:
    """The demo runs in a child process: TensorFlow is looked up, not imported, here (this
    process may be the one that runs PyTorch's tests: see isolation.py)."""
    missing = [m for m in ("tensorflow", "sklearn") if not installed(m)]
    if missing:
        pytest.skip(f"needs the demo extra ({', '.join(missing)})")


def _default_sigint() -> None:
    """A test run under nohup (or from a shell without job control) inherits SIGINT as ignored,
    and so would the demo: give it Python's usual Ctrl-C, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_interrupted_and_resumed(tmp_path: Path) -> None:
    _needs_demo_extra()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "colabsession", "demo", "--run", str(tmp_path / "run")]
    proc = subprocess.Popen(
        [*command, "--epochs", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch 4/") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)  # the stop button
    out = "".join(seen) + proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted; saved the run" in out

    again = subprocess.run(
        [*command, "--epochs", "5"], capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "colabsession: resumed" in again.stdout
    assert "5 of 5 epochs done" in again.stdout
    for output in (out, again.stdout + again.stderr):
        # TensorFlow's C++ start-up lines are hidden; the probe table says what hardware there is.
        assert "absl::InitializeLog" not in output
        assert "I0000 " not in output
    assert "run the same command again" in out  # a shell, not a notebook cell


def test_demo_checks_the_location_before_training(tmp_path: Path) -> None:
    _needs_demo_extra()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "colabsession", "demo", "--run", str(blocker / "run")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert "Epoch" not in result.stdout  # refused before an epoch was spent
    errors = [line for line in result.stderr.splitlines() if line.startswith("colabsession:")]
    assert len(errors) == 1
    assert errors[0].startswith("colabsession: error: cannot write to")
    assert "Traceback" not in result.stderr
