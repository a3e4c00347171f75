"""Errors carry data as well as a message, and they pickle."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import pytest

import colabsession as cs
from colabsession._core import errors
from colabsession._core.optional import require
from colabsession._drive.api import quota_error
from colabsession._drive.mount import _mount_error

CLASSES = [
    c
    for c in vars(errors).values()
    if inspect.isclass(c) and issubclass(c, errors.ColabSessionError)
]


def _attributes(exc: BaseException) -> dict[str, object]:
    names = set(vars(exc)) | {"name", "path"}
    return {n: getattr(exc, n) for n in sorted(names) if hasattr(exc, n)}


def _keywords(cls: type) -> dict[str, object]:
    """A value for every keyword attribute the class takes."""
    if "__init__" not in {
        k for c in cls.__mro__ if c.__module__ == errors.__name__ for k in vars(c)
    }:
        return {}
    params = inspect.signature(cls).parameters.values()
    sample: dict[str, object] = {
        "status": 403,
        "timeout": 12.5,
        "runs": ("a", "b"),
    }
    return {
        p.name: sample.get(p.name, f"{p.name}-value")
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_every_error_class_is_public() -> None:
    assert {c.__name__ for c in CLASSES} <= set(cs.__all__)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_attributes(cls: type[cs.ColabSessionError]) -> None:
    plain = cls("what happened; what to do")
    again = pickle.loads(pickle.dumps(plain))
    assert type(again) is cls
    assert str(again) == str(plain)
    assert _attributes(again) == _attributes(plain)
    keywords = _keywords(cls)
    full = cls("what happened; what to do", **keywords)
    again = pickle.loads(pickle.dumps(full))
    assert str(again) == str(full)
    assert _attributes(again) == _attributes(full)
    for name, value in keywords.items():
        assert getattr(again, name) == value


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_keyword_attributes_default_to_none(cls: type[cs.ColabSessionError]) -> None:
    exc = cls("message")
    for name in _keywords(cls):
        assert getattr(exc, name) is None, name
    assert exc.args == ("message",)


def test_missing_dependency_names_the_package_and_extra() -> None:
    with pytest.raises(cs.MissingDependencyError) as info:
        require("no_such_module_xyz", extra="plot", purpose="a test", package="no-such-pkg")
    assert (info.value.package, info.value.extra) == ("no-such-pkg", "plot")
    assert info.value.name == "no_such_module_xyz"


def test_quota_errors_name_the_quota() -> None:
    full = quota_error(403, "storageQuotaExceeded", "The user's Drive storage quota", None)
    assert isinstance(full, cs.DriveQuotaError)
    assert (full.status, full.reason) == (403, "storageQuotaExceeded")
    account = quota_error(403, "storageQuotaExceeded", "", "bot@x.iam.gserviceaccount.com")
    assert isinstance(account, cs.DriveQuotaError)
    assert account.reason == "storageQuotaExceeded"


def test_mount_errors_name_the_mountpoint() -> None:
    point = Path("/content/my drive")
    error = _mount_error(ValueError("Mountpoint must not contain a space."), point, 120.0)
    assert error.path == str(point)
    slow = _mount_error(ValueError("mount failed: timeout during initial read"), point, 120.0)
    assert isinstance(slow, cs.MountTimeoutError)
    assert (slow.path, slow.timeout) == (str(point), 120.0)
