from __future__ import annotations

import subprocess
import sys

import pytest

import colabsession as cs

HEAVY = ("tensorflow", "keras", "jax", "torch", "numpy", "pydrive2", "googleapiclient", "psutil")


def test_all_is_sorted_and_resolves() -> None:
    assert cs.__all__ == sorted(cs.__all__)
    for name in cs.__all__:
        assert getattr(cs, name) is not None, name
    assert set(cs.__all__) <= set(dir(cs))


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cs.nope  # noqa: B018


def test_errors_share_one_root() -> None:
    assert issubclass(cs.ConfigError, cs.ColabSessionError)
    assert issubclass(cs.ConfigError, ValueError)


def test_import_is_light() -> None:
    code = f"import sys, colabsession\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_py_typed_marker() -> None:
    from importlib.resources import files

    assert files("colabsession").joinpath("py.typed").is_file()
