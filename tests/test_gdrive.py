"""The Drive API path end to end: real pydrive2, googleapiclient and google-auth against the fake
Drive API server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import types
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

import colabsession as cs

from .fake_drive_api import FakeDrive

pytest.importorskip("pydrive2.fs")


def Credentials(token: str) -> Any:
    from google.oauth2 import credentials

    return credentials.Credentials(token=token)  # type: ignore[no-untyped-call]


@pytest.fixture
def fs(fake_drive: FakeDrive) -> Any:
    return cs.drive.connect(
        credentials=Credentials(token="test-token"), api_endpoint=fake_drive.endpoint
    )


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
    assert fake_drive.find("weights.bin", trashed=True)  # moved to the trash, not destroyed
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
    assert fake_drive.count("/upload/") == 1  # not retried


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
    monkeypatch.setenv("COLABSESSION_SERVICE_ACCOUNT", str(key_file))
    monkeypatch.setenv("COLABSESSION_DRIVE_API_ENDPOINT", fake_drive.endpoint)
    loc = cs.drive.resolve("drive:checkpoints/run")
    assert loc.path == "root/checkpoints/run"
    assert str(loc) == "drive:checkpoints/run (Drive API)"
    loc.fs.pipe_file(loc.path + "/step.txt", b"42")
    assert loc.fs.cat_file("root/checkpoints/run/step.txt") == b"42"
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
    creds = Credentials(token="colab-user")
    default = mocker.patch("google.auth.default", return_value=(creds, "project"))
    assert cs.drive.load_credentials() is creds
    fake_colab.auth.authenticate_user.assert_called_once()
    assert "https://www.googleapis.com/auth/drive" in default.call_args.kwargs["scopes"]


def test_expired_credentials_are_an_auth_error(fake_drive: FakeDrive) -> None:
    fs = cs.drive.connect(
        credentials=Credentials(token="revoked"), api_endpoint=fake_drive.endpoint
    )
    with pytest.raises(cs.DriveAuthError, match="authentication failed") as info:
        fs.ls("root/anything")
    assert "revoked" not in str(info.value)
