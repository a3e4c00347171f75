"""The Drive API path end to end: real pydrive2, googleapiclient and google-auth against the fake
Drive API server on 127.0.0.1."""

from __future__ import annotations

import io
import itertools
import json
import logging
import types
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

import colabsession as cs

from .fake_drive_api import DOCUMENT, ROOT_ID, FakeDrive, user_credentials

pytest.importorskip("pydrive2.fs")


@pytest.fixture
def fs(fake_drive: FakeDrive) -> Any:
    return fake_drive.connect()


def test_write_read_list_remove(fs: Any, fake_drive: FakeDrive) -> None:
    fs.makedirs("root/runs/a", exist_ok=True)
    with fs.open("root/runs/a/weights.bin", "wb") as f:
        f.write(b"\x00\x01" * 1000)
    assert fs.cat_file("root/runs/a/weights.bin") == b"\x00\x01" * 1000
    (entry,) = fs.ls("root/runs/a", detail=True)
    assert entry["name"] == "root/runs/a/weights.bin"
    assert entry["size"] == 2000
    assert (
        fs.info("root/runs/a/weights.bin")["checksum"]
        == fake_drive.find("weights.bin")[0]["md5Checksum"]
    )
    fs.rm_file("root/runs/a/weights.bin")
    assert not fs.exists("root/runs/a/weights.bin")
    assert not fake_drive.find("weights.bin", trashed=True)  # colabsession's: gone for good
    assert fake_drive.used() == (0, 0)
    assert fake_drive.count("uploadType=resumable") >= 1


def test_overwrite_leaves_one_file(fs: Any, fake_drive: FakeDrive) -> None:
    for text in (b"first", b"second", b"third"):
        fs.pipe_file("root/manifest.json", text)
    assert fs.cat_file("root/manifest.json") == b"third"
    (live,) = fake_drive.find("manifest.json")
    assert fake_drive.read(live["id"]) == b"third"
    assert not [f for f in fake_drive.state.files.values() if ".partial-" in f["title"]]


def test_put_and_get_files(fs: Any, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"x" * 5000)
    fs.put_file(str(src), "root/up/src.txt")
    fs.get_file("root/up/src.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_bytes() == b"x" * 5000


def test_transient_server_errors_are_retried(fs: Any, fake_drive: FakeDrive) -> None:
    fs.pipe_file("root/a.txt", b"hello")
    fake_drive.fail(2, 500, "backendError")
    assert fs.cat_file("root/a.txt") == b"hello"
    fake_drive.fail(2, 503, "backendError", match="/upload/")
    fs.pipe_file("root/b.txt", b"world")
    assert fs.cat_file("root/b.txt") == b"world"


def test_rate_limits_are_retried(fs: Any, fake_drive: FakeDrive) -> None:
    fake_drive.fail(2, 403, "rateLimitExceeded", match="/upload/")
    fs.pipe_file("root/c.txt", b"slow down")
    fake_drive.fail(1, 403, "userRateLimitExceeded")
    assert fs.ls("root") == ["root/c.txt"]


def test_permanent_error_is_clear(fs: Any, fake_drive: FakeDrive) -> None:
    fake_drive.fail(1, 403, "insufficientPermissions", match="/upload/")
    with pytest.raises(cs.DriveAPIError, match=r"403 insufficientPermissions.*Share the folder"):
        fs.pipe_file("root/d.txt", b"no")
    assert fake_drive.count("/upload/") <= 2  # one session, one refused chunk: not retried


def test_missing_file(fs: Any) -> None:
    with pytest.raises(FileNotFoundError):
        fs.cat_file("root/nothing-here")


def test_multipart_upload(fs: Any, fake_drive: FakeDrive) -> None:
    from googleapiclient.http import MediaIoBaseUpload

    service = fs.client.auth.service
    media = MediaIoBaseUpload(io.BytesIO(b"multi part"), "text/plain", resumable=False)
    item = service.files().insert(body={"title": "mp.txt"}, media_body=media).execute()
    assert fake_drive.read(item["id"]) == b"multi part"
    assert fake_drive.count("uploadType=multipart") == 1
    assert fs.cat_file("root/mp.txt") == b"multi part"


def test_paged_listing(fs: Any, fake_drive: FakeDrive) -> None:
    service = fs.client.auth.service
    for i in range(5):
        service.files().insert(body={"title": f"f{i}", "mimeType": "text/plain"}).execute()
    page = service.files().list(q="trashed=false", maxResults=2).execute()
    assert len(page["items"]) == 2
    assert page["nextPageToken"]


def test_service_account_key_file(
    key_file: Path, fake_drive: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = fake_drive.shared_drive("Team")  # the setup that works: a shared drive
    monkeypatch.setenv("COLABSESSION_SERVICE_ACCOUNT", str(key_file))
    monkeypatch.setenv("COLABSESSION_DRIVE_API_ENDPOINT", fake_drive.endpoint)
    monkeypatch.setenv("COLABSESSION_DRIVE_FOLDER", team)
    loc = cs.drive.resolve("drive:checkpoints/run")
    assert loc.path == f"{team}/checkpoints/run"
    assert str(loc) == "drive:checkpoints/run (Drive API)"
    loc.fs.pipe_file(loc.path + "/step.txt", b"42")
    assert loc.fs.cat_file(f"{team}/checkpoints/run/step.txt") == b"42"
    assert any(t.startswith("sa-token-") for t in fake_drive.state.tokens)  # JWT grant used


def test_service_account_json_in_environment(
    fake_drive: FakeDrive, service_account_info: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    info = {**service_account_info, "token_uri": fake_drive.endpoint + "token"}
    monkeypatch.setenv("COLABSESSION_SERVICE_ACCOUNT", json.dumps(info))
    monkeypatch.setenv("COLABSESSION_DRIVE_FOLDER", "root")
    fs = cs.drive.connect(api_endpoint=fake_drive.endpoint)
    assert fs.ls("root") == []
    assert cs.drive.resolve("drive:x").fs is fs  # drive: now goes through the API


def test_gdrive_url(fs: Any) -> None:
    loc = cs.drive.resolve("gdrive://root/runs")
    assert loc.fs is fs
    assert loc.path == "root/runs"


def test_key_file_readable_by_others_is_flagged(
    key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, "colabsession"):
        cs.drive.load_credentials(key_file)
    assert "chmod 600" in caplog.text


def test_no_credentials_outside_colab() -> None:
    with pytest.raises(cs.DriveAuthError, match="service account"):
        cs.drive.connect()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda text: text,
        lambda text: f"'{text}'",
        lambda text: f'"{text}"',
        lambda text: f"\ufeff{text}\n",
        lambda text: f"  '\ufeff{text}'  ",
    ],
    ids=["plain", "single-quoted", "double-quoted", "bom", "quoted-bom"],
)
def test_key_json_in_the_variable_survives_quotes_and_bom(
    wrap: Any, service_account_info: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLABSESSION_SERVICE_ACCOUNT", wrap(json.dumps(service_account_info)))
    credentials = cs.drive.load_credentials()
    assert credentials.service_account_email == service_account_info["client_email"]


@pytest.mark.parametrize(
    "value",
    ["{not json", "[1, 2]", "null", "'-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n'", "x" * 300],
)
def test_malformed_key_variable_is_a_clear_error(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLABSESSION_SERVICE_ACCOUNT", value)
    with pytest.raises(cs.DriveAuthError, match="cannot use") as info:
        cs.drive.load_credentials()
    assert "SECRETSTUFF" not in str(info.value)
    assert "x" * 100 not in str(info.value)


def test_bad_key_never_echoes_the_secret(
    tmp_path: Path, service_account_info: dict[str, str]
) -> None:
    broken = {**service_account_info, "private_key": "-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(cs.DriveAuthError) as info:
        cs.drive.load_credentials(path)
    assert "SECRETSTUFF" not in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(cs.DriveAuthError, match="JSON key"):
        cs.drive.load_credentials(tmp_path / "missing.json")


def test_credentials_never_in_reprs(fs: Any, key_file: Path) -> None:
    auth = fs.client.auth
    assert "hidden" in repr(auth.credentials)
    assert "test-token" not in repr(auth.credentials)
    assert "PRIVATE" not in repr(cs.drive.load_credentials(key_file))


def test_colab_uses_the_notebook_user(
    fake_colab: types.SimpleNamespace, mocker: MockerFixture
) -> None:
    creds = user_credentials("colab-user")
    default = mocker.patch("google.auth.default", return_value=(creds, "project"))
    assert cs.drive.load_credentials() is creds
    fake_colab.auth.authenticate_user.assert_called_once()
    assert "https://www.googleapis.com/auth/drive" in default.call_args.kwargs["scopes"]


def test_expired_credentials_are_an_auth_error(fake_drive: FakeDrive) -> None:
    with pytest.raises(cs.DriveAuthError, match="authentication failed") as info:
        cs.drive.connect(
            credentials=user_credentials("tok-REVOKED"), api_endpoint=fake_drive.endpoint
        )
    assert "REVOKED" not in str(info.value)


# Real Drive's behaviours (issue 12): each switch of the fake, survived ----------------------------


def test_root_is_an_alias(fs: Any, fake_drive: FakeDrive) -> None:
    fs.pipe_file("root/top.txt", b"top")
    fs.pipe_file("root/runs/deep.txt", b"deep")
    (item,) = fake_drive.find("top.txt")
    assert item["parents"][0]["id"] == ROOT_ID  # never "root"
    assert fs.root_id == ROOT_ID
    assert sorted(fs.find("root")) == ["root/runs/deep.txt", "root/top.txt"]
    assert sorted(fs.ls("root")) == ["root/runs/", "root/top.txt"]


def test_children_of_a_trashed_folder_count_as_trashed(fs: Any, fake_drive: FakeDrive) -> None:
    fs.pipe_file("root/runs/a/weights.bin", b"w")
    (runs,) = fake_drive.find("runs")
    runs["labels"]["trashed"] = True  # the user trashed the folder in the web UI
    fresh = fake_drive.connect()
    assert not fresh.exists("root/runs/a/weights.bin")
    assert fake_drive.find("weights.bin", trashed=True)


def test_overwrites_under_lagging_listings_read_the_newest(fs: Any, fake_drive: FakeDrive) -> None:
    fake_drive.lag = 3  # a just-written title is missing from listings for a while
    for text in (b"first", b"second", b"third"):
        fs.pipe_file("root/lease.json", text)
    live = fake_drive.find("lease.json")
    assert len(live) > 1  # the lag hid the old copies from the writer: several of one name
    assert fs.cat_file("root/lease.json") in (b"first", b"second", b"third")  # stale but whole
    fake_drive.lag = 0  # the listing catches up
    assert fs.cat_file("root/lease.json") == b"third"  # the newest, never the smallest id
    fs.pipe_file("root/lease.json", b"fourth")
    (only,) = fake_drive.find("lease.json")  # the next write cleared them once visible
    assert fake_drive.read(only["id"]) == b"fourth"
    fake_drive.lag = 3
    fs.pipe_file("root/lease.json", b"fifth")
    fs.pipe_file("root/lease.json", b"sixth")  # the lag hides "fifth": two of the name
    fake_drive.lag = 0
    assert len(fake_drive.find("lease.json")) == 2
    fs.rm_file("root/lease.json")
    assert fake_drive.find("lease.json") == []  # every file of the name went
    assert fake_drive.find("lease.json", trashed=True) == []  # for good: they were ours


def test_a_title_listed_twice_is_one_name(fs: Any, fake_drive: FakeDrive) -> None:
    from colabsession._storage.store import Store

    fake_drive.lag, fake_drive.doubles = 2, True
    fs.pipe_file("root/run/ckpt.bin", b"x")
    store = Store(cs.drive.Location(fs, "root/run", "drive:run"), timeout=30, durable=False)
    assert store.names() == ["ckpt.bin"]


def test_checkpoints_survive_lag_doubles_and_creations_that_fail(
    tmp_path: Path, fs: Any, fake_drive: FakeDrive
) -> None:
    from .test_checkpoint import assert_state, state_at, steps_in

    location = cs.drive.Location(fs, "root/checkpoints/run", "drive:checkpoints/run (API)")
    fake_drive.lag, fake_drive.doubles = 2, True
    fake_drive.fail_after_create(2)  # the upload creates the file, then answers 500
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1", keep_last=2) as ckpt:
        for step in range(4):
            ckpt.save(step, state_at(step), metrics={"loss": 1.0 / (step + 1)})
        assert ckpt.sync(timeout=60) == []
    fake_drive.lag, fake_drive.doubles = 0, False
    # A twin of one name (identical bytes) may remain where the lag hid it from the writer.
    assert sorted(set(steps_in(fs.ls(location.path)))) == [2, 3]
    fresh = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2")
    restored = fresh.restore()
    assert restored is not None
    assert restored.step == 3
    assert_state(restored.state, 3)
    fresh.close()


def test_an_upload_that_fails_after_creating_leaves_one_file(
    fs: Any, fake_drive: FakeDrive
) -> None:
    fake_drive.fail_after_create(1)
    fs.pipe_file("root/manifest.json", b"whole")
    (live,) = fake_drive.find("manifest.json")
    assert fake_drive.read(live["id"]) == b"whole"
    assert fake_drive.find("manifest.json", trashed=True) == []  # the twin, deleted for good
    assert fake_drive.used() == (5, 0)


def test_429_is_retried(fs: Any, fake_drive: FakeDrive) -> None:
    fs.pipe_file("root/a.txt", b"hello")
    fake_drive.fail(2, 429, "rateLimitExceeded", message="Too Many Requests")
    assert fs.cat_file("root/a.txt") == b"hello"
    fake_drive.rate_limit(1)  # the per-minute quota: retried too
    assert fs.ls("root") == ["root/a.txt"]


def test_the_daily_upload_cap_is_not_retried(
    tmp_path: Path, fs: Any, fake_drive: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    from .test_checkpoint import state_at

    fake_drive.upload_cap = 100
    before = fake_drive.count("/upload/")
    with pytest.raises(cs.DriveQuotaError, match="750 GB a day"):
        fs.pipe_file("root/big.bin", b"x" * 1000)
    assert fake_drive.count("/upload/") - before <= 2  # one session, one refused chunk
    # A Checkpointer goes on training; the user is told what is not on Drive, and why.
    location = cs.drive.Location(fs, "root/run", "drive:run (API)")
    with caplog.at_level(logging.WARNING, "colabsession"):
        ckpt = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm")
        ckpt.save(1, state_at(1))
        assert ckpt.sync(timeout=10) == [1]
        ckpt.close_timeout = 1
        ckpt.close()
    assert "750 GB a day" in caplog.text
    assert "NOT yet on" in caplog.text


def test_service_account_in_my_drive_gets_the_right_advice(
    key_file: Path, fake_drive: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    shared = fake_drive.folder("colab", share=True)  # a user's folder, shared with the account
    with caplog.at_level(logging.WARNING, "colabsession"):
        fs = cs.drive.connect(
            service_account=key_file, folder=shared, api_endpoint=fake_drive.endpoint
        )
    assert "not in a shared drive" in caplog.text
    fs.makedirs(f"{shared}/runs", exist_ok=True)  # folders hold no bytes: allowed
    with pytest.raises(cs.DriveQuotaError, match=r"shared drive.*sign_in") as info:
        fs.pipe_file(f"{shared}/runs/a.txt", b"a")
    assert "trainer@test-project" in str(info.value)
    assert (info.value.status, info.value.reason) == (403, "storageQuotaExceeded")
    team = fake_drive.shared_drive()
    with pytest.raises(cs.ConfigError, match="timeout"):
        cs.drive.connect(service_account=key_file, folder=team, timeout="soon")
    fs = cs.drive.connect(
        service_account=key_file, folder=team, api_endpoint=fake_drive.endpoint, timeout="30s"
    )
    fs.pipe_file(f"{team}/runs/a.txt", b"a")
    assert fs.cat_file(f"{team}/runs/a.txt") == b"a"


def test_a_full_drive_says_so(fs: Any, fake_drive: FakeDrive) -> None:
    fake_drive.fail(1, 403, "storageQuotaExceeded", match="/upload/", message="quota")
    with pytest.raises(cs.DriveQuotaError, match="Drive is full"):
        fs.pipe_file("root/a.txt", b"a")


def test_an_unshared_folder_is_a_clear_auth_error(key_file: Path, fake_drive: FakeDrive) -> None:
    private = fake_drive.folder("private")  # never shared with the service account
    with pytest.raises(cs.DriveAuthError, match=r"not visible to trainer@.*share it"):
        cs.drive.connect(service_account=key_file, folder=private, api_endpoint=fake_drive.endpoint)
    with pytest.raises(cs.DriveAuthError, match="not visible"):
        cs.drive.connect(
            service_account=key_file, folder="1NoSuchId", api_endpoint=fake_drive.endpoint
        )
    doc = fake_drive.doc("notes")
    with pytest.raises(cs.DriveAuthError, match="not a folder"):
        fake_drive.connect(folder=doc)


def test_uploads_in_many_chunks_and_expired_sessions(fs: Any, fake_drive: FakeDrive) -> None:
    data = bytes(range(256)) * 40  # 10 KiB
    fake_drive.chunk_limit = 3000  # the server keeps part of each chunk; the client resends
    fs.pipe_file("root/chunks.bin", data)
    assert fs.cat_file("root/chunks.bin") == data
    puts = fake_drive.count("PUT /upload/")
    assert puts >= 4
    fake_drive.expire_uploads(1)  # the session dies after its first chunk: start again
    fs.pipe_file("root/again.bin", data[::-1])
    assert fs.cat_file("root/again.bin") == data[::-1]
    (item,) = fake_drive.find("again.bin")
    assert fake_drive.read(item["id"]) == data[::-1]


def test_range_downloads(fs: Any, fake_drive: FakeDrive, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    fs.pipe_file("root/ranged.bin", data)
    (item,) = fake_drive.find("ranged.bin")
    assert item.get("md5Checksum")
    file = fs.client.CreateFile({"id": item["id"]})
    file.GetContentFile(str(tmp_path / "out.bin"), chunksize=1000)
    assert (tmp_path / "out.bin").read_bytes() == data
    assert fake_drive.count("alt=media") >= 10


def test_google_docs_in_a_run_folder_are_ignored(
    tmp_path: Path, fs: Any, fake_drive: FakeDrive
) -> None:
    from .test_checkpoint import state_at

    location = cs.drive.Location(fs, "root/run", "drive:run (API)")
    with cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm1") as ckpt:
        ckpt.save(1, state_at(1))
    (run,) = fake_drive.find("run")
    fake_drive.doc("notes about this run", parent=run["id"])
    (entry,) = [e for e in fs.ls("root/run", detail=True) if e["name"].endswith("run")]
    assert entry["size"] is None  # a Doc: no size, no md5
    assert [i["mimeType"] for i in fake_drive.find("notes about this run")] == [DOCUMENT]
    restored = cs.Checkpointer(location, every=None, local_dir=tmp_path / "vm2").restore()
    assert restored is not None
    assert restored.step == 1


def test_google_docs_in_a_data_folder_are_left_out(
    fs: Any, fake_drive: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    fs.pipe_file("root/raw/a.jpg", b"a" * 100)
    (raw,) = fake_drive.find("raw")
    fake_drive.doc("about the data", parent=raw["id"])
    with caplog.at_level(logging.WARNING, "colabsession"):
        staged = cs.data.stage(cs.drive.Location(fs, "root/raw", "drive:raw"))
    assert sorted(p.name for p in staged.iterdir()) == ["a.jpg"]
    assert "Google Docs" in caplog.text
    assert "about the data" in caplog.text


def test_fields_trim_answers(fs: Any, fake_drive: FakeDrive) -> None:
    fs.pipe_file("root/f.txt", b"f")
    (item,) = fake_drive.find("f.txt")
    answer = fs.client.auth.service.files().get(fileId=item["id"], fields="id,labels").execute()
    assert answer == {"id": item["id"], "labels": {"trashed": False}}
    full = fs.client.auth.service.files().get(fileId=item["id"]).execute()
    assert full["downloadUrl"].endswith(f"/drive/v2/files/{item['id']}?alt=media")


def test_transport_gives_up_after_its_tries_with_a_clear_error() -> None:
    from colabsession._drive.api import Transport

    class Busy:
        calls = 0

        def request(self, uri: str, method: str = "GET", **kw: Any) -> Any:
            Busy.calls += 1
            error = {"error": {"errors": [{"reason": "backendError"}], "code": 503}}
            return types.SimpleNamespace(status=503), json.dumps(error).encode()

    pauses: list[float] = []
    transport = Transport(Busy(), account=None, tries=4, sleep=pauses.append)
    with pytest.raises(cs.DriveAPIError, match="503 backendError after 4 tries"):
        transport.request("https://www.googleapis.com/drive/v2/files")
    assert Busy.calls == 4
    assert pauses == [0.5, 1.0, 2.0]


# Signing in as yourself (local Jupyter) -----------------------------------------------------------

CLIENT = {
    "installed": {
        "client_id": "cid.apps.googleusercontent.com",
        "client_secret": "SHH-CLIENT",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
}


def _user_flow() -> Any:
    """What the browser sign-in returns: a person's credentials with a refresh token."""

    def run(flow: Any) -> Any:
        from datetime import datetime, timedelta, timezone

        from google.oauth2.credentials import Credentials as UserCredentials

        assert "https://www.googleapis.com/auth/drive" in flow.oauth2session.scope
        return UserCredentials(  # type: ignore[no-untyped-call]
            token="test-token",
            refresh_token="SECRET-REFRESH",
            client_id="cid.apps.googleusercontent.com",
            client_secret="SHH-CLIENT",
            token_uri="https://oauth2.googleapis.com/token",
            scopes=["https://www.googleapis.com/auth/drive"],
            expiry=(datetime.now(timezone.utc) + timedelta(hours=1)).replace(tzinfo=None),
        )

    return run


def test_sign_in_keeps_a_private_token_and_connect_uses_it(
    isolated: Path,
    fake_drive: FakeDrive,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not cs.drive.api_configured()
    cs.drive.sign_in(CLIENT, run_flow=_user_flow())
    token = isolated / "drive-token.json"
    assert token.stat().st_mode & 0o777 == 0o600
    assert json.loads(token.read_text())["refresh_token"] == "SECRET-REFRESH"
    out = capsys.readouterr().out + caplog.text
    assert "signed in" in out
    assert "SECRET" not in out
    assert "SHH" not in out
    assert cs.drive.api_configured()
    creds = cs.drive.load_credentials()
    assert creds.refresh_token == "SECRET-REFRESH"
    assert "SECRET" not in repr(creds)
    fs = cs.drive.connect(api_endpoint=fake_drive.endpoint)  # the saved sign-in
    fs.pipe_file("root/mine.txt", b"mine")  # a person's own Drive has storage
    assert cs.drive.sign_out()
    assert not token.exists()
    assert not cs.drive.sign_out()


def test_sign_in_failures_are_clear_and_never_echo_secrets(isolated: Path, tmp_path: Path) -> None:
    with pytest.raises(cs.DriveAuthError, match="Desktop app"):
        cs.drive.sign_in()
    bad = tmp_path / "client.json"
    bad.write_text('{"installed": {"client_secret": "SHH-CLIENT"}}')
    with pytest.raises(cs.DriveAuthError, match="Download the client's JSON") as info:
        cs.drive.sign_in(bad)
    assert "SHH" not in str(info.value)

    def gave_up(flow: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'replace'")  # a timeout

    with pytest.raises(cs.DriveAuthError, match=r"did not finish.*it has 5s"):
        cs.drive.sign_in(CLIENT, run_flow=gave_up, timeout=5)
    with pytest.raises(cs.DriveAuthError, match="it has 2m"):  # one duration type everywhere
        cs.drive.sign_in(CLIENT, run_flow=gave_up, timeout="2min")
    token = isolated / "drive-token.json"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text('{"refresh_token": "SECRET-REFRESH"')  # cut short
    with pytest.raises(cs.DriveAuthError, match=r"sign_in\(\) again") as info:
        cs.drive.load_credentials()
    assert "SECRET" not in str(info.value)


def test_a_sign_in_that_cannot_be_kept_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("COLABSESSION_HOME", str(blocked / "home"))  # cannot be created
    with pytest.raises(cs.DriveAuthError, match="cannot be kept") as info:
        cs.drive.sign_in(CLIENT, run_flow=_user_flow())
    assert "SECRET" not in str(info.value)


def test_the_fake_counts_storage_as_drive_does(fs: Any, fake_drive: FakeDrive) -> None:
    """Trashed files count against the quota until purged; a full quota refuses uploads."""
    files = fs.client.auth.service.files()
    fake_drive.quota = 100
    runs = fake_drive.folder("runs")
    inside = fake_drive.file("a.bin", b"a" * 30, parent=runs)
    loose = fake_drive.file("b.bin", b"b" * 30)
    about = fs.client.auth.service.about().get().execute()
    assert (about["quotaBytesUsed"], about["quotaBytesUsedInTrash"]) == ("60", "0")
    assert about["quotaBytesTotal"] == "100"
    files.trash(fileId=loose).execute()
    files.trash(fileId=runs).execute()
    assert fake_drive.used() == (60, 60)  # trashed: still counted
    with pytest.raises(cs.DriveQuotaError, match="Drive is full"):
        fs.pipe_file("root/c.bin", b"c" * 50)
    assert fake_drive.count("/upload/") <= 2  # one session, one refused chunk: not retried
    files.delete(fileId=runs).execute()  # for good, with what is in it
    assert fake_drive.used() == (30, 30)
    assert inside not in fake_drive.state.files
    files.emptyTrash().execute()
    assert fake_drive.used() == (0, 0)
    fs.pipe_file("root/c.bin", b"c" * 50)
    team = fake_drive.shared_drive()
    fake_drive.file("t.bin", b"t" * 80, parent=team)  # a shared drive's bytes are not the user's
    assert fake_drive.used() == (50, 0)


def test_only_what_colabsession_wrote_is_deleted_for_good(
    fs: Any, fake_drive: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own files (marked at upload) skip the Trash; the user's, folders, and files of the
    same name that colabsession did not write go to the Trash, whence they can be restored."""
    fs.pipe_file("root/run/ours.bin", b"o" * 10)
    (ours,) = fake_drive.find("ours.bin")
    assert {"key": "colabsession", "value": "1"}.items() <= ours["properties"][0].items()
    (run,) = fake_drive.find("run")
    theirs = fake_drive.file("theirs.bin", b"t" * 20, parent=run["id"])
    # A property of another app, or the mark's name with another visibility, is not the mark.
    fake_drive.file("lookalike.bin", b"l" * 30, run["id"], [{"key": "colabsession", "value": "1"}])
    fs.rm_file("root/run/ours.bin")
    fs.rm_file("root/run/theirs.bin")
    fs.rm_file("root/run/lookalike.bin")
    assert fake_drive.find("ours.bin", trashed=True) == []
    assert [f["id"] for f in fake_drive.find("theirs.bin", trashed=True)] == [theirs]
    assert len(fake_drive.find("lookalike.bin", trashed=True)) == 1
    assert fake_drive.used() == (50, 50)
    # A write that replaces the user's file of a name trashes it, and deletes its own.
    fake_drive.file("notes.txt", b"user's", parent=run["id"])
    fs.pipe_file("root/run/notes.txt", b"first")
    fs.pipe_file("root/run/notes.txt", b"second")
    assert [fake_drive.read(f["id"]) for f in fake_drive.find("notes.txt", trashed=True)] == [
        b"user's"
    ]
    # A folder goes to the Trash (deleting it for good would take what the user put in it).
    fs.rm("root/run", recursive=True)
    assert fake_drive.find("run", trashed=True)
    assert fake_drive.find("notes.txt") == []
    assert [fake_drive.read(f["id"]) for f in fake_drive.find("notes.txt", trashed=True)] == [
        b"user's"  # what colabsession wrote in it went first, for good
    ]
    # Where the account may trash but not delete, colabsession's files go to the Trash too.
    fake_drive.trash_only = True
    with caplog.at_level(logging.WARNING, "colabsession"):
        for n in range(2):
            fs.pipe_file(f"root/team/{n}.bin", b"x")
            fs.rm_file(f"root/team/{n}.bin")
    assert len(fake_drive.find("0.bin", trashed=True) + fake_drive.find("1.bin", trashed=True)) == 2
    assert caplog.text.count("trash but not delete") == 1


def _rotating_run(
    fs: Any, fake_drive: FakeDrive, local: Path, saves: int
) -> tuple[list[int], int | None]:
    """A run that saves a tiny checkpoint *saves* times with ``keep_last=3``, each copied to
    Drive through the API before the next: the bytes counting against the Drive's quota after
    each save, and the first step that Drive refused (None: none was)."""
    import numpy as np

    location = cs.drive.Location(fs, "root/checkpoints/run", "drive:checkpoints/run (API)")
    used: list[int] = []
    with cs.Checkpointer(
        location, every=None, keep_last=3, async_save=False, local_dir=local, close_timeout=1
    ) as ckpt:
        for step in range(saves):
            ckpt.save(step, {"w": np.full(250, step, np.float32)})
            left = ckpt.sync(timeout=30)
            used.append(fake_drive.used()[0])
            if left:
                return used, step
    return used, None


def _checkpoints(fake_drive: FakeDrive) -> list[dict[str, Any]]:
    """The checkpoint files on the fake Drive, trashed ones too."""
    return [f for f in fake_drive.state.files.values() if f["title"].endswith(".ckpt")]


def test_rotation_does_not_fill_the_drive(
    tmp_path: Path, fs: Any, fake_drive: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23: 200 saves with keep_last=3 keep about 3 checkpoints' worth of the quota,
    where the Trash grew by one checkpoint a save; a Drive with room for 10 never fills."""
    fake_drive.quota = 10 * 1500  # ten checkpoints (of about 1.4 kB each)
    with caplog.at_level(logging.WARNING, "colabsession"):
        used, refused = _rotating_run(fs, fake_drive, tmp_path / "vm", 200)
    assert refused is None, caplog.text
    kept = _checkpoints(fake_drive)
    assert len(kept) == 3
    assert len(used) == 200
    size = max(int(f["fileSize"]) for f in kept)
    assert max(used) < 4 * size  # three checkpoints and the run's small files
    assert fake_drive.used()[1] == 0  # nothing in the Trash
    assert "Drive is full" not in caplog.text


def test_rotation_through_the_trash_fills_the_drive(
    tmp_path: Path, fs: Any, fake_drive: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    """Why: rotated checkpoints sent to the Trash (as before, and as where the account may only
    trash) keep counting, one more each save, until Drive refuses the next upload."""
    fs.permanent_delete = False
    fake_drive.quota = 10 * 1500
    with caplog.at_level(logging.WARNING, "colabsession"):
        used, refused = _rotating_run(fs, fake_drive, tmp_path / "vm", 200)
    size = min(int(f["fileSize"]) for f in _checkpoints(fake_drive))
    assert refused is not None
    assert refused < 12
    grown = [later - earlier for earlier, later in itertools.pairwise(used[:refused])]
    assert all(growth >= size for growth in grown)  # a checkpoint more with each save
    assert fake_drive.used()[1] >= (refused - 3) * size
    assert "Drive is full" in caplog.text
