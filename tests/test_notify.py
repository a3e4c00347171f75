"""Webhook notifications, sent over HTTP to a local server that answers as Slack's incoming
webhooks, Discord's webhooks and ntfy do (their documented requirements and error answers)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from pytest_mock import MockerFixture

from colabsession._core import notify as notify_module
from colabsession._core.notify import message, notify, receiver, webhook_url

SLACK = "https://hooks.slack.com/services/T000/B000/slacksecret"
DISCORD = "https://discord.com/api/webhooks/123/discordsecret"
NTFY = "https://ntfy.sh/ntfysecret-topic"
GENERIC = "https://example.org/hook/genericsecret"


class Receivers(BaseHTTPRequestHandler):
    """Slack: 400 ``no_text`` without a non-empty ``text``; Discord: 400 JSON code 50006
    without ``content`` (or embeds), 400 past 2000 characters, else 204; ntfy: the body is the
    message, headers carry its title; anything else: 200."""

    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, dict(self.headers), body))
        if self.path.startswith("/services/"):
            try:
                payload = json.loads(body)
            except ValueError:
                return self.answer(400, b"invalid_payload", "text/plain")
            if not isinstance(payload, dict) or not payload.get("text"):
                return self.answer(400, b"no_text", "text/plain")
            return self.answer(200, b"ok", "text/plain")
        if self.path.startswith("/api/webhooks/"):
            payload = json.loads(body)
            content = payload.get("content")
            if not content and not payload.get("embeds"):
                error = {"message": "Cannot send an empty message", "code": 50006}
                return self.answer(400, json.dumps(error).encode(), "application/json")
            if len(content) > 2000:
                error = {"content": ["Must be 2000 or fewer in length."]}
                return self.answer(400, json.dumps(error).encode(), "application/json")
            return self.answer(204, b"", "application/json")
        if self.path == "/echo-path":  # an unkind service that quotes the request back
            return self.answer(500, f"error at {self.path}".encode(), "text/plain")
        return self.answer(200, b"{}", "application/json")

    def answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(mocker: MockerFixture) -> Iterator[list[tuple[str, dict[str, str], bytes]]]:
    """The receivers on 127.0.0.1; every webhook URL is sent there, with its own path."""
    received: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Handler", (Receivers,), {"received": received})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    local = f"http://127.0.0.1:{httpd.server_address[1]}"
    real_post = requests.post

    def post(url: str, **kwargs: Any) -> requests.Response:
        return real_post(local + urlsplit(url).path, **kwargs)

    mocker.patch("requests.post", side_effect=post)
    try:
        yield received
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_the_fake_slack_refuses_the_old_payload(
    server: list[tuple[str, dict[str, str], bytes]],
) -> None:
    # What colabsession sent before: Slack answers 400 no_text, Discord 50006.
    old = {"event": "finished", "host": "vm", "time": 0.0, "run": "digits"}
    slack = requests.post(SLACK, json=old, timeout=10)
    assert (slack.status_code, slack.text) == (400, "no_text")
    discord = requests.post(DISCORD, json=old, timeout=10)
    assert discord.status_code == 400
    assert discord.json()["code"] == 50006


def test_slack_gets_text(
    server: list[tuple[str, dict[str, str], bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    notify(SLACK, "finished", run="digits", epochs=12, epochs_done=12, metrics={"loss": 0.0312})
    path, _, body = server[-1]
    assert path == "/services/T000/B000/slacksecret"
    assert json.loads(body)["text"].startswith("colabsession: run digits finished on ")
    assert "refused" not in caplog.text
    assert "failed" not in caplog.text


def test_discord_gets_content_within_its_limit_and_no_mentions(
    server: list[tuple[str, dict[str, str], bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    notify(DISCORD, "failed", run="@everyone", error="RuntimeError: " + "x" * 3000)
    payload = json.loads(server[-1][2])
    assert len(payload["content"]) == 2000
    assert payload["content"].startswith("colabsession: run @everyone failed on ")
    assert payload["allowed_mentions"] == {"parse": []}
    assert "refused" not in caplog.text
    assert "failed (" not in caplog.text


def test_ntfy_gets_plain_text_and_a_title(
    server: list[tuple[str, dict[str, str], bytes]],
) -> None:
    notify(NTFY, "deadline", run="dïgits", step=4000, remaining=540.0)
    _, headers, body = server[-1]
    text = body.decode("utf-8")
    assert text.startswith("colabsession: run dïgits saved and stopped before the session limit")
    assert "step 4000" in text
    assert "9m left in the session" in text
    assert headers["Title"] == "colabsession: deadline"
    assert headers["Tags"] == "hourglass"
    assert receiver("https://ntfy.example.org/alerts") == "ntfy"  # self-hosted


def test_a_title_outside_latin1_is_rfc2047() -> None:
    shaped = notify_module.shape(NTFY, "ünïcode ✓", "text", {})
    title = shaped["headers"]["Title"]
    assert title.startswith("=?UTF-8?B?")
    assert base64.b64decode(title[10:-2]).decode() == "colabsession: ünïcode ✓"


def test_any_other_service_gets_the_fields_and_text(
    server: list[tuple[str, dict[str, str], bytes]],
) -> None:
    notify(GENERIC, "finished", run="digits", location="/x", epochs_done=3, metrics={"acc": 1})
    payload = json.loads(server[-1][2])
    assert payload["event"] == "finished"
    assert payload["run"] == "digits"
    assert payload["location"] == "/x"
    assert payload["metrics"] == {"acc": 1}
    assert {"host", "time"} <= payload.keys()
    assert payload["text"].endswith("epoch 3, acc 1")


def test_receivers_by_url() -> None:
    assert receiver(SLACK) == "slack"
    assert receiver("https://discordapp.com/api/webhooks/1/t") == "discord"
    assert receiver("https://ptb.discord.com/api/webhooks/1/t") == "discord"
    assert receiver("https://discord.com/channels/1") == "json"  # not a webhook
    assert receiver("https://hooks.slack.com.evil.example/services/x") == "json"
    assert receiver(GENERIC) == "json"


def test_a_refusal_is_logged_without_the_secret(
    server: list[tuple[str, dict[str, str], bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    notify("https://example.org/echo-path", "finished", run="x")
    assert "HTTP 500" in caplog.text
    assert "echo-path" not in caplog.text


def test_a_failure_is_logged_without_the_secret(
    mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    # requests quotes the whole URL in its messages: none of it may reach the log.
    error = requests.ConnectionError(f"Max retries exceeded with url: {SLACK}")
    mocker.patch("requests.post", side_effect=error)
    notify(SLACK, "finished", run="x")
    assert "ConnectionError" in caplog.text
    assert "slacksecret" not in caplog.text
    post = mocker.patch("requests.post", side_effect=TypeError("anything at all"))
    notify(SLACK, "finished", run="x")  # never raised
    assert post.call_args.kwargs["timeout"] == notify_module.TIMEOUT


def test_message_reads_as_a_sentence() -> None:
    assert message("failed", "vm", {"error": "OSError: disk full"}) == (
        "colabsession: a run failed on vm; error: OSError: disk full"
    )
    line = message("finished", "vm", {"run": "r", "step": 10, "loss": 0.123456789})
    assert line == "colabsession: run r finished on vm; step 10, loss 0.1235"


def test_where_the_url_comes_from(
    monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    find = mocker.patch("colabsession._core.secrets.find_secret", return_value=None)
    assert webhook_url(None) is None
    assert webhook_url(True) is None
    assert "no COLABSESSION_WEBHOOK" in caplog.text
    find.assert_called_once_with("COLABSESSION_WEBHOOK")
    monkeypatch.setenv("COLABSESSION_WEBHOOK", SLACK)
    assert webhook_url(None) == SLACK  # the environment, never a prompting store
    assert webhook_url(False) is None  # explicit beats implicit
    assert webhook_url(GENERIC) == GENERIC
    find.return_value = DISCORD
    monkeypatch.delenv("COLABSESSION_WEBHOOK")
    assert webhook_url(True) == DISCORD
    assert find.call_count == 2


def test_notify_false_sends_nothing(monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture) -> None:
    monkeypatch.setenv("COLABSESSION_WEBHOOK", SLACK)
    post = mocker.patch("requests.post")
    notify(False, "finished", run="x")
    post.assert_not_called()
