from __future__ import annotations

import json
import subprocess
import sys

import pytest

import colabsession as cs
from colabsession._cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == cs.__version__


def test_runtime_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runtime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "local"


def test_runtime_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runtime"]) == 0
    out = capsys.readouterr().out
    assert "kind" in out
    assert "local" in out


def test_clock(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clock", "--max-session", "24h"]) == 0
    assert "24h" in capsys.readouterr().out
    assert main(["clock", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_session"] == 12 * 3600


def test_colabsession_error_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clock", "--max-session", "soon"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("colabsession: error: cannot read max_session='soon'")
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert main([]) == 2  # no command: help, and a usage status


def test_python_dash_m_and_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "colabsession", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"colabsession {cs.__version__}"
