"""A fake Google Drive API v2 server on 127.0.0.1, for tests: the subset pydrive2 and
googleapiclient use (files list with queries, insert with multipart and resumable uploads, get with
alt=media and Range, update and patch, trash, delete, ``fields``), a token endpoint for
service-account credentials, and a switch for each real behaviour that a kinder fake would hide.

Always on, as on real Drive (https://developers.google.com/workspace/drive/api/reference/rest/v2):
- ``root`` is an alias: items report the root's real id in ``parents``;
- children of a trashed folder count as trashed;
- service accounts have no storage quota: their uploads answer ``403 storageQuotaExceeded``
  outside a shared drive (folders, which hold no bytes, may still be created);
- a folder that is not shared with a service account is ``404 notFound`` to it;
- Google Docs have no ``md5Checksum``, no ``fileSize`` and no content (``403 fileNotDownloadable``);
- downloads honour ``Range``; files have a ``downloadUrl``; ``fields`` trims answers;
- a resumable upload session answers 404 once expired, and may persist fewer bytes than a chunk
  sent (the client resends from the ``Range`` it is told).

Switches (attributes of :class:`FakeDrive`), off by default:
- ``lag``: ``files.list`` is eventually consistent: a change is seen only after this many more
  listings (a new title is missing, a renamed one keeps its old title, a trashed one stays);
- ``doubles``: while a change is not yet seen, a new file is listed twice instead of missing;
- ``fail_after_create(n, status)``: the next *n* uploads create the file, then answer an error;
- ``upload_cap``: bytes a user may upload per day (Drive's 750 GB); past it every upload
  answers ``403 userRateLimitExceeded`` "User rate limit exceeded." (the wording rclone keys on);
- ``rate_limit(n)``: the next *n* requests answer 403 userRateLimitExceeded with the per-minute
  quota's wording; ``fail(n, 429, ...)`` the documented 429;
- ``chunk_limit``: bytes a resumable PUT persists at most; ``expire_uploads(n)``: the next *n*
  upload sessions expire after their first chunk;
- ``quota``: the bytes the user may store (Drive's free 15 GB: ``15 * 10**9``; None, unlimited).
  Every byte of the user's files counts (``quotaBytesUsed`` in ``about``), the trashed ones too
  (``quotaBytesUsedInTrash``) until purged: by ``files.delete`` (a folder with everything in
  it) or by emptying the trash (``DELETE files/trash``, or :meth:`FakeDrive.empty_trash`). An
  upload past it answers ``403 storageQuotaExceeded`` "The user's Drive storage quota has been
  exceeded."; files in shared drives count against no user's quota, and old revisions are not
  kept (nothing here updates a file's content in place);
- ``trash_only``: the caller may trash but not delete for good (a shared drive's Content
  manager): ``files.delete`` answers ``403 insufficientFilePermissions``.

Files keep the ``properties`` set at upload or by ``patch`` (``key``, ``value``,
``visibility``: ``PRIVATE`` unless told ``PUBLIC``, as in v2); every caller here is one app, so
private ones are seen by all.
"""

from __future__ import annotations

import copy
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
DOCUMENT = "application/vnd.google-apps.document"
ROOT_ID = "0AFakeRootFolderId"
SERVICE_ROOT_ID = "0AServiceAccountsOwnRoot"  # "root" to a service account: its own My Drive
USER_TOKEN = "test-token"
DAILY_CAP_MESSAGE = "User rate limit exceeded."
RATE_MESSAGE = (
    "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota."
)
STORAGE_MESSAGE = "The user's Drive storage quota has been exceeded."
DELETE_FORBIDDEN_MESSAGE = "The user does not have sufficient permissions for this file."
SA_QUOTA_MESSAGE = (
    "Service Accounts do not have storage quota. Leverage shared drives "
    "(https://developers.google.com/workspace/drive/api/guides/about-shareddrives), or use "
    "OAuth delegation (http://support.google.com/a/answer/7281227) instead."
)


@dataclass
class Failure:
    status: int
    reason: str
    match: str = ""  # only requests whose "METHOD path" contains this fail
    message: str = "injected failure"
    after_create: bool = False  # the upload goes through, then the error is answered


@dataclass
class DriveState:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    content: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=lambda: {USER_TOKEN})
    service_tokens: set[str] = field(default_factory=set)  # issued to service accounts
    shared_with_service: set[str] = field(default_factory=set)  # folder ids shared with them
    failures: list[Failure] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    served: int = 0  # bytes of file content sent in downloads
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Switches (see the module's docstring)
    lag: int = 0
    doubles: bool = False
    upload_cap: int | None = None
    uploaded: int = 0
    chunk_limit: int | None = None
    expiring: int = 0
    quota: int | None = None
    trash_only: bool = False
    # Eventual consistency: id -> (the listing from which the change is seen, the old view)
    listings: int = 0
    unseen: dict[str, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    # Called, with the lock held, before each request: a linked fake mount brings what its
    # cache uploaded (see fake_colab_drive.FakeColabDrive.link).
    before: Callable[[], None] | None = None


class _Switch:
    """A switch of :class:`FakeDrive`, kept in its state, which the server's handlers read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, fake: FakeDrive, owner: type | None = None) -> Any:
        return getattr(fake.state, self.name)

    def __set__(self, fake: FakeDrive, value: Any) -> None:
        with fake.state.lock:
            setattr(fake.state, self.name, value)


class FakeDrive:
    """Start with ``FakeDrive().start()``; ``endpoint`` is the API root to point clients at."""

    def __init__(self) -> None:
        self.state = DriveState()
        now = _now()
        self.state.files[ROOT_ID] = {
            "kind": "drive#file",
            "id": ROOT_ID,
            "title": "My Drive",
            "mimeType": FOLDER,
            "parents": [],
            "labels": {"trashed": False},
            "createdDate": now,
            "modifiedDate": now,
        }
        self.state.files[SERVICE_ROOT_ID] = _item(SERVICE_ROOT_ID, "My Drive", FOLDER, [])
        self.state.shared_with_service.add(SERVICE_ROOT_ID)
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

    def connect(self, **options: Any) -> Any:
        """``cs.drive.connect(**options)`` to this server as a signed-in user: a new session.

        Example: ``fs = fake_drive.connect(use_for_drive=False)`` (conftest's ``drive_api``)."""
        import colabsession as cs

        return cs.drive.connect(
            credentials=user_credentials(), api_endpoint=self.endpoint, **options
        )

    # Switches (see the module's docstring) -----------------------------------------------
    lag = _Switch()
    doubles = _Switch()
    upload_cap = _Switch()
    chunk_limit = _Switch()
    quota = _Switch()
    trash_only = _Switch()

    def fail(
        self,
        times: int,
        status: int = 500,
        reason: str = "backendError",
        match: str = "",
        message: str = "injected failure",
    ) -> None:
        """Answer the next *times* matching requests with an error."""
        with self.state.lock:
            self.state.failures.extend(
                Failure(status, reason, match, message) for _ in range(times)
            )

    def rate_limit(self, times: int, match: str = "") -> None:
        """The per-minute quota: 403 userRateLimitExceeded, to be retried with backoff."""
        self.fail(times, 403, "userRateLimitExceeded", match, RATE_MESSAGE)

    def fail_after_create(self, times: int, status: int = 500) -> None:
        """The next *times* uploads create their file, then answer *status* all the same."""
        with self.state.lock:
            self.state.failures.extend(
                Failure(status, "backendError", "/upload/", after_create=True) for _ in range(times)
            )

    def expire_uploads(self, times: int) -> None:
        """The next *times* resumable upload sessions expire after their first chunk."""
        with self.state.lock:
            self.state.expiring += times

    # Content set up by a test ----------------------------------------------------------------
    def shared_drive(self, name: str = "Team") -> str:
        """A shared drive's root folder, of which service accounts are members; its id."""
        with self.state.lock:
            drive_id = f"0ASharedDrive{next(self.state.ids)}"
            self.state.files[drive_id] = _item(drive_id, name, FOLDER, [], drive_id=drive_id)
            self.state.shared_with_service.add(drive_id)
        return drive_id

    def folder(self, title: str, parent: str = ROOT_ID, *, share: bool = False) -> str:
        """A folder in the user's My Drive (shared with service accounts if *share*); its id."""
        with self.state.lock:
            folder_id = f"id{next(self.state.ids):06d}"
            self.state.files[folder_id] = _item(folder_id, title, FOLDER, [parent])
            if share:
                self.state.shared_with_service.add(folder_id)
        return folder_id

    def doc(self, title: str, parent: str = ROOT_ID) -> str:
        """A Google Doc: no size, no md5, no content to download."""
        with self.state.lock:
            doc_id = f"id{next(self.state.ids):06d}"
            self.state.files[doc_id] = _item(doc_id, title, DOCUMENT, [parent])
        return doc_id

    # Helpers for assertions --------------------------------------------------------------
    def find(self, title: str, trashed: bool = False) -> list[dict[str, Any]]:
        return [
            f
            for f in self.state.files.values()
            if f["title"] == title and _trashed(self.state, f) == trashed
        ]

    def read(self, file_id: str) -> bytes:
        return self.state.content.get(file_id, b"")

    def file(
        self,
        title: str,
        content: bytes,
        parent: str = ROOT_ID,
        properties: list[dict[str, str]] | None = None,
    ) -> str:
        """A file that the user put there (no properties unless given); its id."""
        with self.state.lock:
            file_id = f"id{next(self.state.ids):06d}"
            self.state.files[file_id] = _item(file_id, title, "application/octet-stream", [parent])
            if properties is not None:
                self.state.files[file_id]["properties"] = _properties(properties, [])
            _set_content(self.state, file_id, content)
        return file_id

    def used(self) -> tuple[int, int]:
        """The bytes that count against the user's quota: (all, of them in the trash)."""
        with self.state.lock:
            return _used(self.state)

    def empty_trash(self) -> None:
        """Purge every trashed file, as the user's "Empty trash" does."""
        with self.state.lock:
            _empty_trash(self.state)

    def count(self, needle: str) -> int:
        return sum(needle in r for r in self.state.requests)


def user_credentials(token: str = USER_TOKEN) -> Any:
    """A user's google-auth credentials holding *token* (the server knows ``USER_TOKEN`` only and
    answers 401 to any other). google-auth is imported on call: conftest imports this module.

    Example: ``cs.drive.connect(credentials=user_credentials(), api_endpoint=fake.endpoint)``."""
    from google.oauth2 import credentials

    return credentials.Credentials(token=token)  # type: ignore[no-untyped-call]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _item(
    file_id: str, title: str, mime: str, parents: list[str], drive_id: str | None = None
) -> dict[str, Any]:
    now = _now()
    item: dict[str, Any] = {
        "kind": "drive#file",
        "id": file_id,
        "title": title,
        "mimeType": mime,
        "parents": [{"id": p, "isRoot": p == ROOT_ID} for p in parents],
        "labels": {"trashed": False},
        "createdDate": now,
        "modifiedDate": now,
    }
    if drive_id:
        item["driveId"] = drive_id
    return item


def _trashed(state: DriveState, item: dict[str, Any]) -> bool:
    """Trashed itself, or under a trashed folder (as Drive counts it)."""
    return bool(item["labels"]["trashed"]) or any(
        state.files[a]["labels"]["trashed"] for a in _ancestors(state, item) if a in state.files
    )


def _ancestors(state: DriveState, item: dict[str, Any]) -> Iterator[str]:
    todo, seen = [p["id"] for p in item.get("parents", [])], set()
    while todo:
        parent_id = todo.pop()
        if parent_id in seen:
            continue
        seen.add(parent_id)
        yield parent_id
        parent = state.files.get(parent_id)
        if parent is not None:
            todo.extend(p["id"] for p in parent.get("parents", []))


def _drive_of(state: DriveState, item: dict[str, Any]) -> str | None:
    if item.get("driveId"):
        return str(item["driveId"])
    for parent_id in _ancestors(state, item):
        parent = state.files.get(parent_id)
        if parent is not None and parent.get("driveId"):
            return str(parent["driveId"])
    return None


def _set_content(state: DriveState, file_id: str, content: bytes) -> None:
    state.content[file_id] = content
    item = state.files[file_id]
    item["fileSize"] = str(len(content))
    item["md5Checksum"] = hashlib.md5(content).hexdigest()
    item["modifiedDate"] = _now()


def _used(state: DriveState) -> tuple[int, int]:
    """Bytes of the user's files outside shared drives: (all, of them trashed)."""
    used = trashed = 0
    for file_id, content in state.content.items():
        item = state.files.get(file_id)
        if item is None or _drive_of(state, item):
            continue
        used += len(content)
        if _trashed(state, item):
            trashed += len(content)
    return used, trashed


def _purge(state: DriveState, file_id: str) -> None:
    """Delete *file_id* for good, and everything in it if it is a folder (as Drive does)."""
    doomed = {file_id} | {
        f["id"] for f in state.files.values() if file_id in set(_ancestors(state, f))
    }
    for gone in doomed:
        state.files.pop(gone, None)
        state.content.pop(gone, None)


def _empty_trash(state: DriveState) -> None:
    for file_id in [i for i, f in state.files.items() if f["labels"]["trashed"]]:
        _purge(state, file_id)


def _properties(given: Any, old: list[dict[str, str]]) -> list[dict[str, str]]:
    """*old* updated with the properties *given* (v2: a list of key, value, visibility)."""
    if not isinstance(given, list):
        raise ValueError("properties must be a list")
    merged = {(p["key"], p["visibility"]): p for p in old}
    for prop in given:
        if not isinstance(prop, dict) or not isinstance(prop.get("key"), str):
            raise ValueError(f"bad property {prop!r}")
        visibility = prop.get("visibility", "PRIVATE")
        merged[(prop["key"], visibility)] = {
            "kind": "drive#property",
            "key": prop["key"],
            "value": str(prop.get("value", "")),
            "visibility": visibility,
        }
    return list(merged.values())


class _Handler(BaseHTTPRequestHandler):
    state: DriveState
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits for a delayed ACK (40 ms)

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
        self._fields = query.get("fields")
        request = f"{method} {url.path}?{url.query}"
        with state.lock:
            if state.before is not None and url.path != "/token":
                state.before()
            state.requests.append(request)
            failure = next(
                (f for f in state.failures if f.match in request and not f.after_create), None
            )
            if failure is not None and url.path != "/token":
                state.failures.remove(failure)
        if url.path == "/token":
            return self._token(body)
        if failure is not None:
            return self._error(failure.status, failure.reason, failure.message)
        auth = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if auth not in state.tokens:
            return self._error(401, "authError", "Invalid Credentials")
        self._service = auth in state.service_tokens
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
            ("DELETE", r"/drive/v2/files/trash", self._empty_trash),
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
        if status == 200 and self._fields and self._fields != "*":
            data = _trim(data, self._fields)
        self._send(status, json.dumps(data).encode())

    def _error(self, status: int, reason: str, message: str) -> None:
        domain = "usageLimits" if "RateLimit" in reason or status == 429 else "global"
        errors = [{"domain": domain, "reason": reason, "message": message}]
        payload = {"error": {"errors": errors, "code": status, "message": message}}
        self._send(status, json.dumps(payload).encode())

    def _created(self, item: dict[str, Any]) -> None:
        """Answer a finished upload (or the error that follows a creation)."""
        late = next((f for f in self.state.failures if f.after_create), None)
        if late is not None:
            self.state.failures.remove(late)
            return self._error(late.status, late.reason, late.message)
        self._json(self._view(item))

    def _view(self, item: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(item)
        out["labels"]["trashed"] = _trashed(self.state, item)
        if out["mimeType"] not in (FOLDER, DOCUMENT) and self.headers.get("Host"):
            out["downloadUrl"] = (
                f"http://{self.headers['Host']}/drive/v2/files/{item['id']}?alt=media"
            )
        return out

    # Token endpoint (service-account JWT grant) --------------------------------------------
    def _token(self, body: bytes) -> None:
        form = parse_qs(body.decode())
        if "assertion" not in form:
            return self._json({"error": "invalid_grant"}, 400)
        with self.state.lock:
            token = f"sa-token-{next(self.state.ids)}"
            self.state.tokens.add(token)
            self.state.service_tokens.add(token)
        self._json({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    # Who sees what -----------------------------------------------------------------------
    def _visible(self, item: dict[str, Any]) -> bool:
        """A service account sees what lies in a folder shared with it or in a shared drive."""
        if not self._service:
            return bool(item["id"] != SERVICE_ROOT_ID)
        shared = self.state.shared_with_service
        return item["id"] in shared or any(a in shared for a in _ancestors(self.state, item))

    def _resolve(self, file_id: str) -> str:
        if file_id != "root":
            return file_id
        return SERVICE_ROOT_ID if self._service else ROOT_ID

    def _item_or_404(self, file_id: str) -> dict[str, Any] | None:
        item = self.state.files.get(self._resolve(file_id))
        if item is None or not self._visible(item):
            self._error(404, "notFound", f"File not found: {file_id}.")
            return None
        return item

    # Eventual consistency --------------------------------------------------------------------
    def _changing(self, item: dict[str, Any] | None, file_id: str) -> None:
        """Remember how listings saw *file_id* before this change, while the lag lasts."""
        state = self.state
        if not state.lag:
            return
        old = state.unseen.get(file_id)
        if old is None or old[0] <= state.listings:
            before = copy.deepcopy(item) if item is not None else None
            state.unseen[file_id] = (state.listings + state.lag, before)
        else:
            state.unseen[file_id] = (state.listings + state.lag, old[1])

    def _listed(self) -> list[dict[str, Any]]:
        """Every item as the next listing sees it (stale where a change is not yet seen)."""
        state = self.state
        state.listings += 1
        if not state.lag:  # consistent again: every change is seen
            state.unseen.clear()
        seen: list[dict[str, Any]] = []
        ids = list(state.files) + [i for i in state.unseen if i not in state.files]
        for file_id in ids:
            pending = state.unseen.get(file_id)
            current = state.files.get(file_id)
            if pending is not None and state.listings <= pending[0]:
                old = pending[1]
                if old is not None:
                    seen.append(old)
                elif state.doubles and current is not None:
                    seen.extend([current, current])  # a new title listed twice
                continue
            if pending is not None:
                state.unseen.pop(file_id)
            if current is not None:
                seen.append(current)
        return seen

    # Files -------------------------------------------------------------------------------
    def _new(self, metadata: dict[str, Any], content: bytes | None) -> dict[str, Any] | None:
        """Create a file; None (an error answered) where Drive refuses."""
        parents = [self._resolve(p["id"]) for p in metadata.get("parents") or [{"id": "root"}]]
        for parent_id in parents:
            parent = self.state.files.get(parent_id)
            if parent is None or not self._visible(parent):
                self._error(404, "notFound", f"File not found: {parent_id}.")
                return None
        try:
            properties = _properties(metadata.get("properties", []), [])
        except ValueError as exc:
            self._error(400, "invalid", str(exc))
            return None
        mime = metadata.get("mimeType", "application/octet-stream")
        if not self._may_store(parents, mime, content):
            return None
        file_id = f"id{next(self.state.ids):06d}"
        item = _item(file_id, metadata.get("title", "Untitled"), mime, parents)
        if properties:
            item["properties"] = properties
        self._changing(None, file_id)
        self.state.files[file_id] = item
        if content is not None or mime != FOLDER:
            _set_content(self.state, file_id, content or b"")
        return item

    def _may_store(
        self, parents: list[str], mime: str, content: bytes | None, replacing: str | None = None
    ) -> bool:
        """Drive's quotas: a service account owns no bytes outside a shared drive; a user may
        upload *upload_cap* bytes a day and store *quota* bytes, the trash included (the
        content of *replacing* gives its bytes back)."""
        state = self.state
        if mime == FOLDER:
            return True
        in_shared_drive = all(_drive_of(state, state.files[p]) for p in parents if p in state.files)
        if self._service and not in_shared_drive:
            self._error(403, "storageQuotaExceeded", SA_QUOTA_MESSAGE)
            return False
        size = len(content or b"")
        if state.upload_cap is not None and state.uploaded + size > state.upload_cap:
            self._error(403, "userRateLimitExceeded", DAILY_CAP_MESSAGE)
            return False
        if state.quota is not None and not in_shared_drive:
            freed = len(state.content.get(replacing, b"")) if replacing else 0
            if _used(state)[0] - freed + size > state.quota:
                self._error(403, "storageQuotaExceeded", STORAGE_MESSAGE)
                return False
        state.uploaded += size
        return True

    def _list(self, query: dict[str, str], body: bytes) -> None:
        q = query.get("q", "").replace("'root' in parents", f"'{self._resolve('root')}' in parents")
        matches = [
            self._view(f)
            for f in self._listed()
            if f["id"] not in (ROOT_ID, SERVICE_ROOT_ID)
            and self._visible(f)
            and _matches(q, f, self.state)
        ]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 100)
        page = matches[start : start + size]
        data: dict[str, Any] = {"kind": "drive#fileList", "items": page}
        if start + size < len(matches):
            data["nextPageToken"] = str(start + size)
        self._json(data)

    def _about(self, query: dict[str, str], body: bytes) -> None:
        used, trashed = _used(self.state)
        quota = self.state.quota
        about = {
            "kind": "drive#about",
            "rootFolderId": ROOT_ID,
            "name": "Test User",
            "quotaType": "UNLIMITED" if quota is None else "LIMITED",
            "quotaBytesUsed": str(used),
            "quotaBytesUsedAggregate": str(used),
            "quotaBytesUsedInTrash": str(trashed),
        }
        if quota is not None:
            about["quotaBytesTotal"] = str(quota)
        self._json(about)

    def _get(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is None:
            return
        if query.get("alt") != "media":
            return self._json(self._view(item))
        if item["mimeType"].startswith("application/vnd.google-apps."):
            return self._error(
                403,
                "fileNotDownloadable",
                "Only files with binary content can be downloaded. Use Export with Docs Editors "
                "files.",
            )
        content = self.state.content.get(item["id"], b"")
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if wanted is None:
            self.state.served += len(content)
            return self._send(200, content, item["mimeType"])
        first = int(wanted.group(1))
        last = min(int(wanted.group(2) or len(content) - 1), len(content) - 1)
        if first >= len(content) and content:
            return self._send(416, b"", headers={"Content-Range": f"bytes */{len(content)}"})
        part = content[first : last + 1]
        self.state.served += len(part)
        headers = {"Content-Range": f"bytes {first}-{first + len(part) - 1}/{len(content)}"}
        self._send(206, part, item["mimeType"], headers=headers)

    def _insert_metadata(self, query: dict[str, str], body: bytes) -> None:
        item = self._new(json.loads(body or b"{}"), None)
        if item is not None:
            self._created(item)

    def _upload_start(self, query: dict[str, str], body: bytes) -> None:
        kind = query.get("uploadType")
        if kind == "multipart":
            metadata, content = self._multipart(body)
            item = self._new(metadata, content)
            return None if item is None else self._created(item)
        if kind == "resumable":
            return self._start_resumable(body, None)
        if kind == "media":
            item = self._new({}, body)
            return None if item is None else self._created(item)
        self._error(400, "badRequest", f"unsupported uploadType {kind!r}")

    def _upload_update(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is None:
            return
        if query.get("uploadType") == "resumable":
            return self._start_resumable(body, item["id"])
        if query.get("uploadType") == "multipart":
            metadata, content = self._multipart(body)
        else:
            metadata, content = {}, body
        parents = [p["id"] for p in item["parents"]]
        if not self._may_store(parents, item["mimeType"], content, replacing=item["id"]):
            return
        self._changing(item, item["id"])
        item.update({k: v for k, v in metadata.items() if k in ("title", "mimeType")})
        _set_content(self.state, item["id"], content)
        self._created(item)

    def _start_resumable(self, body: bytes, file_id: str | None) -> None:
        """Open an upload session (for a new file, or new content of *file_id*)."""
        upload_id = f"up{next(self.state.ids)}"
        metadata = json.loads(body or b"{}")
        expires = self.state.expiring > 0
        self.state.expiring -= expires
        self.state.uploads[upload_id] = {
            "metadata": metadata,
            "data": b"",
            "file_id": file_id,
            "expires": expires,
        }
        host = self.headers.get("Host", "127.0.0.1")
        location = f"http://{host}/upload/drive/v2/files?uploadType=resumable&upload_id={upload_id}"
        self._send(200, b"", headers={"Location": location})

    def _upload_put(self, query: dict[str, str], body: bytes) -> None:
        upload = self.state.uploads.get(query.get("upload_id", ""))
        if upload is None or upload.get("expired"):
            return self._error(404, "notFound", "Upload session expired or not found.")
        content_range = self.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range.strip())
        if match and match.group(1) is not None and body:
            start = int(match.group(1))
            if start > len(upload["data"]):
                return self._error(400, "badRequest", "chunk does not follow the received bytes")
            keep = body[: self.state.chunk_limit] if self.state.chunk_limit else body
            upload["data"] = upload["data"][:start] + keep
        elif body:
            upload["data"] += body
        total = match.group(3) if match else str(len(upload["data"]))
        if total != "*" and len(upload["data"]) >= int(total):
            self.state.uploads.pop(query["upload_id"])
            return self._finish(upload)
        if upload["expires"]:
            upload["expired"] = True
        received = len(upload["data"])
        headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
        self._send(308, b"", headers=headers)

    def _finish(self, upload: dict[str, Any]) -> None:
        if upload["file_id"]:
            item = self.state.files[upload["file_id"]]
            parents = [p["id"] for p in item["parents"]]
            if not self._may_store(parents, item["mimeType"], upload["data"], replacing=item["id"]):
                return
            self._changing(item, item["id"])
            item.update({k: v for k, v in upload["metadata"].items() if k in ("title",)})
            _set_content(self.state, item["id"], upload["data"])
        else:
            new = self._new(upload["metadata"], upload["data"])
            if new is None:
                return
            item = new
        self._created(item)

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
        try:
            properties = _properties(changes.get("properties", []), item.get("properties", []))
        except ValueError as exc:
            return self._error(400, "invalid", str(exc))
        self._changing(item, item["id"])
        for key in ("title", "mimeType"):
            if key in changes:
                item[key] = changes[key]
        if "parents" in changes:
            item["parents"] = [{"id": self._resolve(p["id"])} for p in changes["parents"]]
        if "labels" in changes:
            item["labels"].update(changes["labels"])
        if "properties" in changes:
            item["properties"] = properties
        for parent in (query.get("addParents") or "").split(","):
            if parent:
                item["parents"].append({"id": self._resolve(parent)})
        removed = {self._resolve(p) for p in (query.get("removeParents") or "").split(",") if p}
        item["parents"] = [p for p in item["parents"] if p["id"] not in removed]
        item["modifiedDate"] = _now()
        self._json(self._view(item))

    def _trash(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is not None:
            self._changing(item, item["id"])
            item["labels"]["trashed"] = True
            self._json(self._view(item))

    def _delete(self, query: dict[str, str], body: bytes, file_id: str) -> None:
        item = self._item_or_404(file_id)
        if item is None:
            return
        if self.state.trash_only:
            return self._error(403, "insufficientFilePermissions", DELETE_FORBIDDEN_MESSAGE)
        self._changing(item, item["id"])
        _purge(self.state, item["id"])
        self._send(204)

    def _empty_trash(self, query: dict[str, str], body: bytes) -> None:
        _empty_trash(self.state)
        self._send(204)


def _trim(data: Any, fields: str) -> Any:
    """*data* with only the *fields* asked for (``a,b(c,d),e/f``), as Drive answers."""
    wanted: dict[str, str | None] = {}
    depth, start = 0, 0
    for i, char in enumerate(fields + ","):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            part = fields[start:i].strip()
            start = i + 1
            if not part:
                continue
            if "(" in part:
                name, sub = part.split("(", 1)
                wanted[name] = sub[:-1]
            elif "/" in part:
                name, sub = part.split("/", 1)
                wanted[name] = sub
            else:
                wanted[part] = None
    out = {}
    for name, inner in wanted.items():
        if name not in data:
            continue
        value = data[name]
        if inner is not None and isinstance(value, list):
            value = [_trim(v, inner) for v in value]
        elif inner is not None and isinstance(value, dict):
            value = _trim(value, inner)
        out[name] = value
    return out


# The query language, as far as pydrive2 uses it ------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)|'(?:\\.|[^'\\])*'|!=|=|[A-Za-z_]+)")


def _matches(query: str, item: dict[str, Any], state: DriveState) -> bool:
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
            "trashed": str(_trashed(state, item)).lower(),
            # Drive matches titles without regard to case (pydrive2 filters the answer).
            "title": item["title"].lower(),
            "mimeType": item["mimeType"],
        }[token]
        wanted = literal(value) if value.startswith("'") else value
        if token == "title":
            wanted = wanted.lower()
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
