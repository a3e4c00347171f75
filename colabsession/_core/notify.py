"""A JSON POST when a run finishes, fails or stops for the deadline (a webhook: Slack, ntfy...)."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

logger = logging.getLogger("colabsession")


def notify(url: str | None, event: str, **details: Any) -> None:
    """POST ``{"event": ..., "host": ..., "time": ..., **details}`` to *url*; failures are only
    logged, never raised: a broken webhook must not end a training run."""
    if not url:
        return
    import requests

    payload = {"event": event, "host": socket.gethostname(), "time": time.time(), **details}
    try:
        response = requests.post(url, json=payload, timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        logger.warning("colabsession: the notification to %s failed: %s", _redact(url), exc)


def _redact(url: str) -> str:
    """Webhook URLs carry their secret in the path: show the host only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."
