"""cs.session(imports=...): the framework the run needs is imported while the parts wait on
Drive, after the environment is active; a failing import says nothing there and raises in the
user's own import."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import numpy as np
import pytest

import colabsession as cs
from colabsession._session.parts import DataPart, RunPart
from colabsession._storage.serialize import frameworks_in

pytestmark = pytest.mark.usefixtures("clean_interpreter")


def module(folder: Path, name: str, body: str) -> None:
    """A module *name* in *folder* (on sys.path) whose import runs *body*."""
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    importlib.invalidate_caches()


class Gate:
    """A part that lets the module ``cs_demo_gated`` finish importing only when it runs."""

    name = "gate"

    def __init__(self) -> None:
        self.open = threading.Event()

    def run(self) -> str:
        self.open.set()
        return "opened"


def test_named_modules_are_imported_before_the_call_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    gate = Gate()
    monkeypatch.setitem(sys.modules, "cs_gate_for_test", types.SimpleNamespace(event=gate.open))
    # Its import ends only after the part ran: the call must wait for it, not only the parts.
    module(
        tmp_path,
        "cs_demo_gated",
        """
        import cs_gate_for_test
        assert cs_gate_for_test.event.wait(30)
        DONE = True
        """,
    )
    report = cs.session(env=None, imports=["cs_demo_gated"], _parts=[gate])
    assert report.ok
    assert report.imported == ("cs_demo_gated",)
    assert sys.modules["cs_demo_gated"].DONE
    assert "imported meanwhile: cs_demo_gated" in capsys.readouterr().out
    # Imported already: not again, and nothing to report.
    assert cs.session(env=None, imports="cs_demo_gated").imported == ()


def test_imports_wait_for_the_environment(isolated: Path, pip_args: list[str]) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    shutil.rmtree(isolated / "envs")  # a new runtime: the module is only in the saved env
    sys.modules.pop("cs_demo_a", None)
    with pytest.raises(ImportError):
        importlib.import_module("cs_demo_a")
    report = cs.session(imports="cs_demo_a")
    assert report["env"].ok, report
    assert report.imported == ("cs_demo_a",)  # imported from the environment once active
    assert sys.modules["cs_demo_a"].VERSION == "1.0"


def test_imports_wait_for_the_datasets(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = isolated / "drive" / "datasets" / "flowers"
    folder.mkdir(parents=True)
    for index in range(5):
        (folder / f"img{index}.jpg").write_bytes(bytes([index]) * 100)
    cs.data.pack("drive:datasets/flowers")
    order: list[str] = []
    staged = DataPart._run

    def run(self: DataPart) -> str:
        try:
            return staged(self)
        finally:
            order.append("staged")

    monkeypatch.setattr(DataPart, "_run", run)
    monkeypatch.setitem(sys.modules, "cs_gate_for_test", types.SimpleNamespace(order=order))
    monkeypatch.syspath_prepend(str(tmp_path))
    module(
        tmp_path,
        "cs_demo_after_data",
        "import cs_gate_for_test\ncs_gate_for_test.order.append('imported')\n",
    )
    report = cs.session(env=None, data="drive:datasets/flowers", imports="cs_demo_after_data")
    assert report.ok, report
    # Unpacking and importing both run Python between system calls: not side by side.
    assert order == ["staged", "imported"]


def test_a_failing_import_is_silent_and_raises_in_the_users_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    module(tmp_path, "cs_demo_broken", "raise RuntimeError('broken at import')\n")
    report = cs.session(env=None, strict=True, imports=["cs_demo_broken"])
    assert report.ok
    assert report.imported == ()
    assert "cs_demo_broken" not in sys.modules
    assert "cs_demo_broken" not in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="broken at import"):
        importlib.import_module("cs_demo_broken")


def test_an_import_past_the_timeout_is_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    release = threading.Event()
    monkeypatch.setitem(sys.modules, "cs_gate_for_test", types.SimpleNamespace(event=release))
    module(
        tmp_path,
        "cs_demo_stuck",
        "import cs_gate_for_test\nassert cs_gate_for_test.event.wait(30)\n",
    )
    try:
        report = cs.session(env=None, timeout="0.1s", imports="cs_demo_stuck")
        assert report.ok
        assert report.imported == ()
    finally:
        release.set()


def test_imports_must_be_module_names() -> None:
    with pytest.raises(cs.ConfigError, match="not a module's name") as caught:
        cs.session(env=None, imports=["torch", "pip install torch"])
    assert caught.value.name == "imports"
    assert cs.session(env=None, imports=None).imported == ()


def test_the_run_part_finds_the_frameworks_of_the_newest_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    run = f"memory://{tmp_path.name}/run"
    with cs.Checkpointer(run, every=None) as ckpt:
        ckpt.save(1, {"w": np.zeros(3, np.float32)})
        ckpt.save(2, {"w": torch.zeros(3), "step": 2})
    part = RunPart(run)
    assert not part.found.is_set()
    part.run()
    assert part.found.is_set()
    assert part.frameworks == ("torch",)
    # Nothing saved: found is set all the same (the importer does not wait for it).
    empty = RunPart(f"memory://{tmp_path.name}/empty")
    empty.run()
    assert empty.found.is_set()
    assert empty.frameworks == ()


def test_frameworks_in_a_tree_from_drive_are_only_the_known_ones() -> None:
    def described(framework: object) -> dict[str, object]:
        return {"$x": {"framework": framework, "array": 0, "dtype": "float32"}}

    tree = {
        "a": [described("torch"), {"$t": [described("jax")]}],
        "b": described("os"),  # never imported because a manifest says so
        "c": described(["torch"]),
        "$x": "an escaped user key beside others",
        "d": {"$x": "not a description"},
    }
    assert frameworks_in(tree) == {"torch", "jax"}
    assert frameworks_in({"w": {"$a": 0}}) == set()
    deep: object = described("torch")
    for _ in range(5000):
        deep = [deep]
    assert frameworks_in(deep) == {"torch"}


def test_a_torch_run_finds_torch_imported_in_a_fresh_interpreter() -> None:
    torch = pytest.importorskip("torch")
    with cs.Checkpointer("cold", every=None) as ckpt:
        ckpt.save(7, {"w": torch.arange(4.0)})
    code = """
import json, sys
import colabsession as cs
before = "torch" in sys.modules
report = cs.session(run="cold", env=None)
after = "torch" in sys.modules
state = cs.Checkpointer("cold", every=None).restore().state
print(json.dumps({"before": before, "after": after, "imported": report.imported,
                  "w": state["w"].tolist(), "type": type(state["w"]).__module__}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {
        "before": False,
        "after": True,
        "imported": ["torch"],
        "w": [0.0, 1.0, 2.0, 3.0],
        "type": "torch",
    }
