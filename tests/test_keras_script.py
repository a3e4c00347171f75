"""keras-io's mnist_convnet.py, written here the way it is written and adapted as docs/keras.md
says, killed with SIGKILL at a random batch and in the middle of a checkpoint write, re-run until
it finishes: it ends bit-identical to a run never killed, with each epoch in its history once."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from colabsession._storage.history import read_history

HERE = Path(__file__).parent
SCRIPT = str(HERE / "keras_mnist_convnet.py")
RUNNER = str(HERE / "keras_script_runner.py")
BATCHES = 3 * 11  # 3 epochs of 1350 rows (1500 less the validation tenth) in batches of 128


def run_script(root: Path, out: Path, **kill: int) -> subprocess.CompletedProcess[str]:
    """The script in a process of its own, with its own colabsession home and Drive folder."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "KERAS_BACKEND": "tensorflow",
        "COLABSESSION_HOME": str(root / "home"),
        "COLABSESSION_DRIVE": str(root / "drive"),
        **{f"KILL_{k.upper()}": str(v) for k, v in kill.items()},
    }
    return subprocess.run(
        [sys.executable, RUNNER, SCRIPT, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=root,
    )


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the save kill reads /proc")
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("tensorflow", "keras", "sklearn")),
    reason="needs TensorFlow, Keras and scikit-learn",
)  # (found, not imported: TensorFlow runs only in the script's processes)
def test_mnist_convnet_killed_and_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    at = random.randrange(4, 21)  # a batch of epoch 1 or 2; the saves come every 3 batches
    why = f"killed at batch {at}"
    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    reference = run_script(tmp_path / "ref", tmp_path / "reference.npz")
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = run_script(tmp_path / "run", tmp_path / "never.npz", at_batch=at)
    assert killed.returncode == -9, why
    in_save = run_script(tmp_path / "run", tmp_path / "never.npz", in_save=2)
    assert in_save.returncode == -9, why  # in this session's second checkpoint write
    for _ in range(2):  # re-run until it is done
        resumed = run_script(tmp_path / "run", tmp_path / "resumed.npz")
        if resumed.returncode == 0:
            break
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stdout, why

    with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=why)  # bit for bit
    # The History of all sessions: each epoch once, the ones cut short with the same loss,
    # accuracy and validation metrics as the uninterrupted run.
    expected = json.loads((tmp_path / "reference.npz.json").read_text())
    assert json.loads((tmp_path / "resumed.npz.json").read_text()) == expected, why
    assert expected["epoch"] == [0, 1, 2]
    test_loss = [line for line in reference.stdout.splitlines() if line.startswith("Test loss")]
    assert test_loss, reference.stdout[-2000:]
    assert test_loss[0] in resumed.stdout.splitlines(), why
    location = tmp_path / "run" / "drive" / "checkpoints" / "mnist-convnet"
    epochs = [r["epoch"] for r in read_history(location) if "epoch" in r]
    assert epochs == [0, 1, 2], why
