from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

import colabsession as cs
from colabsession._drive import mount as drive_module
from colabsession._runtime import runtime as _runtime

from . import isolation
from .fake_colab_drive import FakeColabDrive, MessageError, install
from .fake_drive_api import FakeDrive
from .sandbox import isolate
from .wheels import make_wheel


def pytest_configure(config: pytest.Config) -> None:
    """Tests marked ``tensorflow`` run in a process of their own: see tests/isolation.py."""
    isolation.configure(config)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs as 'local', with colabsession's home in a fresh temporary folder."""
    return isolate(tmp_path, monkeypatch)


@pytest.fixture
def mount_table(tmp_path: Path) -> Path:
    """The mount table colabsession reads; tests append lines to it."""
    return tmp_path / "mounts"


@pytest.fixture
def fake_colab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture
) -> types.SimpleNamespace:
    """Hosted Colab as colabsession sees it, with ``google.colab`` faked in ``sys.modules``: its
    ``drive`` follows colabtools' own control flow (see fake_colab_drive.py), spied with mocks,
    and the mount answers through ``colabsession.drive``'s stat."""
    hostname = tmp_path / "colab-hostname"
    hostname.write_text("colab-vm\n")
    monkeypatch.setattr(_runtime, "COLAB_HOSTNAME_FILE", hostname)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101-060000_RC00")
    vm = tmp_path / "vm"
    (vm / "content").mkdir(parents=True)
    fake = FakeColabDrive(vm, hostname, tmp_path / "mounts", tmp_path / "my-drive")
    monkeypatch.setattr(drive_module, "_stat", fake.stat)
    drive = install(fake, mocker)
    message = types.ModuleType("google.colab._message")
    message.MessageError = MessageError  # type: ignore[attr-defined]
    auth = types.ModuleType("google.colab.auth")
    auth.authenticate_user = mocker.Mock(name="auth.authenticate_user")  # type: ignore[attr-defined]
    colab = types.ModuleType("google.colab")
    colab.drive = drive  # type: ignore[attr-defined]
    colab.auth = auth  # type: ignore[attr-defined]
    google = sys.modules.get("google") or types.ModuleType("google")
    # Only these keys, restored one by one: patch.dict would restore the whole table and drop
    # the colabsession modules first imported during the test, which cs.* still refers to.
    for name, module in {
        "google": google,
        "google.colab": colab,
        "google.colab.drive": drive,
        "google.colab.auth": auth,
        "google.colab._message": message,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(
        module=colab, drive=drive, auth=auth, hostname=hostname, fake=fake, vm=vm
    )


@pytest.fixture
def fake_drive() -> Iterator[FakeDrive]:
    """A fake Drive API server on 127.0.0.1, fresh for each test."""
    server = FakeDrive().start()
    yield server
    server.stop()


@pytest.fixture
def drive_api(fake_drive: FakeDrive) -> Any:
    """The Drive API file system of a user signed in to the fake server, not used for
    ``drive:`` paths (tests build their Locations on it); skipped without pydrive2."""
    pytest.importorskip("pydrive2.fs")
    return fake_drive.connect(use_for_drive=False)


@pytest.fixture(scope="session")
def service_account_info() -> dict[str, str]:
    """A real RSA key in a service-account key's shape; its token_uri is set per test."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "abc123",
        "private_key": pem,
        "client_email": "trainer@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "http://127.0.0.1:9/token",
    }


@pytest.fixture
def key_file(tmp_path: Path, fake_drive: FakeDrive, service_account_info: dict[str, str]) -> Path:
    """A service-account key file whose token endpoint is the fake Drive server."""
    path = tmp_path / "key.json"
    path.write_text(
        json.dumps({**service_account_info, "token_uri": fake_drive.endpoint + "token"})
    )
    path.chmod(0o600)
    return path


# Persistent environments --------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "cs-demo-a", "1.0", requires=("cs-demo-b>=1.0",), script="cs-demo-a")
    make_wheel(folder, "cs-demo-b", "1.0")
    make_wheel(folder, "cs-demo-b", "2.0")
    make_wheel(folder, "cs-demo-c", "1.0")
    return folder


@pytest.fixture
def roundtrip(tmp_path: Path) -> Callable[..., Any]:
    """``roundtrip(state, **restore)``: save *state* as step 1 of the run ``tmp_path/run``, and
    return what ``restore(**restore)`` gives back."""

    def run(state: Any, **restore: Any) -> Any:
        with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
            ckpt.save(1, state)
        restored = cs.Checkpointer(tmp_path / "run").restore(**restore)
        assert restored is not None
        return restored.state

    return run


@pytest.fixture
def pip_args(wheels: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheels)]


@pytest.fixture
def clean_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Environments change sys.path, PATH and PYTHONPATH: put them back after each test.

    The variables are put back through monkeypatch, whose undo runs last in, first out: the
    autouse ``isolated`` fixture sets monkeypatch up before this fixture, so a teardown of its
    own here would run first, and the undo of a test's ``monkeypatch.setenv("PYTHONPATH", ...)``
    would then bring back the layer's path that was there when the test set it."""
    path = list(sys.path)
    for var in ("PATH", "PYTHONPATH"):
        was = os.environ.get(var)
        monkeypatch.setenv(var, was or "")  # recorded first, so undone last
        if was is None:
            monkeypatch.delenv(var)
    yield
    sys.path[:] = path
    for module in [m for m in sys.modules if m.startswith("cs_demo_")]:
        del sys.modules[module]
