"""Google Drive through its API, for Kaggle, local Jupyter and scripts: an fsspec file system
(pydrive2's GDriveFileSystem) authenticated with google-auth credentials.

pydrive2 still builds on the retired oauth2client, so the credentials reach it through a small
adapter with oauth2client's face (``authorize(http)``) over google-auth's AuthorizedHttp, which
refreshes tokens itself.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import stat
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ._errors import DriveAPIError, DriveAuthError
from ._optional import require
from ._runtime import detect_kind
from ._timeout import Backoff

logger = logging.getLogger("colabsession.drive")
T = TypeVar("T")

SCOPES = ("https://www.googleapis.com/auth/drive",)
ENV_SERVICE_ACCOUNT = "COLABSESSION_SERVICE_ACCOUNT"  # a key file's path, or the key's JSON
ENV_FOLDER = "COLABSESSION_DRIVE_FOLDER"  # the folder id that stands for My Drive; "root" default
ENV_API_ENDPOINT = "COLABSESSION_DRIVE_API_ENDPOINT"  # another API root (a proxy, a test server)
TRANSIENT_403 = ("rateLimitExceeded", "userRateLimitExceeded")
FOLDER_MIME = "application/vnd.google-apps.folder"
HTTP_TIMEOUT = 60.0  # seconds a Drive API request may wait for an answer


def configured() -> bool:
    """Whether Drive API credentials are configured through the environment."""
    return bool(os.environ.get(ENV_SERVICE_ACCOUNT))


def load_credentials(
    service_account: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> Any:
    """google-auth credentials with Drive scope, from the first source that has them:

    1. *service_account*: a key file's path, its JSON text, or the parsed key;
    2. ``$COLABSESSION_SERVICE_ACCOUNT`` (path or JSON text, e.g. from Kaggle's secrets);
    3. in Colab, the notebook user's own account (``google.colab.auth.authenticate_user()``).
    """
    require("google.auth", extra="drive", purpose="the Drive API", package="google-auth")
    source = service_account if service_account is not None else os.environ.get(ENV_SERVICE_ACCOUNT)
    if source:
        return _service_account_credentials(source)
    if detect_kind() == "colab":
        import google.auth
        from google.colab import auth

        auth.authenticate_user()
        credentials, _ = google.auth.default(scopes=list(SCOPES))
        return credentials
    raise DriveAuthError(
        "no Google credentials for the Drive API: create a service account with the Drive API "
        "enabled, share your Drive folder with its e-mail address, and pass its key file "
        f"(cs.drive.connect(service_account='key.json')) or set {ENV_SERVICE_ACCOUNT} to the "
        "key file's path or its JSON"
    )


def _service_account_credentials(source: str | os.PathLike[str] | Mapping[str, Any]) -> Any:
    from google.oauth2 import service_account

    where = "the service-account key given"
    try:
        if isinstance(source, Mapping):
            info: Any = dict(source)
        else:
            text = _unwrap(os.fspath(source))
            if text.startswith("{"):
                where = "the service-account key's JSON"
                info = json.loads(text)
            else:
                where = _describe_path(text)
                path = Path(text).expanduser()
                _warn_if_readable_by_others(path)
                info = json.loads(path.read_text(encoding="utf-8-sig"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(SCOPES)
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Never echo the key: only its location and the kind of fault.
        raise DriveAuthError(
            f"cannot use {where}: {type(exc).__name__}"
            + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")
            + ". Download a fresh JSON key from the Google Cloud console (IAM > Service accounts "
            "> Keys)"
        ) from None


def _unwrap(text: str) -> str:
    """The key source without what secrets stores and shells add around it: a byte-order mark,
    whitespace and a pair of surrounding quotes."""
    text = text.lstrip("\ufeff").strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].lstrip("\ufeff").strip()
    return text


def _describe_path(text: str) -> str:
    """A key file's path for a message, or only its length where the text could be a key."""
    if len(text) > 255 or any(c in text for c in '{}\n"') or "PRIVATE KEY" in text:
        return f"the service-account key source ({len(text)} characters; neither a file nor JSON)"
    return f"service-account key file {Path(text).expanduser()}"


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by other users: run `chmod 600 %s`", path, path)


class _OAuth2ClientFace:
    """What pydrive2 asks of an oauth2client credentials object, over google-auth credentials."""

    access_token_expired = False  # AuthorizedHttp refreshes before a request when needed
    refresh_token = None

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def authorize(self, http: Any) -> Any:
        import google_auth_httplib2

        return google_auth_httplib2.AuthorizedHttp(self._credentials, http=http)

    def set_store(self, store: Any) -> None:
        pass  # nothing is stored: google-auth keeps tokens in memory

    def __repr__(self) -> str:
        return "<Google credentials (hidden)>"


def _google_auth(credentials: Any, api_endpoint: str | None) -> Any:
    from googleapiclient.discovery import build, build_from_document
    from googleapiclient.discovery_cache import get_static_doc
    from pydrive2.auth import GoogleAuth

    settings = {
        "client_config_backend": "settings",
        "client_config": {"client_id": "unused", "client_secret": "unused"},
        "save_credentials": False,
        "oauth_scope": list(SCOPES),
    }
    # Without a socket timeout a server that accepts the connection and never answers blocks
    # the caller for ever.
    gauth = GoogleAuth(settings_file=None, settings=settings, http_timeout=HTTP_TIMEOUT)
    gauth.credentials = _OAuth2ClientFace(credentials)
    gauth.auth_method = "service"
    gauth.http = gauth.credentials.authorize(gauth._build_http())
    if api_endpoint:
        # build()'s api_endpoint option leaves upload URLs on the default host; rewriting the
        # bundled discovery document moves both.
        doc = json.loads(get_static_doc("drive", "v2") or "{}")
        doc["rootUrl"] = api_endpoint.rstrip("/") + "/"
        gauth.service = build_from_document(doc, http=gauth.http)
    else:
        gauth.service = build(
            "drive", "v2", http=gauth.http, cache_discovery=False, static_discovery=True
        )
    return gauth


current: Any = None  # the file system that drive: locations use, once connected


def connect(
    *,
    credentials: Any = None,
    service_account: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    folder: str | None = None,
    api_endpoint: str | None = None,
    use_for_drive: bool = True,
) -> Any:
    """Reach Drive through its API (Kaggle, local Jupyter, scripts); returns an fsspec file
    system whose paths start with the id of *folder* (default ``$COLABSESSION_DRIVE_FOLDER``,
    else ``"root"``, My Drive). With *use_for_drive*, ``drive:`` locations use it from now on.

    Credentials: *credentials* (google-auth), else *service_account* (a key file's path, its
    JSON, or the parsed key), else ``$COLABSESSION_SERVICE_ACCOUNT``, else in Colab the
    notebook user's account. A service account sees only what is shared with its e-mail address:
    share a Drive folder with it and pass that folder's id.

    >>> fs = cs.drive.connect(service_account="key.json", folder="1AbC...")  # doctest: +SKIP
    >>> cs.drive.resolve("drive:checkpoints")  # now through the API  # doctest: +SKIP
    """
    global current
    require("pydrive2.fs", extra="drive", purpose="the Drive API", package="pydrive2")
    credentials = credentials or load_credentials(service_account)
    endpoint = api_endpoint or os.environ.get(ENV_API_ENDPOINT) or None
    root = folder or os.environ.get(ENV_FOLDER) or "root"
    try:
        gauth = _google_auth(credentials, endpoint)
    except Exception as exc:
        raise DriveAuthError(f"cannot reach the Drive API: {type(exc).__name__}: {exc}") from None
    fs = _filesystem_class()(root, google_auth=gauth, trash_only=True)
    if use_for_drive:
        current = fs
    return fs


def disconnect() -> None:
    """Forget the Drive API connection: ``drive:`` goes back to the mount or the local folder."""
    global current
    current = None


_FS_CLASS: type | None = None


def _filesystem_class() -> type:
    """DriveFileSystem, built on first use so that pydrive2 is imported only then."""
    global _FS_CLASS
    if _FS_CLASS is None:
        from pydrive2.fs import GDriveFileSystem

        class DriveFileSystem(GDriveFileSystem):  # type: ignore[misc]
            """pydrive2's file system, with replace-on-write, retries and clear errors."""

            protocol = "gdrive"

            def upload_fobj(self, stream: Any, rpath: str, callback: Any = None, **kw: Any) -> Any:
                # Drive allows several files of one name in a folder, and pydrive2 then reads
                # the one with the smallest id. Write under a temporary name, then trash the
                # old copies and rename, so that a path always names one whole file.
                rpath = rpath.rstrip("/")
                parent, name = posixpath.split(rpath)
                old = _call(lambda: self._existing_ids(rpath), f"look up {rpath}")
                temp = f".{name}.partial-{uuid.uuid4().hex[:8]}"
                item = _call(
                    lambda: super(DriveFileSystem, self).upload_fobj(
                        stream, f"{parent}/{temp}", callback=callback, **kw
                    ),
                    f"upload {rpath}",
                    rewind=stream,
                )
                for item_id in old:
                    _call(partial(self._gdrive_delete_file, item_id), f"replace {rpath}")
                _call(lambda: self._rename(item, name), f"rename into {rpath}")
                return item

            def _existing_ids(self, path: str) -> list[str]:
                parent, name = posixpath.split(path)
                try:
                    parent_ids = self._path_to_item_ids(self.split_path(parent)[1])
                except FileNotFoundError:
                    return []
                return self._get_remote_item_ids(parent_ids, parent, name) or []

            def _rename(self, item: Any, name: str) -> None:
                item["title"] = name
                item.Upload()

        for method in (
            "ls",
            "info",
            "exists",
            "rm_file",
            "cat_file",
            "get_file",
            "mkdir",
            "makedirs",
            "find",
            "mv",
            "_open",
        ):
            setattr(DriveFileSystem, method, _translating(getattr(DriveFileSystem, method)))
        _FS_CLASS = DriveFileSystem
    return _FS_CLASS


def _translating(method: Callable[..., T]) -> Callable[..., T]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            raise _translate(
                exc, f"{method.__name__.lstrip('_')} {args[0] if args else ''}"
            ) from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _translate(exc: Exception, what: str) -> Exception:
    from pydrive2.files import ApiRequestError

    if isinstance(exc, ApiRequestError):
        code = exc.error.get("code", 0)
        reason = exc.GetField("reason")
        message = exc.error.get("message", "")
        if code == 404:
            return FileNotFoundError(f"not on Drive: {what}")
        return DriveAPIError(
            f"the Drive API refused to {what}: {code} {reason}: {message}"
            + (
                ". Share the folder with the service account, or check its permissions"
                if code == 403
                else ""
            )
        )
    if type(exc).__name__ in ("GDriveAuthError", "RefreshError", "TransportError"):
        return DriveAuthError(
            f"Drive API authentication failed while trying to {what}: {type(exc).__name__}"
        )
    return exc


def _call(func: Callable[[], T], what: str, *, rewind: Any = None, tries: int = 6) -> T:
    """Retry transient API failures (5xx, 403 rate limits) with exponential backoff."""
    from pydrive2.files import ApiRequestError

    backoff = Backoff(initial=0.5, maximum=16.0)
    for attempt in range(tries):
        try:
            return func()
        except ApiRequestError as exc:
            code = exc.error.get("code", 0)
            transient = code >= 500 or (code == 403 and exc.GetField("reason") in TRANSIENT_403)
            if not transient or attempt == tries - 1:
                raise _translate(exc, what) from exc
            delay = backoff.failed()
            logger.debug(
                "Drive API %s: %s %s, retrying in %.1f s", what, code, exc.GetField("reason"), delay
            )
            if rewind is not None:
                rewind.seek(0)
            time.sleep(delay)
    raise AssertionError("unreachable")
