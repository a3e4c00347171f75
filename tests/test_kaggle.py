"""Kaggle as a runtime: detected from the variables its kernels set, the persisted
/kaggle/working standing in for Drive (here a temporary folder put in its place by the sandbox),
and Kaggle's session limits on the clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import colabsession as cs
from colabsession._runtime import probe
from colabsession._runtime import runtime as _runtime

# What a Kaggle kernel's environment holds (Kaggle's docker-python image and its kernels).
KAGGLE_ENV = {
    "KAGGLE_KERNEL_RUN_TYPE": "Interactive",
    "KAGGLE_URL_BASE": "https://www.kaggle.com",
    "KAGGLE_DATA_PROXY_URL": "https://dp.kaggle.net",
    "KAGGLE_KERNEL_INTEGRATIONS": "",
}


@pytest.fixture
def kaggle(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Kaggle kernel; returns the folder that plays /kaggle/working."""
    for name, value in KAGGLE_ENV.items():
        monkeypatch.setenv(name, value)
    return _runtime.KAGGLE_WORKING


@pytest.mark.parametrize(
    "name", ["KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_DATA_PROXY_URL"]
)
def test_each_kaggle_variable_is_enough(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, KAGGLE_ENV[name])
    assert cs.runtime().kind == "kaggle"


def test_kaggle_working_stands_in_for_drive(kaggle: Path) -> None:
    assert kaggle != Path("/kaggle/working")  # the sandbox put a temporary folder in its place
    rt = cs.runtime()
    assert (rt.kind, rt.drive_root, rt.drive_mounted) == ("kaggle", kaggle, False)
    assert cs.drive.resolve("drive:checkpoints/run").path == str(kaggle / "checkpoints" / "run")


def test_a_run_is_kept_in_kaggle_working(kaggle: Path) -> None:
    with cs.Checkpointer("digits", every=None) as ckpt:
        ckpt.save(3, {"w": [1.0, 2.0]})
    assert (kaggle / "checkpoints" / "digits").is_dir()
    assert cs.Checkpointer("digits").latest_step() == 3


def test_the_notice_says_what_kaggle_keeps_once(
    kaggle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "colabsession"):
        assert cs.mount() == kaggle
        assert cs.mount() == kaggle
    assert kaggle.is_dir()
    assert caplog.text.count("Persistence set to Files") == 1
    assert "save a version" in caplog.text


def test_colabsession_drive_still_wins(
    kaggle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLABSESSION_DRIVE", str(tmp_path / "elsewhere"))
    assert cs.runtime().drive_root == tmp_path / "elsewhere"


def test_kaggle_session_limits(kaggle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "tpu_attached", lambda: False)
    assert cs.clock().max_session == 12 * 3600
    monkeypatch.setattr(probe, "tpu_attached", lambda: True)
    assert cs.clock().max_session == 9 * 3600
    assert cs.clock(max_session="2h").max_session == 2 * 3600
    monkeypatch.setenv("COLABSESSION_MAX_SESSION", "3h")
    assert cs.clock().max_session == 3 * 3600
