"""A message to a webhook when a run finishes, fails or stops for the deadline, shaped for the
receiver its URL names: Slack, Discord, ntfy, or any service that takes JSON."""

from __future__ import annotations

import base64
import logging
import math
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from colabsession._core.units import format_duration

logger = logging.getLogger("colabsession")

ENV_WEBHOOK = "COLABSESSION_WEBHOOK"  # an environment variable or a notebook secret
TIMEOUT = (5.0, 10.0)  # seconds to connect, then to get the answer: a webhook never holds a run
DISCORD_LIMIT = 2000  # characters in a Discord message's content
Notify = str | bool | None
EVENTS = {
    "finished": "finished",
    "failed": "failed",
    "deadline": "saved and stopped before the session limit",
}


def webhook_url(notify: Notify) -> str | None:
    """The URL that *notify* stands for. Explicit beats implicit:

    - a string is the URL itself;
    - ``False`` sends nothing, whatever is configured;
    - ``True`` reads ``COLABSESSION_WEBHOOK`` from the environment, then from the notebook's
      secrets (Colab's or Kaggle's; Colab may ask once to grant access); none is a warning;
    - ``None`` (the default) reads the environment variable only, as no prompt may appear for
      a run that did not ask for notifications.
    """
    if isinstance(notify, str):
        return notify or None
    if notify is False:
        return None
    if notify is None:
        import os

        return os.environ.get(ENV_WEBHOOK) or None
    from colabsession._core.secrets import find_secret

    url = find_secret(ENV_WEBHOOK)
    if url is None:
        logger.warning(
            "colabsession: notify=True, but no %s is set (an environment variable or a "
            "notebook secret): no notification will be sent",
            ENV_WEBHOOK,
        )
    return url


def notify(url: Notify, event: str, **details: Any) -> None:
    """Send *event* (``"finished"``, ``"failed"``, ``"deadline"``) and its *details* (``run``,
    ``step``, ``epochs_done``, ``metrics``, ``error``, ``remaining`` seconds, ...) to the
    webhook *url* (a URL, or True/None as :func:`webhook_url` reads them), in the shape its
    service takes; failures are only logged, never raised: a broken webhook must not end a
    training run. The URL is never logged (it carries the webhook's secret).

    >>> notify("https://hooks.slack.com/services/T0/B0/XYZ", "finished",  # doctest: +SKIP
    ...        run="digits", epochs_done=12, metrics={"loss": 0.031})
    """
    target = webhook_url(url)
    if not target:
        return
    try:
        import requests

        host = socket.gethostname()
        text = message(event, host, details)
        fields = {"event": event, "host": host, "time": time.time(), **details}
        response = requests.post(target, timeout=TIMEOUT, **shape(target, event, text, fields))
        if response.status_code >= 400:
            logger.warning(
                "colabsession: the webhook at %s refused the notification: HTTP %d %s",
                _redact(target),
                response.status_code,
                _scrub(response.text[:200], target),
            )
    except Exception as exc:
        # requests' messages quote the URL (and so the secret in its path): name the kind only.
        logger.warning(
            "colabsession: the notification to %s failed (%s)",
            _redact(target),
            type(exc).__name__,
        )


def receiver(url: str) -> str:
    """Which service *url* reaches: ``"slack"``, ``"discord"``, ``"ntfy"`` or ``"json"``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "hooks.slack.com":
        return "slack"
    discord = host in ("discord.com", "discordapp.com") or host.endswith(
        (".discord.com", ".discordapp.com")
    )
    if discord and parts.path.startswith("/api/webhooks/"):
        return "discord"
    if host == "ntfy.sh" or host.startswith("ntfy."):  # ntfy.sh, or a self-hosted ntfy.example
        return "ntfy"
    return "json"


def shape(url: str, event: str, text: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``requests.post`` for *url*'s service: Slack's ``{"text"}``,
    Discord's ``{"content"}`` (at most 2000 characters, mentions off), ntfy's plain-text body
    with Title and Tags headers, or a JSON of *fields* plus ``text`` for any other service."""
    kind = receiver(url)
    if kind == "slack":
        return {"json": {"text": text}}
    if kind == "discord":
        content = text if len(text) <= DISCORD_LIMIT else text[: DISCORD_LIMIT - 1] + "…"
        # A run named "@everyone" must not ping a whole server.
        return {"json": {"content": content, "allowed_mentions": {"parse": []}}}
    if kind == "ntfy":
        title = f"colabsession: {event}"
        tags = {"finished": "white_check_mark", "failed": "x", "deadline": "hourglass"}
        headers = {"Title": _header(title), "Tags": tags.get(event, "bell")}
        if event == "failed":
            headers["Priority"] = "high"
        return {"data": text.encode("utf-8"), "headers": headers}
    return {"json": {**fields, "text": text}}


def message(event: str, host: str, details: Mapping[str, Any]) -> str:
    """One readable line: what happened to which run, where, and the figures that matter.

    >>> message("finished", "vm", {"run": "digits", "epochs_done": 12, "epochs": 12,
    ...                           "metrics": {"loss": 0.0312}})
    'colabsession: run digits finished on vm; epoch 12/12, loss 0.0312'
    """
    run = details.get("run")
    head = f"colabsession: run {run}" if run else "colabsession: a run"
    parts: list[str] = []
    if (done := details.get("epochs_done")) is not None:
        total = details.get("epochs")
        parts.append(f"epoch {done}/{total}" if total else f"epoch {done}")
    if (step := details.get("step")) is not None:
        parts.append(f"step {step}")
    metrics = details.get("metrics")
    figures = dict(metrics) if isinstance(metrics, Mapping) else {}
    for key in ("loss", "val_loss"):
        if key in details and key not in figures:
            figures[key] = details[key]
    parts.extend(f"{key} {_figure(value)}" for key, value in figures.items())
    remaining = details.get("remaining")
    if isinstance(remaining, int | float) and not isinstance(remaining, bool):
        parts.append(f"{format_duration(remaining)} left in the session")
    if error := details.get("error"):
        parts.append(f"error: {error}")
    line = f"{head} {EVENTS.get(event, event)} on {host}"
    return f"{line}; {', '.join(parts)}" if parts else line


def _figure(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def _header(text: str) -> str:
    """HTTP headers are Latin-1: other text goes as RFC 2047, which ntfy decodes."""
    if text.isascii():
        return text
    return f"=?UTF-8?B?{base64.b64encode(text.encode('utf-8')).decode('ascii')}?="


def _scrub(text: str, url: str) -> str:
    path = urlsplit(url).path
    text = text.replace(url, _redact(url))
    return text.replace(path, "/...") if len(path) > 1 else text


def _redact(url: str) -> str:
    """Webhook URLs carry their secret in the path: show the host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."
