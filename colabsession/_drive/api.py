"""Google Drive through its API, for Kaggle, local Jupyter and scripts: an fsspec file system
(pydrive2's GDriveFileSystem) authenticated with google-auth credentials.

pydrive2 still builds on the retired oauth2client, so the credentials reach it through a small
adapter with oauth2client's face (``authorize(http)``) over google-auth's AuthorizedHttp, which
refreshes tokens itself.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from colabsession._core.errors import DriveAPIError, DriveAuthError, DriveQuotaError
from colabsession._core.files import reason
from colabsession._core.optional import require
from colabsession._core.records import read_json
from colabsession._core.say import say
from colabsession._core.secrets import find_secret
from colabsession._core.timeout import Backoff, call_with_timeout
from colabsession._core.units import Duration, format_duration, parse_duration
from colabsession._runtime.runtime import detect_kind, home_dir

logger = logging.getLogger("colabsession.drive")
T = TypeVar("T")

SCOPES = ("https://www.googleapis.com/auth/drive",)
ENV_SERVICE_ACCOUNT = "COLABSESSION_SERVICE_ACCOUNT"  # a key file's path, or the key's JSON
ENV_FOLDER = "COLABSESSION_DRIVE_FOLDER"  # the folder id that stands for My Drive; "root" default
ENV_API_ENDPOINT = "COLABSESSION_DRIVE_API_ENDPOINT"  # another API root (a proxy, a test server)
TRANSIENT_403 = ("rateLimitExceeded", "userRateLimitExceeded")
FOLDER_MIME = "application/vnd.google-apps.folder"
HTTP_TIMEOUT = 60.0  # seconds a Drive API request may wait for an answer
CHECK_TIMEOUT = "20s"  # how long connect() waits for Drive to confirm the folder


ENV_CLIENT_SECRETS = "COLABSESSION_CLIENT_SECRETS"  # an OAuth client's JSON, for sign_in()
CLIENT_FIELDS = ("client_id", "client_secret", "auth_uri", "token_uri")  # of an OAuth client
TOKEN_FILE = "drive-token.json"  # a person's saved sign-in, under colabsession's home
SIGN_IN_TIMEOUT = "5min"  # how long the browser sign-in may take


def configured() -> bool:
    """Whether Drive API credentials are configured: a service account in the environment, or
    a sign-in saved by :func:`sign_in`."""
    return bool(os.environ.get(ENV_SERVICE_ACCOUNT)) or token_path().is_file()


def token_path() -> Path:
    """Where :func:`sign_in` keeps the sign-in (mode 0600, never printed)."""
    return home_dir() / TOKEN_FILE


def load_credentials(
    service_account: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> Any:
    """google-auth credentials with Drive scope, from the first source that has them:

    1. *service_account*: a key file's path, its JSON text, or the parsed key;
    2. ``COLABSESSION_SERVICE_ACCOUNT`` (path or JSON text): an environment variable, else a
       secret in Colab's or Kaggle's secret store (see ``cs.secret``);
    3. in Colab, the notebook user's own account (``google.colab.auth.authenticate_user()``);
    4. the sign-in saved by :func:`sign_in` (local Jupyter, scripts).
    """
    require("google.auth", extra="drive", purpose="the Drive API", package="google-auth")
    source = service_account if service_account is not None else find_secret(ENV_SERVICE_ACCOUNT)
    if source:
        return _service_account_credentials(source)
    if detect_kind() == "colab":
        import google.auth
        from google.colab import auth

        auth.authenticate_user()
        credentials, _ = google.auth.default(scopes=list(SCOPES))
        return credentials
    if token_path().is_file():
        return _saved_sign_in(token_path())
    raise DriveAuthError(
        "no Google credentials for the Drive API: sign in as yourself once with "
        "cs.drive.sign_in('client_secret.json') (an OAuth client of the Desktop app kind, see "
        "docs/drive.md), or use a service account that is a member of a shared drive: "
        f"cs.drive.connect(service_account='key.json', folder=...) or {ENV_SERVICE_ACCOUNT}"
    )


def sign_in(
    client_secrets: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    open_browser: bool = True,
    timeout: Duration = SIGN_IN_TIMEOUT,
    run_flow: Callable[[Any], Any] | None = None,
) -> Any:
    """Sign in to Google as yourself for the Drive API (local Jupyter, scripts: no service
    account or shared drive needed), and keep the sign-in for next time in
    ``<colabsession home>/drive-token.json`` (mode 0600; never printed). From then on
    :func:`connect` and ``drive:`` locations use it. Returns the credentials.

    *client_secrets*: the JSON of an OAuth client of the "Desktop app" kind (Google Cloud
    console > APIs & Services > Credentials), its path, or ``$COLABSESSION_CLIENT_SECRETS``.
    A browser opens on Google's consent page (with *open_browser* False, the address is
    printed instead); giving up after *timeout* (a duration: ``"5min"``, ``"90s"`` or seconds).
    *run_flow* runs the flow (tests).

    >>> cs.drive.sign_in("client_secret.json")  # doctest: +SKIP
    """
    require(
        "google_auth_oauthlib.flow",
        extra="drive",
        purpose="signing in to Google",
        package="google-auth-oauthlib",
    )
    from google_auth_oauthlib.flow import InstalledAppFlow

    seconds = parse_duration(timeout, name="timeout")
    config = _client_config(client_secrets)
    try:
        flow = InstalledAppFlow.from_client_config(config, scopes=list(SCOPES))
    except (ValueError, KeyError, TypeError) as exc:
        raise DriveAuthError(
            f"cannot use the OAuth client given: {type(exc).__name__}. Download the client's "
            "JSON again (Google Cloud console > APIs & Services > Credentials > the Desktop "
            "app client > Download JSON)"
        ) from None
    try:
        if run_flow is not None:
            credentials = run_flow(flow)
        else:
            credentials = flow.run_local_server(
                port=0, open_browser=open_browser, timeout_seconds=seconds
            )
    except Exception as exc:
        raise DriveAuthError(
            f"signing in to Google did not finish ({type(exc).__name__}): it has "
            f"{format_duration(seconds)} to complete in the browser on this machine; run "
            "cs.drive.sign_in() again"
        ) from None
    if credentials is None or not getattr(credentials, "refresh_token", None):
        raise DriveAuthError(
            "Google's sign-in gave no lasting permission: run cs.drive.sign_in() again"
        )
    try:
        _save_token(token_path(), credentials.to_json())
    except OSError as exc:
        raise DriveAuthError(
            f"signed in, but the sign-in cannot be kept in {token_path()} ({reason(exc)}): free "
            "space there, or set COLABSESSION_HOME to a folder you can write, and sign in again"
        ) from None
    say(f"signed in to Google Drive; the sign-in is kept in {token_path()} (only you can read it)")
    return credentials


def sign_out() -> bool:
    """Forget the sign-in that :func:`sign_in` saved; whether there was one."""
    try:
        token_path().unlink()
    except FileNotFoundError:
        return False
    return True


def _client_config(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    source = source if source is not None else os.environ.get(ENV_CLIENT_SECRETS)
    if source is None:
        raise DriveAuthError(
            "signing in needs an OAuth client: create one of the Desktop app kind (Google "
            "Cloud console > APIs & Services > Credentials), download its JSON and pass it: "
            f"cs.drive.sign_in('client_secret.json'), or set {ENV_CLIENT_SECRETS}"
        )

    def check(config: dict[str, Any]) -> dict[str, Any]:
        client = config.get("installed") or config.get("web")
        if not isinstance(client, dict):
            raise _Lacks("it has no 'installed' or 'web' client")
        # What google-auth-oauthlib's flow needs; checked here so that a client's JSON that
        # lacks it is refused in words, not by the flow with a raw ValueError.
        missing = [k for k in CLIENT_FIELDS if not isinstance(client.get(k), str) or not client[k]]
        if missing:
            raise _Lacks(f"it lacks {', '.join(missing)}")
        return config

    return _from_json(
        source,
        what="OAuth client",
        advice="Download the client's JSON again (Google Cloud console > APIs & Services > "
        "Credentials > the Desktop app client > Download JSON)",
        use=check,
        private=False,
    )


def _save_token(path: Path, text: str) -> None:
    """Write the sign-in readable by its owner only, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old temp file may have had other bits
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def _saved_sign_in(path: Path) -> Any:
    from google.oauth2.credentials import Credentials

    return _from_json(
        str(path),
        what="saved Google sign-in",
        advice="Run cs.drive.sign_in() again",
        use=lambda info: Credentials.from_authorized_user_info(info, scopes=list(SCOPES)),  # type: ignore[no-untyped-call]
        private=True,
    )


def _service_account_credentials(source: str | os.PathLike[str] | Mapping[str, Any]) -> Any:
    from google.oauth2 import service_account

    return _from_json(
        source,
        what="service-account key",
        advice="Download a fresh JSON key from the Google Cloud console (IAM > Service accounts "
        "> Keys)",
        use=lambda info: service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(SCOPES)
        ),
        private=True,
    )


def _from_json(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    what: str,
    advice: str,
    use: Callable[[dict[str, Any]], T],
    private: bool,
) -> T:
    """``use(info)`` of the JSON object that *source* is (a mapping), holds (JSON text) or
    names (a file's path). Any fault is a DriveAuthError that says where and of what kind, then
    *advice*, and never echoes the content (a key, a secret). *private*: warn when other users
    can read the file."""
    where = f"the {what} given"
    try:
        if isinstance(source, Mapping):
            info: Any = dict(source)
        else:
            text = _unwrap(os.fspath(source))
            if text.startswith("{"):
                where = f"the {what}'s JSON"
                info = read_json(text, what=where, max_bytes=1 << 20)
            else:
                where = _describe_path(text, what)
                path = Path(text).expanduser()
                if private:
                    _warn_if_readable_by_others(path)
                info = read_json(
                    path.read_text(encoding="utf-8-sig"), what=where, max_bytes=1 << 20
                )
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return use(info)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DriveAuthError(
            f"cannot use {where}: {type(exc).__name__}"
            + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")
            + (f" ({exc})" if isinstance(exc, _Lacks) else "")
            + f". {advice}"
        ) from None


class _Lacks(ValueError):
    """A credential's JSON lacks a field; the message names fields only, never values."""


def _unwrap(text: str) -> str:
    """The key source without what secrets stores and shells add around it: a byte-order mark,
    whitespace and a pair of surrounding quotes."""
    text = text.lstrip("\ufeff").strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].lstrip("\ufeff").strip()
    return text


def _describe_path(text: str, what: str) -> str:
    """A file's path for a message, or only its length where the text could be a secret."""
    if len(text) > 255 or any(c in text for c in '{}\n"') or "PRIVATE KEY" in text:
        return f"the {what} source ({len(text)} characters; neither a file nor JSON)"
    return f"{what} file {Path(text).expanduser()}"


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

        return Transport(
            google_auth_httplib2.AuthorizedHttp(self._credentials, http=http),
            account=_account(self._credentials),
        )

    def set_store(self, store: Any) -> None:
        pass  # nothing is stored: google-auth keeps tokens in memory

    def __repr__(self) -> str:
        return "<Google credentials (hidden)>"


def _account(credentials: Any) -> str | None:
    """The service account's e-mail address; None for a person's own credentials."""
    email = getattr(credentials, "service_account_email", None)
    return email if isinstance(email, str) and "@" in email else None


class Transport:
    """Every Drive API request of a connection goes through here (an httplib2.Http's face).
    Transient answers (5xx, 429, rate-limit 403s) are retried with backoff, up to *tries*, then
    raise DriveAPIError (pydrive2 would otherwise retry each 16 times more); answers that
    waiting soon cannot mend (the daily upload cap, no storage) raise DriveQuotaError at once.
    A chunk of an upload session is not resent here: the upload starts again instead (resending
    needs the session's status first). *account* is the service account's address, if one.
    *sleep* is the pause (tests pass a fake)."""

    def __init__(
        self,
        http: Any,
        *,
        account: str | None,
        tries: int = 6,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http, self.account, self.tries, self.sleep = http, account, tries, sleep

    def request(self, uri: str, method: str = "GET", *args: Any, **kwargs: Any) -> Any:
        backoff = Backoff(initial=0.5, maximum=16.0)
        for attempt in itertools.count(1):
            resp, content = self.http.request(uri, method, *args, **kwargs)
            if resp.status < 400:
                return resp, content
            reason, message = _error_of(content)
            quota = quota_error(resp.status, reason, message, self.account)
            if quota is not None:
                raise quota
            transient = (
                resp.status >= 500
                or resp.status == 429
                or (resp.status == 403 and reason in TRANSIENT_403)
            )
            if not transient or "upload_id=" in uri:
                return resp, content
            if attempt >= self.tries:
                raise DriveAPIError(
                    f"the Drive API still answered {resp.status} {reason} after {attempt} tries: "
                    "Drive is overloaded or throttling this account. Try again in a few minutes "
                    "(a Checkpointer keeps what it saves on the local disk and tries again by "
                    "itself)",
                    status=resp.status,
                )
            delay = backoff.failed()
            logger.debug("Drive API: %s %s, retrying in %.1f s", resp.status, reason, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> Any:  # timeout, credentials, close, ...
        return getattr(self.http, name)


def _error_of(content: Any) -> tuple[str, str]:
    """(reason, message) of a Drive API error answer; empty strings where it has none."""
    try:
        error = read_json(content, what="Drive's answer", max_bytes=1 << 20)["error"]
        first = (error.get("errors") or [{}])[0]
        return str(first.get("reason", "")), str(first.get("message", error.get("message", "")))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return "", ""


DAILY_CAP = "User rate limit exceeded."  # the 750 GB/day cap's wording (rclone keys on it too)


def quota_error(status: int, reason: str, message: str, account: str | None) -> Exception | None:
    """The DriveQuotaError for an answer that waiting a few minutes cannot mend, else None."""
    if status != 403:
        return None
    if reason == "userRateLimitExceeded" and message.strip() == DAILY_CAP:
        return DriveQuotaError(
            "Drive's daily upload limit is reached (750 GB a day per account): Drive takes no "
            "more uploads from this account for up to 24 hours. What is saved stays on this "
            "machine's disk, not yet on Drive; save less (a longer every=, a smaller keep_last) "
            "or upload with another account",
            status=status,
            reason=reason,
        )
    if reason == "storageQuotaExceeded" and account:
        return DriveQuotaError(
            f"service accounts own no storage, so {account} cannot upload into a folder of "
            "someone's My Drive (403 storageQuotaExceeded). Use a shared drive (add "
            f"{account} to it as Content manager and pass a folder in it: "
            "cs.drive.connect(folder=...)), or sign in as yourself: cs.drive.sign_in()",
            status=status,
            reason=reason,
        )
    if reason == "storageQuotaExceeded":
        return DriveQuotaError(
            "your Google Drive is full (403 storageQuotaExceeded): empty its trash or free "
            "space at drive.google.com, or buy more storage. What is saved stays on this "
            "machine's disk meanwhile",
            status=status,
            reason=reason,
        )
    return None


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
    timeout: Duration = CHECK_TIMEOUT,
) -> Any:
    """Reach Drive through its API (Kaggle, local Jupyter, scripts); returns an fsspec file
    system whose paths start with the id of *folder* (default ``$COLABSESSION_DRIVE_FOLDER``,
    else ``"root"``, My Drive). With *use_for_drive*, ``drive:`` locations use it from now on.
    The folder is checked at once (an unshared folder is a DriveAuthError); where Drive does not
    answer within *timeout* (a duration: ``"20s"``, or seconds), the check is skipped with a
    warning, so that training starts anyway and copies to Drive once it answers.

    Credentials: *credentials* (google-auth), else *service_account* (a key file's path, its
    JSON, or the parsed key), else ``$COLABSESSION_SERVICE_ACCOUNT``, else in Colab the
    notebook user's account, else the sign-in saved by :func:`sign_in`. A service account owns
    no storage: it can write only into a shared drive it is a member of (pass a folder there).

    >>> fs = cs.drive.connect(service_account="key.json", folder="0AbC...")  # doctest: +SKIP
    >>> cs.drive.resolve("drive:checkpoints")  # now through the API  # doctest: +SKIP
    """
    global current
    seconds = parse_duration(timeout, name="timeout")
    require("pydrive2.fs", extra="drive", purpose="the Drive API", package="pydrive2")
    credentials = credentials or load_credentials(service_account)
    endpoint = api_endpoint or os.environ.get(ENV_API_ENDPOINT) or None
    root = folder or os.environ.get(ENV_FOLDER) or "root"
    try:
        gauth = _google_auth(credentials, endpoint)
    except Exception as exc:
        raise DriveAuthError(f"cannot reach the Drive API: {type(exc).__name__}: {exc}") from None
    fs = _filesystem_class()(root, google_auth=gauth, trash_only=True)
    try:
        fs.root_id = call_with_timeout(
            lambda: _check_folder(fs, root, _account(credentials)),
            seconds,
            what="check the Drive folder",
        )
    except OSError as exc:  # no answer (TimeoutError, a refused connection), never a refusal
        if isinstance(exc, DriveAPIError):
            raise
        logger.warning(
            "colabsession: the Drive API did not answer (%s); connected without checking the "
            "folder %s",
            type(exc).__name__,
            root,
        )
    if use_for_drive:
        current = fs
    return fs


def _check_folder(fs: Any, folder: str, account: str | None) -> str:
    """The real id of *folder* (``root`` is an alias), or a clear error where it cannot be
    used: not shared with *account*, not a folder, in the trash."""
    from pydrive2.files import ApiRequestError

    who = account or "the signed-in account"
    item = fs.client.CreateFile({"id": folder})
    try:
        item.FetchMetadata(fields="id,title,mimeType,labels,driveId")
    except ApiRequestError as exc:
        if exc.error.get("code") == 404:
            raise DriveAuthError(
                f"the Drive folder {folder!r} is not visible to {who}: share it with "
                f"{who} (as Editor, or add it to the shared drive), or check the id (the part "
                "after /folders/ in the folder's address)"
            ) from None
        raise _translate(exc, f"look up the folder {folder}") from None
    except Exception as exc:
        raise _translate(exc, f"look up the folder {folder}") from None
    if item.get("mimeType") != FOLDER_MIME:
        raise DriveAuthError(f"{folder!r} is a file on Drive, not a folder: pass a folder's id")
    if (item.get("labels") or {}).get("trashed"):
        raise DriveAPIError(
            f"the Drive folder {folder!r} is in the trash: restore it at drive.google.com, or "
            "pass another folder",
            path=folder,
        )
    if account and not item.get("driveId"):
        logger.warning(
            "colabsession: %s is a service account and the folder %s is not in a shared drive: "
            "service accounts own no storage, so uploads there will likely fail. Use a folder "
            "in a shared drive that %s is a member of, or cs.drive.sign_in()",
            account,
            folder,
            account,
        )
    return str(item["id"])


def disconnect() -> None:
    """Forget the Drive API connection: ``drive:`` goes back to the mount or the local folder."""
    global current
    current = None


UPLOAD_RESTARTS = 2  # times an upload starts again after its session expired
#: The property (Drive v2's ``properties``) on every file colabsession uploads through the API:
#: only files that bear it are ever deleted for good (the rest go to the Trash). Public, so that
#: every way colabsession signs in (Colab's account, sign_in(), a service account) sees it.
MARK = {"key": "colabsession", "value": "1", "visibility": "PUBLIC"}


def marked(properties: Any) -> bool:
    """Whether a file's ``properties`` (as Drive answers them: untrusted) hold :data:`MARK`."""
    return isinstance(properties, list) and any(
        isinstance(p, dict)
        and p.get("key") == MARK["key"]
        and p.get("value") == MARK["value"]
        and p.get("visibility", "PRIVATE") == MARK["visibility"]
        for p in properties
    )


_FS_CLASS: type | None = None


def _filesystem_class() -> type:
    """DriveFileSystem, built on first use so that pydrive2 is imported only then."""
    global _FS_CLASS
    if _FS_CLASS is None:
        from pydrive2.files import ApiRequestError
        from pydrive2.fs import GDriveFileSystem
        from pydrive2.fs.spec import _gdrive_retry

        class DriveFileSystem(GDriveFileSystem):  # type: ignore[misc]
            """pydrive2's file system where a name may stand for several files (Drive allows
            that, and a listing may lag or repeat): a path reads the newest file of its name,
            and a write removes the older ones once the new one is whole.

            Every file it uploads carries colabsession's mark (:data:`MARK`, a property);
            removing a file (:meth:`rm_file`, an older copy a write replaced) deletes a
            marked one for good, by ``files.delete``: in the Trash it would count against the
            Drive's quota for 30 days, and a run rotating its checkpoints would fill the Drive.
            Anything else (the user's files, folders, files colabsession wrote before it
            marked them) goes to the Trash, as does everything where the account may trash but
            not delete (a shared drive's Content manager), and everything once
            *permanent_delete* is False."""

            protocol = "gdrive"
            root_id: str | None = None  # the real id behind the "root" alias (see connect)
            permanent_delete = True  # False: colabsession's own files go to the Trash too

            def upload_fobj(self, stream: Any, rpath: str, callback: Any = None, **kw: Any) -> Any:
                # A resumable upload creates its file only once whole, so the new file can take
                # its name at once; an expired upload session (404) starts the upload again.
                rpath = rpath.rstrip("/")
                for attempt in range(UPLOAD_RESTARTS + 1):
                    try:
                        item = super().upload_fobj(stream, rpath, callback=callback, **kw)
                        break
                    except ApiRequestError as exc:
                        if exc.error.get("code") != 404 or attempt == UPLOAD_RESTARTS:
                            raise _translate(exc, f"upload {rpath}") from exc
                        logger.debug("Drive API: upload session expired; %s starts again", rpath)
                for old in self._ids_of(rpath):
                    if old != item["id"]:
                        self._remove(old)
                return item

            @_gdrive_retry  # type: ignore[untyped-decorator]
            def _gdrive_upload_fobj(
                self, title: str, parent_id: str, stream: Any, callback: Any = None
            ) -> Any:
                # pydrive2's, with the mark: the file is created whole and marked at once, so
                # no unmarked copy of colabsession's is ever left behind.
                item = self.client.CreateFile(
                    {"title": title, "parents": [{"id": parent_id}], "properties": [dict(MARK)]}
                )
                item.content = stream
                item.Upload()
                return item

            def cat_file(
                self, path: str, start: int | None = None, end: int | None = None, **kw: Any
            ) -> bytes:
                """The bytes of *path* from *start* to *end* (fsspec's meaning, negative from
                the end), by one ranged download: a checkpoint's manifest is read from its
                end without downloading the file whole."""
                if start is None and end is None:
                    return bytes(super().cat_file(path, **kw))
                first, stop = start or 0, end
                if first < 0 or (stop is not None and stop < 0):
                    size = int(self.info(path)["size"])
                    first = first + size if first < 0 else first
                    stop = stop + size if stop is not None and stop < 0 else stop
                if stop is not None and stop <= first:
                    return b""
                from googleapiclient.errors import HttpError

                item_id = self._get_item_id(path)
                request = self.client.auth.service.files().get_media(fileId=item_id)
                last = "" if stop is None else str(stop - 1)
                request.headers["range"] = f"bytes={max(0, first)}-{last}"
                try:
                    data = request.execute(http=self.client.auth.Get_Http_Object())
                except HttpError as exc:
                    raise ApiRequestError(exc) from None
                return bytes(data)

            def rm_file(self, path: str) -> None:
                # Every file of the name: a twin left by an upload that failed after creating
                # its file, or hidden by a lagging listing, goes too.
                item_ids = self._ids_of(path.rstrip("/"))
                if not item_ids:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
                for item_id in item_ids:
                    self._remove(item_id)

            def remove_confirmed(self, path: str) -> None:
                """Remove *path* whose newest file Drive has confirmed byte for byte against
                colabsession's local copy (a file colabsession wrote another way, through the
                Colab mount): that one is deleted for good at once, with no mark to set or read
                first (two requests fewer than marking it, and one fewer than reading the
                mark); any other file of the name is removed as :meth:`rm_file` removes it."""
                item_ids = self._ids_of(path.rstrip("/"))
                if not item_ids:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
                newest = item_ids[0] if len(item_ids) == 1 else self._newest(item_ids)
                for item_id in item_ids:
                    if item_id != newest or not self.permanent_delete:
                        self._remove(item_id)
                        continue
                    try:
                        if not self._delete(self.client.CreateFile({"id": item_id})):
                            self.client.CreateFile({"id": item_id}).Trash()
                    except ApiRequestError as exc:
                        if exc.error.get("code") != 404:
                            raise _translate(exc, f"remove the file {item_id}") from exc

            def _ids_of(self, path: str) -> list[str]:
                parent, name = posixpath.split(path)
                try:
                    parent_ids = self._path_to_item_ids(self.split_path(parent)[1])
                except FileNotFoundError:
                    return []
                return self._get_remote_item_ids(parent_ids, parent, name) or []

            def _remove(self, item_id: str) -> None:
                """Delete *item_id* for good if colabsession wrote it (it bears the mark),
                else move it to the Trash; gone already is what was wanted."""
                try:
                    if self.permanent_delete:
                        item = self.client.CreateFile({"id": item_id})
                        item.FetchMetadata(fields="id,properties")
                        if marked(item.get("properties")) and self._delete(item):
                            return
                    self.client.CreateFile({"id": item_id}).Trash()
                except ApiRequestError as exc:
                    if exc.error.get("code") != 404:
                        raise _translate(exc, f"remove the file {item_id}") from exc

            def _delete(self, item: Any) -> bool:
                """``files.delete`` of *item*; False where the account may only trash it."""
                try:
                    item.Delete()
                except ApiRequestError as exc:
                    if exc.error.get("code") != 403:
                        raise
                    if not self._told_trash_only:
                        self._told_trash_only = True
                        logger.warning(
                            "colabsession: Drive lets this account trash but not delete its "
                            "old files (%s: in a shared drive, deleting needs the Manager "
                            "role), so they go to the Trash, where they count against the "
                            "storage for 30 days unless the Trash is emptied",
                            exc.GetField("reason") or "403",
                        )
                    return False
                return True

            _told_trash_only = False

            def _get_cached_item_ids(self, path: str, use_cache: bool) -> list[str]:
                # Items name the root's real id in their parents, never "root".
                if not path and self.root_id:
                    return [self.root_id]
                return list(super()._get_cached_item_ids(path, use_cache))

            def _get_item_id(self, path: str, create: bool = False, use_cache: bool = True) -> str:
                base = self.split_path(path)[1]
                item_ids = self._path_to_item_ids(base, create, use_cache)
                if not item_ids:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
                return item_ids[0] if len(item_ids) == 1 else self._newest(item_ids)

            def _newest(self, item_ids: list[str]) -> str:
                """Of several files of one name, the newest (pydrive2 took the smallest id,
                which on Drive is any of them); of several folders, pydrive2's choice."""
                found = []
                for item_id in item_ids:
                    item = self.client.CreateFile({"id": item_id})
                    try:
                        item.FetchMetadata(fields="id,mimeType,modifiedDate")
                    except ApiRequestError as exc:
                        if exc.error.get("code") == 404:
                            continue
                        raise
                    if item.get("mimeType") == FOLDER_MIME:
                        return min(item_ids)
                    found.append((str(item.get("modifiedDate", "")), item_id))
                if not found:
                    raise FileNotFoundError(errno.ENOENT, "gone while being read", item_ids[0])
                return max(found)[1]

        for method in (
            "ls",
            "info",
            "exists",
            "rm_file",
            "remove_confirmed",
            "cat_file",
            "get_file",
            "mkdir",
            "makedirs",
            "find",
            "mv",
            "_open",
            "upload_fobj",
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
            ),
            status=code or None,
        )
    if type(exc) is PermissionError and not str(exc):
        # pydrive2's answer to a folder id that these credentials cannot see
        return DriveAuthError(
            f"cannot {what}: its folder is not visible to these credentials; share it with "
            "them, or check the folder id"
        )
    if type(exc).__name__ in ("GDriveAuthError", "RefreshError", "TransportError"):
        return DriveAuthError(
            f"Drive API authentication failed while trying to {what}: {type(exc).__name__}. "
            "Check the credentials (a revoked sign-in: run cs.drive.sign_in() again)"
        )
    return exc
