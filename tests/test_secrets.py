"""cs.secret: the environment, then Colab's and Kaggle's secret stores, faked after their real
modules (colabtools' google/colab/userdata.py, Kaggle's docker-python patches/kaggle_secrets.py)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

import colabsession as cs
from colabsession._core.notify import notify as cs_notify
from colabsession._core.secrets import find_secret

VALUE = "s3cr3t-value-never-shown"


class ColabStore:
    """google.colab.userdata as colabtools writes it: ``get(key)`` asks the browser (blocking,
    with no timeout, while the user answers the access prompt), then raises
    ``SecretNotFoundError`` or ``NotebookAccessError`` or returns the payload."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.granted: set[str] = set()
        self.prompt = threading.Event()
        self.prompt.set()  # answered at once unless a test holds it

        class NotebookAccessError(Exception):
            def __init__(self, key: str) -> None:
                super().__init__(f"Notebook does not have access to secret {key}")

        class SecretNotFoundError(Exception):
            def __init__(self, key: str) -> None:
                super().__init__(f"Secret {key} does not exist.")

        module = types.ModuleType("google.colab.userdata")
        module.NotebookAccessError = NotebookAccessError  # type: ignore[attr-defined]
        module.SecretNotFoundError = SecretNotFoundError  # type: ignore[attr-defined]
        module.get = self.get  # type: ignore[attr-defined]
        self.module = module

    def get(self, key: str) -> str:
        self.prompt.wait()
        if key not in self.secrets:
            raise self.module.SecretNotFoundError(key)
        if key not in self.granted:
            raise self.module.NotebookAccessError(key)
        return self.secrets[key]


class KaggleStore:
    """kaggle_secrets as Kaggle's image ships it: the client needs ``KAGGLE_USER_SECRETS_TOKEN``
    (``CredentialError``), and a label not attached to the notebook is a ``BackendError``
    quoting the service's answer."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        store = self

        class CredentialError(Exception):
            pass

        class BackendError(Exception):
            pass

        class ValidationError(Exception):
            pass

        class UserSecretsClient:
            def __init__(self) -> None:
                if os.environ.get("KAGGLE_USER_SECRETS_TOKEN") is None:
                    raise CredentialError("A JWT Token is required to use the UserSecretsClient")

            def get_secret(self, label: str) -> str:
                if not label:
                    raise ValidationError("Label must be non-empty.")
                if label not in store.secrets:
                    raise BackendError(
                        "Unexpected response from the service. Response: {'wasSuccessful': False}"
                    )
                return store.secrets[label]

        module = types.ModuleType("kaggle_secrets")
        module.UserSecretsClient = UserSecretsClient  # type: ignore[attr-defined]
        module.CredentialError = CredentialError  # type: ignore[attr-defined]
        module.BackendError = BackendError  # type: ignore[attr-defined]
        module.ValidationError = ValidationError  # type: ignore[attr-defined]
        self.module = module


@pytest.fixture
def colab_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ColabStore]:
    store = ColabStore()
    colab = types.ModuleType("google.colab")
    colab.userdata = store.module  # type: ignore[attr-defined]
    google = sys.modules.get("google") or types.ModuleType("google")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", store.module)
    yield store
    store.prompt.set()  # release a get() a test left waiting


@pytest.fixture
def kaggle_store(monkeypatch: pytest.MonkeyPatch) -> KaggleStore:
    store = KaggleStore()
    monkeypatch.setitem(sys.modules, "kaggle_secrets", store.module)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "jwt")
    return store


def test_the_environment_comes_first(
    monkeypatch: pytest.MonkeyPatch, colab_store: ColabStore
) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-env")
    colab_store.secrets["HF_TOKEN"] = VALUE
    colab_store.granted.add("HF_TOKEN")
    assert cs.secret("HF_TOKEN") == "from-env"


def test_colab_secret(colab_store: ColabStore) -> None:
    colab_store.secrets["HF_TOKEN"] = VALUE
    colab_store.granted.add("HF_TOKEN")
    assert cs.secret("HF_TOKEN") == VALUE


def test_colab_secret_without_access_says_how_to_grant_it(
    colab_store: ColabStore, caplog: pytest.LogCaptureFixture
) -> None:
    colab_store.secrets["HF_TOKEN"] = VALUE
    with pytest.raises(cs.ConfigError, match="no secret named 'HF_TOKEN'") as caught:
        cs.secret("HF_TOKEN")
    assert caught.value.name == "HF_TOKEN"
    assert "switch on its notebook access" in caplog.text
    assert VALUE not in caplog.text
    assert VALUE not in str(caught.value)


def test_an_unanswered_prompt_is_bounded(
    colab_store: ColabStore, caplog: pytest.LogCaptureFixture
) -> None:
    colab_store.secrets["HF_TOKEN"] = VALUE
    colab_store.granted.add("HF_TOKEN")
    colab_store.prompt.clear()  # the user never answers
    assert find_secret("HF_TOKEN", timeout=0.05) is None
    assert "was not granted within" in caplog.text


def test_missing_everywhere(colab_store: ColabStore) -> None:
    assert find_secret("NOPE") is None
    with pytest.raises(cs.ConfigError, match="Add-ons > Secrets"):
        cs.secret("NOPE")
    with pytest.raises(cs.ConfigError):
        cs.secret("")


def test_kaggle_secret(kaggle_store: KaggleStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "colabsession")
    kaggle_store.secrets["WANDB_API_KEY"] = VALUE
    assert cs.secret("WANDB_API_KEY") == VALUE
    assert find_secret("NOT_ATTACHED") is None
    assert "BackendError" in caplog.text
    assert "wasSuccessful" not in caplog.text  # the service's answer is not repeated


def test_kaggle_without_its_token(
    kaggle_store: KaggleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kaggle_store.secrets["WANDB_API_KEY"] = VALUE
    monkeypatch.delenv("KAGGLE_USER_SECRETS_TOKEN")
    assert find_secret("WANDB_API_KEY") is None


def test_the_webhook_comes_from_the_secret_store(
    kaggle_store: KaggleStore, mocker: MockerFixture
) -> None:
    kaggle_store.secrets["COLABSESSION_WEBHOOK"] = "https://hooks.slack.com/services/T/B/x"
    post = mocker.patch("requests.post")
    post.return_value.status_code = 200
    cs_notify(None, "finished", run="r")  # None reads the environment only
    post.assert_not_called()
    cs_notify(True, "finished", run="r")
    assert post.call_args.args[0] == "https://hooks.slack.com/services/T/B/x"
    assert "text" in post.call_args.kwargs["json"]


def test_the_service_account_comes_from_the_secret_store(
    kaggle_store: KaggleStore, mocker: MockerFixture, tmp_path: Path
) -> None:
    from colabsession._drive import api

    kaggle_store.secrets[api.ENV_SERVICE_ACCOUNT] = '{"type": "service_account"}'
    mocker.patch.object(api, "require")
    made = mocker.patch.object(api, "_service_account_credentials", return_value="credentials")
    assert api.load_credentials() == "credentials"
    made.assert_called_once_with('{"type": "service_account"}')
