"""Tokens from the notebook's secret store: the environment, Colab's ``userdata``, Kaggle's
``UserSecretsClient``. Values are never logged, printed or put in an error message."""

from __future__ import annotations

import logging
import os

from colabsession._core.errors import ConfigError
from colabsession._core.timeout import call_with_timeout
from colabsession._core.units import Duration, format_duration, parse_duration

logger = logging.getLogger("colabsession")

# Colab's userdata.get waits, without a timeout of its own, for the user to answer the "grant
# access" prompt; Kaggle's client gives up after 40 s. A minute covers a person clicking.
DEFAULT_TIMEOUT = "60s"


def secret(name: str, *, timeout: Duration = DEFAULT_TIMEOUT) -> str:
    """The secret *name*, from the first store that has it: the environment variable *name*,
    then Colab's secrets (the key icon in the left panel; Colab asks once whether this notebook
    may read it), then Kaggle's (Add-ons > Secrets, attached to the notebook).

    A store that does not answer within *timeout* (a prompt left unanswered) is passed over.
    Raises :class:`ConfigError` (its ``name`` is *name*) when no store has it; the value itself
    is never logged or shown.

    >>> import colabsession as cs
    >>> token = cs.secret("HF_TOKEN")  # doctest: +SKIP
    """
    value = find_secret(name, timeout=timeout)
    if value is None:
        raise ConfigError(
            f"no secret named {name!r}: set the environment variable {name}, or add it to the "
            "notebook's secrets (Colab: the key icon in the left panel, then allow this "
            "notebook access; Kaggle: Add-ons > Secrets, and tick it for this notebook)",
            name=name,
        )
    return value


def find_secret(name: str, *, timeout: Duration = DEFAULT_TIMEOUT) -> str | None:
    """:func:`secret`, or None where no store has *name* (each miss is logged, without values)."""
    if not name:
        raise ConfigError("a secret's name must not be empty", name="name")
    if value := os.environ.get(name):
        return value
    seconds = parse_duration(timeout, name="timeout")
    # Each store's module exists only where it works (Colab's image, Kaggle's image); a store
    # that is not there is passed over without a word.
    return _colab(name, seconds) or _kaggle(name, seconds)


def _colab(name: str, timeout: float) -> str | None:
    try:
        from google.colab import userdata
    except ImportError:
        return None
    try:
        value = call_with_timeout(lambda: userdata.get(name), timeout, what="Colab secret")
    except userdata.SecretNotFoundError:
        return None
    except userdata.NotebookAccessError:
        logger.warning(
            "colabsession: this notebook may not read the Colab secret %r: open the key icon "
            "in the left panel and switch on its notebook access",
            name,
        )
        return None
    except TimeoutError:
        logger.warning(
            "colabsession: Colab's secret %r was not granted within %s (the access prompt was "
            "not answered); going on without it",
            name,
            format_duration(timeout),
        )
        return None
    except Exception as exc:  # the message channel to the browser can fail in many ways
        logger.warning("colabsession: reading Colab's secret %r failed (%s)", name, _kind(exc))
        return None
    return value if isinstance(value, str) and value else None


def _kaggle(name: str, timeout: float) -> str | None:
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]
    except ImportError:
        return None

    def get() -> object:
        return UserSecretsClient().get_secret(name)

    try:
        value = call_with_timeout(get, timeout, what="Kaggle secret")
    except TimeoutError:
        logger.warning(
            "colabsession: Kaggle's secrets did not answer within %s for %r (is the "
            "notebook's internet on?)",
            format_duration(timeout),
            name,
        )
        return None
    except Exception as exc:
        # An unattached secret is a BackendError whose text holds the service's answer: name
        # only its kind, so that no part of an answer reaches the log.
        logger.info(
            "colabsession: no Kaggle secret %r attached to this notebook (%s)", name, _kind(exc)
        )
        return None
    return value if isinstance(value, str) and value else None


def _kind(exc: BaseException) -> str:
    return type(exc).__name__
