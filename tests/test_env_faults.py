"""Persistent environments under hostile manifests, kills and odd settings: issue 13's failures."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import colabsession as cs
from colabsession._env import build as _build
from colabsession.env import EnvInfo, local_path

from .test_env import env_folder, manifest_of
from .wheels import make_wheel

pytestmark = pytest.mark.usefixtures("clean_interpreter")


@pytest.fixture(scope="module")
def shadow_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package that needs an older version of one the base has (iniconfig, pytest's own)."""
    folder = tmp_path_factory.mktemp("shadow")
    make_wheel(folder, "cs-demo-old", "1.0", requires=("iniconfig<1",))
    make_wheel(folder, "iniconfig", "0.1")
    return folder


def installed(*requirements: str, **options: object) -> EnvInfo:
    info = cs.env.install(*requirements, **options)  # type: ignore[arg-type]
    assert info is not None
    return info


def rewrite_manifest(isolated: Path, change: object) -> Path:
    manifest = manifest_of(isolated)
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(change(data)))  # type: ignore[operator]
    return manifest


# 2. The manifest's fields are checked before use -------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("archive", "/etc/passwd", "not a layer archive's name"),
        ("archive", "../other/layer-0123456789abcdef.tar.zst", "not a layer archive's name"),
        ("name", "someone-else", "names the environment"),
        ("sha256", "0" * 64, "sha256 does not match"),
        ("size", -1, "sizes are not possible"),
        ("packages", [["only-a-name"]], "package list"),
        ("packages", "not a list", "wrong type"),
        ("version", 99, "newer colabsession"),
    ],
)
def test_hostile_manifest_fields_are_refused(
    isolated: Path, pip_args: list[str], field: str, value: object, why: str
) -> None:
    installed("cs-demo-a", pip_args=pip_args)
    shutil.rmtree(isolated / "envs")
    rewrite_manifest(isolated, lambda data: {**data, field: value})
    before = list(sys.path)
    with pytest.raises(cs.EnvError, match=why):
        cs.env.restore()
    assert sys.path == before
    assert not (isolated / "envs" / "my_env").exists() or not any(
        p.name.startswith("layer-") for p in (isolated / "envs" / "my_env").iterdir()
    )


# 3. Extending never rewrites the manifest in place; a torn newer one falls back ----------------


def test_extending_writes_a_new_manifest_and_a_torn_one_falls_back(
    isolated: Path, pip_args: list[str]
) -> None:
    first = installed("cs-demo-a", pip_args=pip_args)
    old = manifest_of(isolated)
    second = installed("cs-demo-c", pip_args=pip_args)
    new = manifest_of(isolated)
    assert new.name != old.name  # a new file; the old one went only after it was whole
    assert second.sequence == first.sequence + 1
    # A third install killed while writing its manifest: a torn, newer manifest.
    torn = env_folder(isolated) / f"manifest.{second.sequence + 1:06d}.abcdef01.json"
    torn.write_bytes(new.read_bytes()[:40])
    shutil.rmtree(isolated / "envs")
    info = cs.env.restore("my_env")
    assert info.sequence == second.sequence
    assert dict(info.packages)["cs-demo-c"] == "1.0"


def test_legacy_manifest_is_read(isolated: Path, pip_args: list[str]) -> None:
    """An environment saved by colabsession 0.1 (manifest.json, packages as objects)."""
    info = installed("cs-demo-a", pip_args=pip_args)
    manifest = manifest_of(isolated)
    data = json.loads(manifest.read_text())
    legacy = {k: v for k, v in data.items() if k not in ("kind", "version", "sequence")}
    legacy["format"] = "colabsession-env"
    legacy["packages"] = [{"name": n, "version": v} for n, v in data["packages"]]
    manifest.unlink()
    (env_folder(isolated) / "manifest.json").write_text(json.dumps(legacy))
    shutil.rmtree(isolated / "envs")
    assert cs.env.restore("my_env").packages == info.packages


# 4. A kill while the layer moves into place never leaves a half layer that restore activates ----


def test_half_extracted_layer_is_never_activated(isolated: Path, pip_args: list[str]) -> None:
    info = installed("cs-demo-a", pip_args=pip_args)
    shutil.rmtree(isolated / "envs")
    # What a kill during the extraction leaves behind: a half-filled temporary folder.
    half = isolated / "envs" / "my_env" / ".fetch-deadbeef"
    (half / "cs_demo_a").mkdir(parents=True)
    (half / "cs_demo_a" / "__init__.py").write_text("raise SystemExit('half a layer')\n")
    restored = cs.env.restore("my_env")
    layer = local_path(restored)
    assert layer.is_dir() and str(layer) in sys.path  # noqa: PT018
    assert (layer / "cs_demo_a" / "__init__.py").read_text().startswith('VERSION = "1.0"')
    assert restored.archive == info.archive


# 5. A manifest of null or [] breaks nothing else; install over it rebuilds ----------------------


@pytest.mark.parametrize("content", ["null", "[]", '"text"', "{}", ""])
def test_damaged_manifest_spares_the_others_and_install_rebuilds_it(
    isolated: Path, pip_args: list[str], content: str, caplog: pytest.LogCaptureFixture
) -> None:
    installed("cs-demo-c", name="good", pip_args=pip_args)
    installed("cs-demo-a", name="broken", pip_args=pip_args)
    manifest_of(isolated, "broken").write_text(content)
    with caplog.at_level(logging.WARNING, "colabsession"):
        assert [e.name for e in cs.env.list()] == ["good"]
    assert "skipping broken" in caplog.text
    from colabsession._cli import main

    assert main(["env", "list"]) == 0
    with pytest.raises(cs.EnvError, match=r"cs\.env\.install\(\.\.\., name='broken'\).*remove"):
        cs.env.restore("broken")
    info = installed("cs-demo-a", name="broken", pip_args=pip_args)  # rebuilds it
    assert dict(info.packages)["cs-demo-a"] == "1.0"
    files = sorted(p.name for p in env_folder(isolated, "broken").iterdir())
    assert len(files) == 2  # the damaged manifest went once the new one was saved
    assert cs.env.restore("broken").sequence == info.sequence


# 6. A dependency may not shadow a package of the base ------------------------------------------


def test_shadowing_a_base_package_is_refused_unless_named(
    isolated: Path, shadow_wheels: Path
) -> None:
    args = ["--no-index", "--find-links", str(shadow_wheels)]
    with pytest.raises(cs.EnvError, match=r"needs iniconfig 0\.1, but the base .* iniconfig \d"):
        cs.env.install("cs-demo-old", pip_args=args)
    assert not env_folder(isolated).exists() or not any(env_folder(isolated).iterdir())
    info = installed("cs-demo-old", "iniconfig==0.1", pip_args=args)  # named: allowed
    assert dict(info.packages)["iniconfig"] == "0.1"


# 7. The unpacked size is capped, and free space checked first ------------------------------------


def test_archive_larger_than_declared_is_stopped(isolated: Path, pip_args: list[str]) -> None:
    installed("cs-demo-a", pip_args=pip_args)
    shutil.rmtree(isolated / "envs")
    rewrite_manifest(isolated, lambda data: {**data, "unpacked": 10})
    with pytest.raises(cs.EnvError, match="more than the 10 bytes"):
        cs.env.restore()
    assert not any(p.name.startswith("layer-") for p in (isolated / "envs/my_env").iterdir())


def test_too_little_free_space_is_said_first(isolated: Path, pip_args: list[str]) -> None:
    installed("cs-demo-a", pip_args=pip_args)
    shutil.rmtree(isolated / "envs")
    rewrite_manifest(isolated, lambda data: {**data, "unpacked": 2**60})
    with pytest.raises(cs.EnvError, match=r"needs about .* free space"):
        cs.env.restore()


# 8. Clear words ---------------------------------------------------------------------------------


def test_location_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from colabsession._cli import main

    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    for argv in (
        ["env", "list", "--location", str(a_file)],
        ["env", "restore", "--location", str(a_file)],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "is a file" in err[0]


def test_nothing_to_add_saves_nothing(
    isolated: Path, pip_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cs.env.install("packaging", pip_args=pip_args) is None
    assert "already has packaging: nothing to add" in capsys.readouterr().out
    assert not env_folder(isolated).exists() or not any(env_folder(isolated).iterdir())


def test_restore_says_what_and_how_long(
    isolated: Path, pip_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    installed("cs-demo-a", pip_args=pip_args)
    shutil.rmtree(isolated / "envs")
    capsys.readouterr()
    cs.env.restore()
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("colabsession: restored environment 'my_env' (2 package(s)")
    assert line.endswith("s")


# 9. Colab's uv constraints ----------------------------------------------------------------------


@pytest.fixture
def colab_uv_constraints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Colab sets these to its own constraint files; this one pins a version the layer needs
    otherwise (as Colab's pins its own packages)."""
    constraints = tmp_path / "colab-constraints.txt"
    constraints.write_text("cs-demo-b==1.0\n")
    monkeypatch.setenv("UV_CONSTRAINT", str(constraints))
    monkeypatch.setenv("UV_BUILD_CONSTRAINT", str(constraints))
    return constraints


def test_uv_install_with_colabs_constraints_set(
    isolated: Path,
    pip_args: list[str],
    colab_uv_constraints: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("uv")
    info = installed("cs-demo-a", pip_args=pip_args, installer="uv")
    assert dict(info.packages) == {"cs-demo-a": "1.0", "cs-demo-b": "2.0"}
    out = capsys.readouterr().out
    assert "not applying $UV_CONSTRAINT and $UV_BUILD_CONSTRAINT" in out
    assert os.environ["UV_CONSTRAINT"] == str(colab_uv_constraints)  # left as Colab set it


# Through the Drive API (the fake server) ---------------------------------------------------------


def test_install_and_restore_through_the_drive_api(
    isolated: Path, pip_args: list[str], drive_api: Any, fake_drive: Any
) -> None:
    from colabsession.drive import Location

    fs = drive_api
    location = Location(fs, f"{fs.root}/envs", "drive:envs (Drive API)")
    first = installed("cs-demo-a", location=location, pip_args=pip_args)
    second = installed("cs-demo-c", location=location, pip_args=pip_args)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{fs.root}/envs/my_env"))
    assert len(names) == 2  # one manifest, one archive: the first ones went after the commit
    assert second.archive in names
    assert first.archive not in names
    assert fake_drive.used()[1] == 0  # deleted for good, not sent to the Trash (issue 23)
    shutil.rmtree(isolated / "envs")
    restored = cs.env.restore("my_env", location=location)
    assert restored.sequence == second.sequence
    import cs_demo_c  # type: ignore[import-not-found]

    assert cs_demo_c.VERSION == "1.0"


# A pip, uv or compileall that hangs is stopped at its timeout -----------------------------------

HUNG = """
import os, subprocess, sys, time
if __name__ == "__main__":
    # A child that holds the pipes open too: only killing the whole group ends the wait.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["CS_HUNG_PIDS"], "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    time.sleep(600)
"""


def _hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> Path:
    """A *module* (run as ``python -m module``) that hangs, ahead of the real one on the path
    of every Python the build starts; returns the file its processes write their ids to."""
    folder = tmp_path / "hanging"
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text("")
    (folder / module / "__main__.py").write_text(HUNG)
    pids = tmp_path / "pids"
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.setenv("CS_HUNG_PIDS", str(pids))
    return pids


def _assert_killed(pids: Path) -> None:
    # Under heavy load the timeout can come before the process wrote its id.
    for pid in pids.read_text().split() if pids.exists() else []:
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(int(pid), 0)


def test_a_hung_pip_is_killed_at_its_timeout(
    isolated: Path, pip_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = _hanging(tmp_path, monkeypatch, "pip")
    monkeypatch.setattr(_build, "PIP_TIMEOUT", 0.5)
    before = list(sys.path)
    with pytest.raises(
        cs.EnvError,
        match=r"pip did not resolve the requirements within 500ms and was stopped; nothing "
        r"was changed. Check that the package index answers",
    ):
        cs.env.install("cs-demo-a", pip_args=pip_args)
    _assert_killed(pids)
    assert not env_folder(isolated).exists()
    assert sys.path == before


def test_a_hung_compile_is_killed_at_its_timeout(
    isolated: Path, pip_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed("cs-demo-c", pip_args=pip_args)
    before = sorted(p.name for p in env_folder(isolated).iterdir())
    pids = _hanging(tmp_path, monkeypatch, "compileall")
    monkeypatch.setattr(_build, "COMPILE_TIMEOUT", 0.5)
    with pytest.raises(cs.EnvError, match=r"compiling the packages did not finish within"):
        # pip itself compiles through compileall's functions, which the stand-in lacks
        cs.env.install("cs-demo-a", pip_args=[*pip_args, "--no-compile"])
    _assert_killed(pids)
    assert sorted(p.name for p in env_folder(isolated).iterdir()) == before  # nothing saved
