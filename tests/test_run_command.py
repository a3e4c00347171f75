"""The one bounded subprocess runner: its output, its environment, and the kill at its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from colabsession._core.timeout import run_command

PRINT_VAR = "import os; print(os.environ.get('CS_PROBE', 'unset'))"


def test_output_and_exit_status() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = run_command([sys.executable, "-c", code], timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_the_environment_given_is_the_childs_whole_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CS_PROBE", "inherited")
    assert run_command([sys.executable, "-c", PRINT_VAR], 60).stdout == "inherited\n"
    given = {k: v for k, v in os.environ.items() if k != "CS_PROBE"}
    assert run_command([sys.executable, "-c", PRINT_VAR], 60, env=given).stdout == "unset\n"
    given["CS_PROBE"] = "given"
    assert run_command([sys.executable, "-c", PRINT_VAR], 60, env=given).stdout == "given\n"


def test_a_hung_command_and_its_children_are_killed_at_the_timeout(tmp_path: Path) -> None:
    # The child starts a grandchild that holds the pipes open: were only the child killed,
    # reading its output would wait for the grandchild, and this test would not return.
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        run_command([sys.executable, "-c", code], timeout=0.5)
    if pids.exists():  # under heavy load the timeout can come before the child wrote them
        parent = int(pids.read_text().split()[0])
        with pytest.raises(ProcessLookupError):  # killed, and reaped
            os.kill(parent, 0)
