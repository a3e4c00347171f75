"""The test suite's own isolation: tests marked ``tensorflow`` run in a pytest of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from colabsession._core.optional import installed

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    not installed("tensorflow"), reason="without TensorFlow every test runs in one process"
)

CONFTEST = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import isolation

def pytest_configure(config):
    isolation.configure(config)
"""

PLAIN = """
import os, pytest

def test_plain():
    with open(os.path.join(os.environ["PIDS"], "plain.pid"), "w") as f:
        f.write(str(os.getpid()))

def test_tensorflow_is_refused_here():
    with pytest.raises(ImportError, match="pytest.mark.tensorflow"):
        import tensorflow  # noqa: F401
"""

MARKED = """
import os, signal, pytest
pytestmark = pytest.mark.tensorflow

def test_marked():
    with open(os.path.join(os.environ["PIDS"], "marked.pid"), "w") as f:
        f.write(str(os.getpid()))

def test_marked_fails():
    assert os.environ.get("OUTCOME") != "break"

def test_marked_crashes():
    if os.environ.get("OUTCOME") == "break":
        os.kill(os.getpid(), signal.SIGSEGV)

@pytest.mark.skip(reason="said so")
def test_marked_skipped():
    pass
"""


def run_suite(tmp_path: Path, outcome: str) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_plain.py").write_text(PLAIN)
    (suite / "test_marked.py").write_text(MARKED)
    env = {**os.environ, "OUTCOME": outcome, "PIDS": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("COLABSESSION_TEST_GROUP", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfs", str(suite)],
        cwd=suite,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_marked_tests_run_in_another_process_and_report_here(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "pass")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "5 passed, 1 skipped" in result.stdout  # one summary, the child's tests counted
    assert "said so" in result.stdout  # a skip's reason comes back too
    plain, marked = ((tmp_path / f"{n}.pid").read_text() for n in ("plain", "marked"))
    assert plain != marked


def test_a_failure_or_a_crash_in_the_other_process_fails_the_run(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "break")
    assert result.returncode == 1
    assert "FAILED test_marked.py::test_marked_fails" in result.stdout
    # The crash fails the test it ran, with the child's status; what it never ran fails too.
    assert "FAILED test_marked.py::test_marked_crashes" in result.stdout
    assert "ended with status -11" in result.stdout
    assert "FAILED test_marked.py::test_marked_skipped" in result.stdout
    assert "3 failed, 3 passed" in result.stdout
