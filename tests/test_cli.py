from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import colabsession as cs
from colabsession._cli import main
from colabsession._core.optional import installed


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


def _saved_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    with cs.Checkpointer(run, every=None) as ckpt:
        ckpt.save(1, {"w": [1.0]}, metrics={"loss": 0.5})
    return run


BAD_USAGE = [
    (["clock", "--max-session", "soon"], "not a duration"),
    (["clock", "--max-session", "-5h"], "must be positive"),
    (["clock", "--max-session", "0"], "must be positive"),
    (["demo", "--epochs", "-3"], "must be at least 1"),
    (["demo", "--epochs", "0"], "must be at least 1"),
    (["demo", "--epochs", "many"], "whole number"),
    (["no-such-command"], "invalid choice"),
    (["ckpt", "list"], "required"),
    (["ckpt", "nope", "x"], "invalid choice"),
    (["env", "remove"], "required"),
    (["env", "install"], "required"),
    (["probe", "--nope"], "unrecognized"),
]


@pytest.mark.parametrize(("argv", "says"), BAD_USAGE, ids=[" ".join(a) for a, _ in BAD_USAGE])
def test_bad_usage_exits_2_with_the_reason(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert says in err.strip().splitlines()[-1]


def test_no_command_prints_help_and_exits_2() -> None:
    assert main([]) == 2
    assert main(["ckpt"]) == 2
    assert main(["env"]) == 2


ERRORS = [
    (["ckpt", "list", "nope"], {}, "no run at drive:checkpoints/nope"),
    (["ckpt", "verify", "nope"], {}, "no run at"),
    (["ckpt", "history", "nope"], {}, "no run at"),
    (["ckpt", "plot", "nope", "-o", "{tmp}/x.png"], {}, "no run at"),
    (["ckpt", "takeover", "nope"], {}, "no run at"),
    (["ckpt", "list", "./not-here"], {}, "no run at"),
    (["ckpt", "plot", "{run}", "-o", "{tmp}/missing/dir/x.png"], {}, "does not exist"),
    (["ckpt", "plot", "{run}", "-o", "{tmp}/x.unknownext"], {}, "not an image format"),
    (["ckpt", "plot", "{run}", "-o", "{tmp}/x"], {}, "no extension"),
    (["env", "restore", "--name", "nothing-here"], {}, "no environment 'nothing-here'"),
    (["env", "remove", "nothing-here"], {}, "nothing-here"),
    (["env", "install", "x", "--name", "bad name!"], {}, "name"),
    (["env", "install", "x"], {"COLABSESSION_HOME": "/proc/nope"}, "/proc/nope"),
    (["ckpt", "list", "drive:x"], {"COLABSESSION_SERVICE_ACCOUNT": "{not json"}, "JSON"),
    (
        ["ckpt", "list", "drive:x"],
        {"COLABSESSION_SERVICE_ACCOUNT": "'-----BEGIN PRIVATE KEY-----\\nSECRET\\n'"},
        "neither a file nor JSON",
    ),
]


def _extra(argv: list[str], env: dict[str, str]) -> list[pytest.MarkDecorator]:
    """The mark that skips a case when the extra it goes through is not installed (tox's test
    environment installs only the test extra)."""
    module, extra = (
        ("matplotlib", "plot")
        if "plot" in argv
        else ("pydrive2", "drive")
        if "COLABSESSION_SERVICE_ACCOUNT" in env
        else (None, None)
    )
    if module is None or installed(module):
        return []
    return [pytest.mark.skip(reason=f"needs the {extra} extra ({module})")]


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        pytest.param(a, e, s, marks=_extra(a, e), id=" ".join(a) + str(sorted(e)))
        for a, e, s in ERRORS
    ],
)
def test_errors_are_one_line_and_exit_1(
    argv: list[str],
    env: dict[str, str],
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _saved_run(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [a.format(tmp=tmp_path, run=run) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("colabsession: error: ")
    assert says in err
    assert "SECRET" not in err  # a credential source is never echoed


def test_read_only_commands_create_nothing(isolated: Path) -> None:
    for argv in (["ckpt", "list", "nope"], ["ckpt", "history", "nope"], ["env", "list"]):
        main(argv)
    assert not isolated.exists()  # not even colabsession's home


def test_missing_run_lists_the_runs_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with cs.Checkpointer("digits-cnn", every=None) as ckpt:
        ckpt.log(1, loss=1.0)
    assert main(["ckpt", "history", "digits-cn"]) == 1
    assert "runs in drive:checkpoints: digits-cnn" in capsys.readouterr().err
    with pytest.raises(cs.RunNotFoundError, match="digits-cnn") as info:
        cs.history("digits-cn")
    assert (info.value.run, info.value.runs) == ("digits-cn", ("digits-cnn",))
    assert info.value.path is not None
    assert info.value.path.endswith("checkpoints/digits-cn")


def test_ckpt_commands_on_a_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _saved_run(tmp_path)
    assert main(["ckpt", "list", str(run)]) == 0
    out = capsys.readouterr().out
    assert "loss=0.5" in out
    assert ".000000+" not in out  # whole seconds
    assert main(["ckpt", "verify", str(run)]) == 0
    assert main(["ckpt", "history", str(run)]) == 0
    assert "0.5" in capsys.readouterr().out
    assert main(["ckpt", "takeover", str(run)]) == 0
    assert "nobody holds" in capsys.readouterr().out


def test_takeover_frees_a_run_held_by_a_notebook_that_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    held = cs.Checkpointer(run, every=None, lease_ttl="1h")
    held.save(1, {"w": [1.0]})
    held.wait()
    assert main(["ckpt", "takeover", str(run)]) == 0
    assert f"pid {os.getpid()}" in capsys.readouterr().out
    lease = json.loads((run / "lease.json").read_text())
    assert lease["heartbeat"] == 0  # expired: the next writer need not wait an hour
    with pytest.raises(cs.LeaseError, match="taken over"):  # the old writer stops writing
        held.save(2, {"w": [2.0]})
    held.close()
    with cs.Checkpointer(run, every=None) as ckpt:
        assert ckpt.restore() is not None
        ckpt.save(3, {"w": [3.0]})
    assert cs.Checkpointer(run, every=None).steps() == [1, 3]


def test_clock_prints_whole_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clock"]) == 0
    deadline = next(line for line in capsys.readouterr().out.splitlines() if "deadline" in line)
    assert "." not in deadline


def test_every_subcommand_and_option_has_help() -> None:
    from colabsession._cli import _parser

    def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)

    for parser in walk(_parser()):
        assert parser.description, parser.prog
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_python_dash_m_and_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "colabsession", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"colabsession {cs.__version__}"
