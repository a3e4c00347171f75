"""One vocabulary: a run is named `run` everywhere, the wrappers take a Checkpointer or its own
keyword arguments, a loop reads `should_stop`, and the test seams stay out of the signatures.
The old names keep working for one release, each with a DeprecationWarning naming the new one."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import colabsession as cs
from colabsession._cli import main
from colabsession._core.deprecation import renamed_arguments
from colabsession._storage.checkpointer import OPTIONS, checkpointer_for, split_options


def test_every_public_signature_names_the_run_run_first() -> None:
    for api in (cs.Checkpointer, cs.history, cs.plot_history):
        assert next(iter(inspect.signature(api).parameters)) == "run", api


def test_the_test_seams_are_out_of_the_public_signatures() -> None:
    for api in (cs.Checkpointer, cs.SessionClock):
        public = [p for p in inspect.signature(api).parameters if not p.startswith("_")]
        assert not {"monotonic", "now", "sleep"} & set(public), api
        assert "monotonic" not in (api.__doc__ or "")


def test_the_wrappers_options_are_the_checkpointers_keyword_arguments() -> None:
    keywords = {
        name
        for name, p in inspect.signature(cs.Checkpointer).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert keywords == OPTIONS
    options, rest = split_options({"keep_last": 2, "every": None, "class_weight": {0: 1.0}})
    assert options == {"keep_last": 2, "every": None}
    assert rest == {"class_weight": {0: 1.0}}


def test_a_wrapper_takes_a_checkpointer_or_its_options_not_both(tmp_path: Path) -> None:
    made = checkpointer_for(tmp_path / "a", {"keep_last": 5, "every": None}, who="the wrapper")
    assert (made.keep_last, made.every) == (5, None)
    assert checkpointer_for(tmp_path / "b", {}, who="w").keep_last == 3  # Checkpointer's default
    assert checkpointer_for(made, {}, who="the wrapper") is made
    with pytest.raises(cs.ConfigError, match=r"the wrapper got a Checkpointer.*keep_last"):
        checkpointer_for(made, {"keep_last": 2}, who="the wrapper")


def test_checkpointer_location_is_a_deprecated_alias_of_run(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"cs\.Checkpointer\(location=\.\.\.\).*run=") as w:
        ckpt = cs.Checkpointer(location=tmp_path)  # type: ignore[call-arg]
    assert w[0].filename == __file__  # the warning points at the caller
    assert ckpt.location.path == str(tmp_path)
    assert cs.Checkpointer(run=tmp_path).location.path == str(tmp_path)
    with pytest.raises(TypeError, match="both location= and run="):
        cs.Checkpointer(run=tmp_path, location=tmp_path)  # type: ignore[call-arg]


def test_the_old_seam_names_still_work_with_a_warning(tmp_path: Path) -> None:
    now = [100.0]
    with pytest.warns(DeprecationWarning, match=r"monotonic=.*use _monotonic="):
        ckpt = cs.Checkpointer(tmp_path, every="5min", monotonic=lambda: now[0])  # type: ignore[call-arg]
    ckpt.maybe_save(0, {"w": 1})  # the first step saves
    now[0] += 10
    assert ckpt.due(1) is None
    now[0] += 1000
    assert ckpt.due(1) == "save"  # the fake clock's time, not the machine's
    ckpt.close()
    with pytest.warns(DeprecationWarning, match=r"cs\.SessionClock\(now=\.\.\.\).*use _now="):
        clock = cs.SessionClock(started=0.0, max_session="1h", now=lambda: 600.0)  # type: ignore[call-arg]
    assert clock.remaining == 3000.0


def test_should_stop_is_read_only_and_stop_due_a_deprecated_alias(tmp_path: Path) -> None:
    ckpt = cs.Checkpointer(tmp_path, every=None, async_save=False)
    assert ckpt.should_stop is False
    with pytest.raises(AttributeError):
        ckpt.should_stop = True  # type: ignore[misc]
    assert ckpt.due(0) is None
    ckpt.request_stop("the test asks")
    assert ckpt.due(0) == "final"
    with pytest.warns(DeprecationWarning, match=r"stop_due.*due\(step\) == \"final\""):
        assert ckpt.stop_due
    assert ckpt.maybe_save(0, {"w": 1}) is True  # the final save
    assert ckpt.should_stop is True
    assert ckpt.due(1) is None  # stopped: nothing more is due
    ckpt.close()


def test_due_says_save_when_the_interval_has_passed(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None, every_steps=2) as ckpt:
        ckpt.save(0, {"w": 0})
        assert ckpt.due(1) is None
        assert ckpt.due(2) == "save"


def test_history_location_is_a_deprecated_alias_of_run(tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.log(1, loss=0.5)
    with pytest.warns(DeprecationWarning, match=r"cs\.history\(location=\.\.\.\).*run="):
        old = cs.history(location=tmp_path)  # type: ignore[call-arg]
    assert len(old) == len(cs.history(tmp_path)) == 1


def test_the_renamed_arguments_decorator_refuses_unknown_names_as_before() -> None:
    @renamed_arguments("f", old="new")
    def f(new: int = 0) -> int:
        return new

    with pytest.warns(DeprecationWarning, match=r"f\(old=\.\.\.\) is deprecated.*use new="):
        assert f(old=2) == 2  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        f(other=1)  # type: ignore[call-arg]
    assert inspect.signature(f).parameters.keys() == {"new"}


def test_cli_ckpt_commands_read_a_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["ckpt", "list", "--help"])
    out = capsys.readouterr().out
    assert "RUN " in out or "RUN\n" in out
    assert "RUN_OR_LOCATION" not in out
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(3, {"w": 1})
    assert main(["ckpt", "list", str(tmp_path)]) == 0
    assert "3" in capsys.readouterr().out


def test_cli_demo_location_is_deprecated_for_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import colabsession.demo

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(colabsession.demo, "run", lambda **kwargs: calls.append(kwargs))
    assert main(["demo", "--location", "./elsewhere"]) == 0
    assert "--location is deprecated" in capsys.readouterr().err
    assert main(["demo", "--run", "./there"]) == 0
    assert [call["run"] for call in calls] == ["./elsewhere", "./there"]
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--location" not in capsys.readouterr().out
