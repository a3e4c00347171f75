"""Framework caches kept on Drive (issue 27): symbolic links through cs.data, and cs.cache's
incremental, content-addressed saves under concurrent sessions, kills and damage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

import colabsession as cs
from colabsession._cache import manifest as _cache_manifest
from colabsession._storage.store import Store

from .test_data import tree

MODEL = "tiny-org/tiny-bert"
REPO = "models--tiny-org--tiny-bert"
MiB = 1 << 20


def hub_layout(hub: Path, source: Path, revisions: dict[str, dict[str, bytes]]) -> None:
    """A Hugging Face hub cache as huggingface_hub writes it: each file once in blobs/ under
    its sha256, each revision's snapshot folder linking into blobs/, refs/main naming the
    last revision."""
    repo = hub / REPO
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for revision, files in revisions.items():
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            sha = hashlib.sha256(data).hexdigest()
            (repo / "blobs" / sha).write_bytes(data)
            (snapshot / name).symlink_to(f"../../blobs/{sha}")
        (repo / "refs" / "main").write_text(revision)
    (hub / ".locks" / REPO).mkdir(parents=True, exist_ok=True)  # left out by saves


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A tiny BERT's files (config and safetensors weights), written by save_pretrained."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def load(hub: Path, monkeypatch: pytest.MonkeyPatch, revision: str | None = None) -> Any:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants
    import transformers

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return transformers.BertModel.from_pretrained(
        MODEL, local_files_only=True, cache_dir=str(hub), revision=revision or "main"
    )


def revisions(model: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    older = json.loads(model["config.json"])
    older["hidden_dropout_prob"] = 0.25
    return {
        "a" * 40: {**model, "config.json": json.dumps(older).encode()},
        "b" * 40: model,
    }


# Symbolic links through cs.data ------------------------------------------------------------


def test_a_hugging_face_cache_packed_and_staged_loads_offline(
    isolated: Path, tiny_model: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = cs.mount()
    hub = drive / "caches" / "hub"
    hub_layout(hub, hub, revisions(tiny_model))
    info = cs.data.pack("drive:caches/hub")
    links = [m for s in info.shards for m in s.members if m.link]
    assert len(links) == 4
    assert all(m.link.startswith("../../blobs/") for m in links)
    staged = cs.data.stage("drive:caches/hub")
    snapshot = staged / REPO / "snapshots" / ("b" * 40)
    # Before: the links were dropped and the snapshot folders came back empty.
    assert os.readlink(snapshot / "config.json").startswith("../../blobs/")
    assert tree(staged) == tree(hub)
    model = load(staged, monkeypatch)
    assert model.config.hidden_size == 16
    assert model.config.hidden_dropout_prob == 0.1
    older = load(staged, monkeypatch, revision="a" * 40)
    assert older.config.hidden_dropout_prob == 0.25


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../b/../../../x"])
def test_a_link_pointing_outside_is_refused_at_pack_time_by_name(
    isolated: Path, target: str
) -> None:
    folder = cs.mount() / "datasets" / "linked"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "file.txt").write_text("x")
    (folder / "a" / "inside").symlink_to("file.txt")
    (folder / "a" / "escape").symlink_to(target)
    with pytest.raises(cs.DataError, match=r"point outside.*'a/escape'") as caught:
        cs.data.pack("drive:datasets/linked")
    assert caught.value.path is not None
    assert caught.value.path.endswith("a/escape")
    assert not (folder.parent / "linked.packed").exists()  # nothing written


def test_a_plain_folder_staged_file_by_file_keeps_its_links(isolated: Path) -> None:
    folder = cs.mount() / "datasets" / "plain"
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / "x").write_bytes(b"data")
    (folder / "snap").mkdir()
    (folder / "snap" / "x").symlink_to("../blobs/x")
    (folder / "out").symlink_to("/etc")  # left out, with a warning: it leads outside
    staged = cs.data.stage("drive:datasets/plain")
    assert os.readlink(staged / "snap" / "x") == "../blobs/x"
    assert (staged / "snap" / "x").read_bytes() == b"data"
    assert not os.path.lexists(staged / "out")


def _tar(entries: list[tuple[str, str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, link, data in entries:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("evil", "../../outside", b"")], "outside"),
        ([("sub/x", "", b"1"), ("ln", "sub", b""), ("ln/y", "", b"2")], "passes through"),
        ([("a", "b/../..", b""), ("b", ".", b"")], "outside"),
    ],
)
def test_an_untrusted_archive_with_escaping_links_is_refused_on_extract(
    isolated: Path, entries: list[tuple[str, str, bytes]], why: str
) -> None:
    drive = cs.mount()
    (drive / "datasets").mkdir(exist_ok=True)
    (drive / "datasets" / "evil.tar").write_bytes(_tar(entries))
    with pytest.raises(cs.DataError, match=why):
        cs.data.stage("drive:datasets/evil.tar")
    assert not list((isolated / "datasets").glob("evil*"))


# cs.cache ------------------------------------------------------------------------------------


class Uploads:
    """Every file written to Drive through the gateway (Store.put_file), by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = Store.put_file

        def counted(store: Store, source: Any, name: str, **kwargs: Any) -> None:
            self.names.append(name)
            real(store, source, name, **kwargs)

        monkeypatch.setattr(Store, "put_file", counted)

    def take(self) -> tuple[int, int]:
        """(blobs, parts) uploaded since the last call."""
        blobs = sum(1 for n in self.names if _cache_manifest.BLOB.fullmatch(n))
        parts = sum(1 for n in self.names if _cache_manifest.PART.fullmatch(n))
        self.names.clear()
        return blobs, parts


def model_files(seed: int, size: int = 2 * MiB) -> dict[str, bytes]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return {"model.safetensors": data, "config.json": json.dumps({"seed": seed}).encode()}


def add_model(hub: Path, name: str, seed: int) -> None:
    repo = hub / f"models--org--{name}"
    for file, data in model_files(seed).items():
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / sha).write_bytes(data)
        (repo / "snapshots" / "r1").mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / "r1" / file).symlink_to(f"../../blobs/{sha}")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("r1")


def new_machine(tmp: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A fresh VM: its own home, colabsession home and an empty hub cache (Drive is shared)."""
    for variable in ("HF_HOME", "HF_DATASETS_CACHE", "TORCH_HOME", "KERAS_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp / name / "user"))
    monkeypatch.setenv("COLABSESSION_HOME", str(tmp / name / "home"))
    monkeypatch.setenv("COLABSESSION_DRIVE", str(tmp / "drive"))
    hub = tmp / name / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub


def test_cache_round_trip_loads_the_model_offline(
    isolated: Path,
    tmp_path: Path,
    tiny_model: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    hub_layout(hub, hub, revisions(tiny_model))
    (saved,) = cs.cache.save()  # every known cache that exists here: only this one
    assert saved.name == "huggingface"
    assert saved.uploaded == 1
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    (restored,) = cs.cache.restore()
    assert restored.restored == saved.files
    assert Path(restored.path) == hub
    locks = {".locks": None, f".locks/{REPO}": None}  # left out
    assert tree(hub) | locks == tree(tmp_path / "vm1" / "hub")
    assert load(hub, monkeypatch).config.hidden_size == 16
    again = cs.cache.restore("huggingface")[0]  # nothing new on Drive: returns at once
    assert again.note == "restored"
    assert again.restored == 0


def test_an_incremental_save_uploads_only_new_blobs(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = Uploads(monkeypatch)
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    cs.cache.save("huggingface")
    assert uploads.take() == (1, 1)  # the weights; the small files in one part
    cs.cache.save("huggingface")
    assert uploads.take() == (0, 0)  # nothing changed: nothing uploaded, no new manifest
    add_model(hub, "b", 2)
    report = cs.cache.save("huggingface")[0]
    assert uploads.take() == (1, 1)
    assert report.uploaded_bytes < 3 * MiB
    # A new session restores both, downloads a third model: only that one is uploaded.
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    cs.cache.restore("huggingface")
    add_model(hub, "c", 3)
    cs.cache.save("huggingface")
    assert uploads.take() == (1, 1)
    # Back on the first machine: only the weights it lacks are copied down.
    fetched: list[str] = []
    real_fetch = Store.fetch_file

    def counted_fetch(store: Store, name: str, *args: Any, **kwargs: Any) -> str:
        fetched.append(name)
        return real_fetch(store, name, *args, **kwargs)

    monkeypatch.setattr(Store, "fetch_file", counted_fetch)
    new_machine(tmp_path, monkeypatch, "vm1")
    assert cs.cache.restore("huggingface")[0].restored == 5  # model c
    assert sum(1 for n in fetched if _cache_manifest.BLOB.fullmatch(n)) == 1
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    # The same weights under another name are not uploaded either (content-addressed).
    add_model(hub, "c-copy", 3)
    cs.cache.save("huggingface")
    assert uploads.take() == (0, 1)
    (info,) = cs.cache.size("huggingface")
    assert info.heads == 1
    assert info.files == 4 * 5
    assert 3 * 2 * MiB <= info.stored < 3 * 2 * MiB + 64 * 1024  # each blob once


def test_two_sessions_saving_one_cache_at_once_lose_nothing(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = new_machine(tmp_path, monkeypatch, "vm0")
    add_model(hub, "base", 0)
    cs.cache.save("huggingface")
    # Two sessions restore it, each downloads another model, and both save at once: each
    # read Drive before the other committed.
    read_before: dict[str, Any] = {}
    real_heads = _cache_manifest.heads

    def heads_as_first_read(store: Store, names: set[str]) -> Any:
        key = str(store)
        if key not in read_before:
            read_before[key] = (real_heads(store, names), names)
        found, _first_names = read_before[key]
        return found

    for vm, (name, seed) in (("vm1", ("one", 1)), ("vm2", ("two", 2))):
        hub = new_machine(tmp_path, monkeypatch, vm)
        cs.cache.restore("huggingface")
        add_model(hub, name, seed)
    monkeypatch.setattr(_cache_manifest, "heads", heads_as_first_read)
    for vm in ("vm1", "vm2"):
        new_machine(tmp_path, monkeypatch, vm)
        (tmp_path / vm / "home").mkdir(exist_ok=True)
        cs.cache.save("huggingface")
    monkeypatch.setattr(_cache_manifest, "heads", real_heads)
    assert cs.cache.size("huggingface")[0].heads == 2  # both committed, neither overwritten
    hub = new_machine(tmp_path, monkeypatch, "vm3")
    cs.cache.restore("huggingface")
    for name in ("base", "one", "two"):
        assert (hub / f"models--org--{name}" / "snapshots" / "r1" / "model.safetensors").is_file()
    cs.cache.save("huggingface")  # merges the two heads into one
    (info,) = cs.cache.size("huggingface")
    assert info.heads == 1
    assert info.files == 3 * 5


KILLED_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import colabsession as cs
from colabsession._storage.store import Store
real = Store.put_file
count = []
def put_file(self, source, name, **kwargs):
    count.append(name)
    if len(count) == 2:  # the second blob is being uploaded: the VM dies
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, source, name, **kwargs)
Store.put_file = put_file
cs.cache.save("huggingface")
"""


def test_a_kill_during_a_save_leaves_the_previous_cache_intact(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    cs.cache.save("huggingface")
    before = tree(hub)
    add_model(hub, "b", 2)
    add_model(hub, "c", 3)
    script = KILLED_SAVE.format(root=str(Path(__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=dict(os.environ), timeout=60
    )
    assert done.returncode == -signal.SIGKILL
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    (report,) = cs.cache.restore("huggingface")
    assert tree(hub) == before
    assert report.files == 5
    # The next save completes it; what the killed one left is pruned once old enough.
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    assert cs.cache.save("huggingface")[0].files == 15
    orphans = cs.cache.prune("huggingface", _now=lambda: 4e9)[0]
    assert orphans.removed >= 1  # the blob uploaded before the kill, named by no manifest


def test_what_is_restored_is_verified_before_use(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = tmp_path / "drive"
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    cs.cache.save("huggingface")
    (blob,) = (drive / "Colab Notebooks/colabsession/caches/huggingface/blobs").iterdir()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1  # same size, one bit flipped
    blob.write_bytes(bytes(data))
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    with pytest.raises(cs.CacheError, match="damaged") as caught:
        cs.cache.restore("huggingface")
    assert caught.value.cache == "huggingface"
    assert not hub.exists()
    assert not list(hub.parent.glob(".hub.restoring-*"))


def test_a_manifest_whose_link_leads_outside_is_skipped(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = tmp_path / "drive"
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    cs.cache.save("huggingface")
    folder = drive / "Colab Notebooks/colabsession/caches/huggingface"
    (name,) = [p for p in folder.iterdir() if p.name.startswith("manifest.")]
    body = json.loads(name.read_text())
    link = next(e for e in body["entries"] if e["kind"] == "link")
    link["signature"] = "link:../../../../../etc/passwd"
    name.write_text(json.dumps(body))
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    assert cs.cache.restore("huggingface")[0].note == "nothing saved yet"  # skipped, warned
    assert not hub.exists()


def test_keep_saves_a_cache_once_it_stops_changing(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = Uploads(monkeypatch)
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    hub.mkdir(parents=True)
    keeper = cs.cache.keep("huggingface", every="1h")  # checked by hand below
    try:
        assert keeper.check() == []
        add_model(hub, "a", 1)
        assert keeper.check() == []  # changed since the last look: a download may go on
        (report,) = keeper.check()  # unchanged since: saved
        assert report.uploaded == 2
        assert uploads.take() == (1, 1)
        assert keeper.check() == []
        add_model(hub, "b", 2)
    finally:
        keeper.stop()  # saves what changed meanwhile
    assert uploads.take() == (1, 1)
    assert not keeper.errors


def test_prune_by_age_and_size(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    cs.cache.save("huggingface")
    shutil.rmtree(hub / "models--org--a")
    add_model(hub, "b", 2)
    cs.cache.save("huggingface")
    assert cs.cache.size()[0].files == 10  # a is kept: no save loses a file
    report = cs.cache.prune("huggingface", max_size="3MiB")[0]
    assert report.files == 5 + 3  # the older weights went, with the link to them
    later = cs.cache.prune("huggingface", older_than="30d", _now=lambda: 4e9)[0]
    assert later.files == 0
    assert later.removed >= 2


def test_cli_cache_commands(
    isolated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from colabsession._cli import main

    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    assert main(["cache", "save"]) == 0
    capsys.readouterr()
    assert main(["cache", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == ["huggingface"]
    new_machine(tmp_path, monkeypatch, "vm2")
    assert main(["cache", "restore", "huggingface"]) == 0
    assert main(["cache", "prune", "--max-size", "1GB"]) == 0
    capsys.readouterr()
    assert main(["cache", "save", "not-a-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not a known cache" in err


def test_a_file_that_changes_while_it_is_uploaded_is_not_saved_under_its_old_hash(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    (weights,) = [p for p in (hub / "models--org--a" / "blobs").iterdir() if p.stat().st_size > MiB]
    weights.write_bytes(weights.read_bytes()[: MiB + 10])  # still a blob, not yet what it says
    real = Store.put_file

    def writing_meanwhile(store: Store, source: Any, name: str, **kwargs: Any) -> None:
        real(store, source, name, **kwargs)
        with open(weights, "ab") as f:  # the download goes on
            f.write(b"more")
        os.utime(weights, (1, 1))

    monkeypatch.setattr(Store, "put_file", writing_meanwhile)
    with pytest.raises(cs.CacheError, match="changed while it was being saved"):
        cs.cache.save("huggingface")
    monkeypatch.setattr(Store, "put_file", real)
    assert cs.cache.size("huggingface") == []  # nothing committed
    blobs = tmp_path / "drive/Colab Notebooks/colabsession/caches/huggingface/blobs"
    assert not list(blobs.iterdir())  # the blob whose name no longer says its content: gone
    assert cs.cache.save("huggingface")[0].uploaded == 2  # once it is complete


def test_keep_saves_at_once_when_a_checkpointer_makes_its_final_save(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from .test_checkpoint import state_at

    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    keeper = cs.cache.keep("huggingface", every="1h")  # never on its own in this test
    saved = threading.Event()
    real = _cache_manifest.heads

    def heads(store: Store, names: set[str]) -> Any:
        found = real(store, names)
        saved.set()
        return found

    monkeypatch.setattr(_cache_manifest, "heads", heads)
    try:
        with cs.Checkpointer(tmp_path / "run", every=None) as ckpt:
            ckpt.request_stop("the deadline")
            assert ckpt.maybe_save(1, state_at(1))
            assert ckpt.should_stop
        assert saved.wait(60)  # the keeper's thread saves, not the training loop
    finally:
        keeper.stop(save=False)
    assert [r.uploaded for r in keeper.reports] == [2]


def test_save_and_restore_through_the_drive_api(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drive_api: Any
) -> None:
    from colabsession.drive import Location

    location = Location(drive_api, f"{drive_api.root}/caches", "drive:caches")
    uploads = Uploads(monkeypatch)
    hub = new_machine(tmp_path, monkeypatch, "vm1")
    add_model(hub, "a", 1)
    cs.cache.save("huggingface", location=location)
    add_model(hub, "b", 2)
    cs.cache.save("huggingface", location=location)
    assert uploads.take() == (2, 2)
    before = tree(hub)
    hub = new_machine(tmp_path, monkeypatch, "vm2")
    (report,) = cs.cache.restore(location=location)
    assert report.files == 10
    assert tree(hub) | {".locks": None} == before | {".locks": None}
    cs.cache.save("huggingface", location=location)
    assert uploads.take() == (0, 0)
