"""A fake Google Drive API v2 server on 127.0.0.1, for tests: the subset pydrive2 and
googleapiclient use (files list with queries, insert with multipart and resumable uploads, get with
alt=media, update and patch, trash, delete), a token endpoint for service-account credentials, and
injected failures (500s, 403 rateLimitExceeded, ...)."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FOLDER = "application/vnd.google-apps.folder"


@dataclass
class Failure:
    status: int
    reason: str
    match: str = ""  # only requests whose "METHOD path" contains this fail


@dataclass
class DriveState:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    content: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=lambda: {"test-token"})
    failures: list[Failure] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))


class FakeDrive:
    """Start with ``FakeDrive().start()``; ``endpoint`` is the API root to point clients at."""

    def __init__(self) -> None:
        self.state = DriveState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FakeDrive:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(
        self, times: int, status: int = 500, reason: str = "backendError", match: str = ""
    ) -> None:
        """Answer the next *times* matching requests with an error."""
        with self.state.lock:
            self.state.failures.extend(Failure(status, reason, match) for _ in range(times))

    # Helpers for assertions --------------------------------------------------------------
    def find(self, title: str, trashed: bool = False) -> list[dict[str, Any]]:
        return [
            f
            for f in self.state.files.values()
            if f["title"] == title and f["labels"]["trashed"] == trashed
        ]

    def read(self, file_id: str) -> bytes:
        return self.state.content.get(file_id, b"")

    def count(self, needle: str) -> int:
        return sum(needle in r for r in self.state.requests)


class _Handler(BaseHTTPRequestHandler):
    state: DriveState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # Dispatch ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.state
        with state.lock:
            state.requests.append(f"{method} {url.path}?{url.query}")
            failure = next(
                (f for f in state.failures if f.match in f"{method} {url.path}?{url.query}"), None
            )
            if failure is not None and url.path != "/token":
                state.failures.remove(failure)
        if url.path == "/token":
            return self._token(body)
        if failure is not None:
            return self._error(failure.status, failure.reason, "injected failure")
        auth = self.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in state.tokens:
            return self._error(401, "authError", "Invalid Credentials")
        routes: list[tuple[str, str, Callable[..., None]]] = [
            ("GET", r"/drive/v2/files", self._list),
            ("GET", r"/drive/v2/about", self._about),
            ("GET", r"/drive/v2/files/([^/]+)", self._get),
            ("POST", r"/drive/v2/files", self._insert_metadata),
            ("POST", r"/upload/drive/v2/files", self._upload_start),
            ("PUT", r"/upload/drive/v2/files", self._upload_put),
            ("PUT", r"/upload/drive/v2/files/([^/]+)", self._upload_update),
            ("PUT", r"/drive/v2/files/([^/]+)", self._update_metadata),
            ("PATCH", r"/drive/v2/files/([^/]+)", self._update_metadata),
            ("POST", r"/drive/v2/files/([^/]+)/trash", self._trash),
            ("DELETE", r"/drive/v2/files/([^/]+)", self._delete),
        ]
        for verb, pattern, route in routes:
            match = re.fullmatch(pattern, url.path)
            if verb == method and match:
                with state.lock:
                    route(query, body, *match.groups())
                return
        self._error(404, "notFound", f"no route for {method} {url.path}")

    # Responses ---------------------------------------------------------------------------
    def _send(
        self,
        status: int,
        payload: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode())

    def _error(self, status: int, reason: str, message: str) -> None:
        errors = [{"domain": "global", "reason": reason, "message": message}]
        self._json({"error": {"errors": errors, "code": status, "message": message}}, status)

    # Token endpoint (service-account JWT grant) --------------------------------------------
    def _token(self, body: bytes) -> None:
        form = parse_qs(body.decode())
        if "assertion" not in form:
            return self._json({"error": "invalid_grant"}, 400)
        with self.state.lock:
            token = f"sa-token-{next(self.state.ids)}"
            self.state.tokens.add(token)
        self._json({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    # Files -------------------------------------------------------------------------------
    def _new(self, metadata: dict[str, Any], content: bytes | None) -> dict[str, Any]:
        file_id = f"id{next(self.state.ids):06d}"
        now = datetime.now(timezone.utc).isoformat()
        item = {
            "kind": "drive#file",
            "id": file_id,
            "title": metadata.get("title", "Untitled"),
            "mimeType": metadata.get("mimeType", "application/octet-stream"),
            "parents": [{"id": p["id"]} for p in metadata.get("parents") or [{"id": "root"}]],
            "labels": {"trashed": False},
            "createdDate": now,
            "modifiedDate": now,
        }
        self.state.files[file_id] = item
        if content is not None or item["mimeType"] != FOLDER:
            self._set_content(file_id, content or b"")
        return item

    def _set_content(self, file_id: str, content: bytes) -> None:
        self.state.content[file_id] = content
        item = self.state.files[file_id]
        item["fileSize"] = str(len(content))
        item["md5Checksum"] = hashlib.md5(content).hexdigest()
        item["modifiedDate"] = datetime.now(timezone.utc).isoformat()

    def _item_or_404(self, file_id: str) -> dict[str, Any] | None:
        item = self.state.files.get(file_id)
        if item is None:
            self._error(404, "notFound", f"File not found: {file_id}")
        return item

    def _list(self, query: dict[str, str], body: bytes) -> None:
        matches = [f for f in self.state.files.values() if _matches(query.get("q", ""), f)]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 100)
        page = matches[start : start + size]
        data: dict[str, Any] = {"kind": "drive#fileList", "items": page}
        if start + size < len(matches):
            data["nextPageToken"] = str(start + size)
        self._json(data)

    def _about(self, query: dict[str, str], body: bytes) -> None:
        self._json({"kind": "drive#about", "rootFolderId": "root", "name": "Test User"})

    def _get(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is None:
            return
        if query.get("alt") == "media":
            return self._send(200, self.state.content.get(file_id, b""), item["mimeType"])
        self._json(item)

    def _insert_metadata(self, query: dict[str, str], body: bytes) -> None:
        self._json(self._new(json.loads(body or b"{}"), None))

    def _upload_start(self, query: dict[str, str], body: bytes) -> None:
        kind = query.get("uploadType")
        if kind == "multipart":
            metadata, content = self._multipart(body)
            return self._json(self._new(metadata, content))
        if kind == "resumable":
            return self._start_resumable(body, None)
        if kind == "media":
            return self._json(self._new({}, body))
        self._error(400, "badRequest", f"unsupported uploadType {kind!r}")

    def _upload_update(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is None:
            return
        if query.get("uploadType") == "multipart":
            metadata, content = self._multipart(body)
            item.update({k: v for k, v in metadata.items() if k in ("title", "mimeType")})
            self._set_content(file_id, content)
            return self._json(item)
        if query.get("uploadType") == "resumable":
            return self._start_resumable(body, file_id)
        self._set_content(file_id, body)
        self._json(item)

    def _start_resumable(self, body: bytes, file_id: str | None) -> None:
        """Open an upload session (for a new file, or new content of *file_id*)."""
        upload_id = f"up{next(self.state.ids)}"
        metadata = json.loads(body or b"{}")
        self.state.uploads[upload_id] = {"metadata": metadata, "data": b"", "file_id": file_id}
        host = self.headers.get("Host", "127.0.0.1")
        location = f"http://{host}/upload/drive/v2/files?uploadType=resumable&upload_id={upload_id}"
        self._send(200, b"", headers={"Location": location})

    def _upload_put(self, query: dict[str, str], body: bytes) -> None:
        upload = self.state.uploads.get(query.get("upload_id", ""))
        if upload is None:
            return self._error(404, "notFound", "no such upload session")
        content_range = self.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range.strip())
        if body:
            upload["data"] += body
        total = match.group(3) if match else str(len(upload["data"]))
        if total != "*" and len(upload["data"]) >= int(total):
            self.state.uploads.pop(query["upload_id"])
            if upload["file_id"]:
                item = self.state.files[upload["file_id"]]
                item.update({k: v for k, v in upload["metadata"].items() if k in ("title",)})
                self._set_content(item["id"], upload["data"])
            else:
                item = self._new(upload["metadata"], upload["data"])
            return self._json(item)
        received = len(upload["data"])
        headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
        self._send(308, b"", headers=headers)

    def _multipart(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        parts: list[Any] = list(message.iter_parts())
        metadata: dict[str, Any] = json.loads(parts[0].get_payload(decode=True) or b"{}")
        content: bytes = parts[1].get_payload(decode=True) or b""
        return metadata, content

    def _update_metadata(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is None:
            return
        changes = json.loads(body or b"{}")
        for key in ("title", "mimeType", "parents"):
            if key in changes:
                item[key] = changes[key]
        if "labels" in changes:
            item["labels"].update(changes["labels"])
        for parent in (query.get("addParents") or "").split(","):
            if parent:
                item["parents"].append({"id": parent})
        removed = set((query.get("removeParents") or "").split(","))
        item["parents"] = [p for p in item["parents"] if p["id"] not in removed]
        item["modifiedDate"] = datetime.now(timezone.utc).isoformat()
        self._json(item)

    def _trash(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is not None:
            item["labels"]["trashed"] = True
            self._json(item)

    def _delete(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        if self._item_or_404(file_id) is not None:
            self.state.files.pop(file_id)
            self.state.content.pop(file_id, None)
            self._send(204)


# The query language, as far as pydrive2 uses it ------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)|'(?:\\.|[^'\\])*'|!=|=|[A-Za-z_]+)")


def _matches(query: str, item: dict[str, Any]) -> bool:
    tokens = _TOKEN.findall(query)
    if "".join(tokens).replace(" ", "") != query.replace(" ", ""):
        raise ValueError(f"cannot parse query {query!r}")
    if not tokens:
        return True
    pos = 0

    def take() -> str:
        nonlocal pos
        pos += 1
        return str(tokens[pos - 1]).strip()

    def peek() -> str | None:
        return tokens[pos].strip() if pos < len(tokens) else None

    def literal(token: str) -> str:
        return re.sub(r"\\(.)", r"\1", token[1:-1])

    def atom() -> bool:
        token = take()
        if token == "(":
            inner = or_expr()
            take()  # ")"
            return inner
        if token.startswith("'"):  # 'ID' in parents
            take()
            take()
            return any(p["id"] == literal(token) for p in item.get("parents", []))
        op, value = take(), take()
        actual = {
            "trashed": str(item["labels"]["trashed"]).lower(),
            "title": item["title"],
            "mimeType": item["mimeType"],
        }[token]
        wanted = literal(value) if value.startswith("'") else value
        return bool(actual == wanted) if op == "=" else bool(actual != wanted)

    def and_expr() -> bool:
        value = atom()
        while peek() == "and":
            take()
            value = atom() and value
        return value

    def or_expr() -> bool:
        value = and_expr()
        while peek() == "or":
            take()
            value = and_expr() or value
        return value

    return or_expr()
