"""Nothing lost at the edges (issue 22): what is read back from Drive is untrusted and bounded,
every Drive operation is bounded, and concurrent writers of one thing are told apart."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import platform
import sys
import sysconfig
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

import colabsession as cs
from colabsession._data import archive as _archive
from colabsession._data import stage as _stage
from colabsession._data import walk as _walk
from colabsession._env import build as _env_build
from colabsession._env import persist as _env_persist
from colabsession._storage import layout as _layout
from colabsession._storage import store as _store
from colabsession._storage.history import read_history
from colabsession._storage.serialize import crc32c
from colabsession._storage.store import Store
from colabsession.drive import Location
from colabsession.env import EnvInfo

from .test_checkpoint import state_at
from .test_checkpoint_faults import FailingMountFS, clocked_lease, in_thread
from .test_data import DRIVE, make_dataset, packed_dir, tree

DEEP = b"[" * 5000 + b"]" * 5000  # a few KB that Python's json cannot read without recursing


class HangingFS(FailingMountFS):
    """FailingMountFS whose isfile() hangs too, as it does on a FUSE mount whose daemon stopped
    answering (fsspec's local file system asks the system directly, not through info())."""

    def isfile(self, path: str) -> bool:
        self._fault()
        return bool(super().isfile(path))


@pytest.fixture
def faulty() -> Iterator[HangingFS]:
    fs = HangingFS()
    yield fs
    fs.released.set()  # no thread stays blocked once the test is over


# 9. One reader: deep nesting in any record read back is "damaged: skipped, with a warning" -----


def test_a_deeply_nested_history_line_is_skipped_and_saves_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from colabsession._cli import main

    run = tmp_path / "run"
    with cs.Checkpointer(run, every=None) as ckpt:
        ckpt.save(1, state_at(1), metrics={"loss": 1.0})
    with open(run / "history.jsonl", "ab") as f:
        f.write(b'{"step": 2, "session": "s", "time": 1.0, "deep": ' + DEEP + b"}\n")
    with caplog.at_level(logging.WARNING, "colabsession"):
        assert [r["step"] for r in read_history(run)] == [1]
    assert "damaged line" in caplog.text
    ckpt = cs.Checkpointer(run, every=None)
    assert ckpt.restore() is not None
    ckpt.save(3, state_at(3), metrics={"loss": 0.5})  # the history is written again: no error
    ckpt.close()
    assert [r["step"] for r in read_history(run)] == [1, 3]
    assert main(["ckpt", "verify", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_deeply_nested_checkpoint_manifest_with_a_valid_checksum_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    with cs.Checkpointer(run, every=None) as ckpt:
        ckpt.save(1, state_at(1))
        ckpt.save(2, state_at(2))
    (newest,) = run.glob("ckpt-000000000002.*")
    data = newest.read_bytes()
    length, _, _ = _layout.TRAILER.unpack(data[-_layout.TRAILER.size :])
    arrays = data[: len(data) - _layout.TRAILER.size - length]
    body = b'{"kind": "colabsession-checkpoint", "version": 1, "tree": ' + DEEP + b"}"
    newest.write_bytes(arrays + body + _layout.TRAILER.pack(len(body), crc32c(body), _layout.MAGIC))
    with caplog.at_level(logging.WARNING, "colabsession"):
        restored = cs.Checkpointer(run).restore()
    assert restored is not None
    assert restored.step == 1
    assert "nested too deeply" in caplog.text
    problems = {step: problem for step, _, problem in cs.Checkpointer(run).verify()}
    assert problems[1] is None
    assert "nested too deeply" in str(problems[2])


def test_a_deeply_nested_lease_counts_as_held_by_someone_unknown(tmp_path: Path) -> None:
    (tmp_path / "lease.json").write_bytes(DEEP)
    lease = clocked_lease(Store.local_disk(tmp_path), [1000.0], ttl=60)
    lease.acquire()  # waits out the unknown holder (fake time), then takes it
    assert json.loads((tmp_path / "lease.json").read_text())["owner"] == "me"
    lease.release()


def test_deeply_nested_env_and_dataset_manifests_are_damaged_not_raw_errors(
    tmp_path: Path, isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envs = Location(LocalFileSystem(), str(tmp_path / "envs"), "drive:envs")
    (tmp_path / "envs" / "deep").mkdir(parents=True)
    (tmp_path / "envs" / "deep" / "manifest.000001.abcdef01.json").write_bytes(DEEP)
    with caplog.at_level(logging.WARNING, "colabsession"):
        assert cs.env.list(envs) == []
    assert "skipping deep" in caplog.text
    with pytest.raises(cs.EnvError, match="nested too deeply"):
        cs.env.restore("deep", location=envs)
    packed = tmp_path / "data" / "x.packed"
    packed.mkdir(parents=True)
    (packed / "manifest.000001.abcdef01.json").write_bytes(DEEP)
    with pytest.raises(cs.DataError, match="nested too deeply"):
        cs.data.stage(Location(LocalFileSystem(), str(packed), "drive:x.packed"))


def test_deeply_nested_credentials_and_drive_answers_are_refused_in_words(tmp_path: Path) -> None:
    pytest.importorskip("google.auth")  # the drive extra
    from colabsession._drive import api as _gdrive

    key = tmp_path / "key.json"
    key.write_bytes(b'{"type": ' + DEEP + b"}")
    key.chmod(0o600)
    with pytest.raises(cs.DriveAuthError, match="cannot use"):
        cs.drive.load_credentials(str(key))
    assert _gdrive._error_of(b'{"error": ' + DEEP + b"}") == ("", "")


# 7. Durations read from Drive are bounded by this writer's own settings ------------------------


def test_clock_skew_between_two_writers_bounds_the_wait_by_the_own_ttl(tmp_path: Path) -> None:
    store = Store.local_disk(tmp_path)
    ahead, behind = [time.time() + 3600.0], [time.time()]  # the first VM's clock is 1 h ahead
    first = clocked_lease(store, ahead, owner="vm-ahead", ttl=60, limit=0)
    first.acquire()
    first.stop_heartbeat()  # its runtime died: its heartbeat, an hour "in the future", stays
    second = clocked_lease(store, behind, owner="vm-behind", ttl=60, limit=120)
    start = behind[0]
    second.acquire()  # before: waited until the other's heartbeat + ttl, an hour away
    assert behind[0] - start <= 60 + 1 + 10  # its own ttl, and one pause of looking again
    assert json.loads((tmp_path / "lease.json").read_text())["owner"] == "vm-behind"
    second.release()
    first.release()


def test_a_huge_ttl_in_the_lease_file_is_bounded_by_the_own_ttl(tmp_path: Path) -> None:
    from colabsession._storage.lease import LeaseRecord

    now = [time.time()]
    record = LeaseRecord(
        owner="other", host="elsewhere", pid=1, session="x", heartbeat=now[0], ttl=1e12
    )
    (tmp_path / "lease.json").write_bytes(record.to_json())
    lease = clocked_lease(Store.local_disk(tmp_path), now, ttl=60, limit=120)
    lease.acquire()
    assert json.loads((tmp_path / "lease.json").read_text())["owner"] == "me"
    lease.release()


# 14. A full disk under the history is a CheckpointError ------------------------------------------


def test_a_full_disk_under_the_history_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = cs.Checkpointer(tmp_path / "run", every=3600)
    ckpt.save(0, state_at(0), metrics={"loss": 1.0})
    real_append = Store.append

    def full(self: Store, name: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "append", full)
    with pytest.raises(cs.CheckpointError, match="no space left"):
        ckpt.log(1, loss=0.9)
    with pytest.raises(cs.CheckpointError, match="no space left"):
        ckpt.maybe_save(2, state_at(2), metrics={"loss": 0.8})  # between saves: logged only
    with pytest.raises(cs.CheckpointError, match="no space left"):
        ckpt.save(3, state_at(3), metrics={"loss": 0.7})
    monkeypatch.setattr(Store, "append", real_append)
    ckpt.save(4, state_at(4), metrics={"loss": 0.6})  # space again: it goes on
    ckpt.close()


# 15. An OAuth client that lacks what the sign-in needs --------------------------------------------


@pytest.mark.parametrize("missing", ["auth_uri", "token_uri"])
def test_an_oauth_client_without_its_endpoints_is_refused_in_words(missing: str) -> None:
    pytest.importorskip("google_auth_oauthlib")
    from .test_gdrive import CLIENT

    client = {"installed": {k: v for k, v in CLIENT["installed"].items() if k != missing}}
    with pytest.raises(cs.DriveAuthError, match=f"lacks {missing}.*Download the client") as info:
        cs.drive.sign_in(client, run_flow=lambda flow: pytest.fail("no flow should run"))
    assert "SHH" not in str(info.value)


# 5. env.restore() and env.list() on a mount that stops answering ---------------------------------


def test_env_restore_and_list_on_a_mount_that_stops_answering(
    tmp_path: Path, faulty: HangingFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_env_persist, "TIMEOUT", 0.2)
    faulty.hang.set()
    location = Location(faulty, str(tmp_path / "envs"), "drive:envs")
    with pytest.raises(cs.EnvError, match="did not answer in time"):
        in_thread(lambda: cs.env.restore("my_env", location=location))
    with pytest.raises(cs.EnvError, match="did not answer in time"):
        in_thread(lambda: cs.env.list(location))


# 6. pack(timeout=...) while a large file is streamed from a mount that stops answering ----------


class StallingFS(LocalFileSystem):  # type: ignore[misc]
    """A mount whose reads of one file stop answering after its first chunk."""

    cachable = False

    def __init__(self, name: str, released: threading.Event) -> None:
        super().__init__()
        self.name, self.released = name, released

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super().open(path, mode, **kwargs)
        if "r" not in mode or not path.endswith(self.name):
            return f
        released, read = self.released, f.read
        calls = [0]

        def stalling(n: int = -1) -> bytes:
            calls[0] += 1
            if calls[0] > 1:
                released.wait(30)
            return bytes(read(n))

        f.read = stalling
        return f


def test_pack_never_hangs_on_a_large_file_whose_mount_stops_answering(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "raw"
    source.mkdir()
    (source / "small.txt").write_text("small")
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    monkeypatch.setattr(_walk, "SMALL", 1 << 20)  # big.bin is streamed, not read whole
    monkeypatch.setattr(_walk, "STREAM_CHUNK", 1 << 20, raising=False)
    monkeypatch.setattr(_walk, "SLOWEST", 1 << 40, raising=False)  # no time for the chunk's size
    released = threading.Event()
    src = Location(StallingFS("big.bin", released), str(source), "drive:raw")
    dest = Location(LocalFileSystem(), str(tmp_path / "raw.packed"), "drive:raw.packed")
    try:
        with pytest.raises(cs.DataError, match="did not answer in time"):
            in_thread(lambda: cs.data.pack(src, dest, timeout="0.3s"))
    finally:
        released.set()
    cs.data.pack(Location(LocalFileSystem(), str(source), "drive:raw"), dest)  # answering again
    assert tree(cs.data.stage(dest)) == tree(source)


# 8, 12. A folder never packed, through the Drive API: subfolders, and titles that are not names --


def test_a_never_packed_drive_api_folder_with_subfolders_is_staged(
    drive_api: Any, tmp_path: Path
) -> None:
    fs = drive_api
    raw = f"{fs.root}/raw"
    fs.makedirs(f"{raw}/sub/deeper", exist_ok=True)
    fs.pipe_file(f"{raw}/a.jpg", b"a" * 10)
    fs.pipe_file(f"{raw}/sub/b.jpg", b"b" * 10)
    fs.pipe_file(f"{raw}/sub/deeper/c.jpg", b"c" * 10)
    local = cs.data.stage(Location(fs, raw, "drive:raw"), tmp_path / "dest")
    assert {k: v and v[0] for k, v in tree(local).items()} == {
        "a.jpg": b"a" * 10,
        "sub": None,
        "sub/b.jpg": b"b" * 10,
        "sub/deeper": None,
        "sub/deeper/c.jpg": b"c" * 10,
    }


@pytest.mark.parametrize("title", ["..", "../../escaped.txt", "back\\slash.txt", "nul\0.txt"])
def test_drive_titles_that_are_not_names_never_land_outside_dest(
    fake_drive: Any, drive_api: Any, tmp_path: Path, title: str, caplog: pytest.LogCaptureFixture
) -> None:
    fs = drive_api
    raw = f"{fs.root}/raw"
    fs.makedirs(f"{raw}/evil", exist_ok=True)
    fs.pipe_file(f"{raw}/good.txt", b"good")
    fs.pipe_file(f"{raw}/evil/escaped.txt", b"outside")
    fs.pipe_file(f"{raw}/plain.txt", b"plain")
    renamed = "evil" if title == ".." else "plain.txt"
    (item,) = fake_drive.find(renamed)
    item["title"] = title  # Drive titles are free text (here renamed by someone else)
    fs = fake_drive.connect(use_for_drive=False)  # a new session: nothing cached
    dest = tmp_path / "stage" / "dest"
    with caplog.at_level(logging.WARNING, "colabsession"):
        local = cs.data.stage(Location(fs, raw, "drive:raw"), dest)
    assert local == dest
    landed = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"outside"]
    assert all(p.is_relative_to(dest) for p in landed), landed
    assert sorted(p.name for p in dest.parent.iterdir() if p.is_file()) == [
        ".dest.lock",
        ".dest.staged.json",
    ]
    assert (dest / "good.txt").read_bytes() == b"good"
    assert "cannot be a path inside the destination" in caplog.text


# 11. A name that cannot be packed is found before anything is uploaded ---------------------------


def test_a_backslash_in_a_name_is_refused_before_anything_is_uploaded(
    isolated: Path, tmp_path: Path
) -> None:
    root = cs.mount()
    flowers = make_dataset(root, files=12)
    (flowers / "roses" / "scan\\001.png").write_bytes(b"scan")
    with pytest.raises(cs.DataError, match=r"cannot be packed.*scan\\\\001\.png.*Rename"):
        cs.data.pack(DRIVE)
    packed = packed_dir(root)
    assert not packed.exists() or not any(packed.iterdir())  # nothing uploaded
    (flowers / "roses" / "scan\\001.png").rename(flowers / "roses" / "scan-001.png")
    cs.data.pack(DRIVE)  # renamed: packs and stages, no "damaged" left behind
    assert tree(cs.data.stage(DRIVE)) == tree(flowers)


# 13. Two stagings of one dataset to two destinations on one machine ------------------------------


def test_two_stagings_of_one_dataset_to_two_destinations(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second starts while the first is unpacking; before, the first finished, removed
    the shared downloads, and the second died with a raw FileNotFoundError."""
    root = cs.mount()
    flowers = make_dataset(root, files=30)
    cs.data.pack(DRIVE, shard_size="8KiB", compression="none")
    from colabsession._core.say import say as real_say

    real_unpack = _stage._unpack_shard
    other: list[BaseException | Path] = []
    waiting = threading.Event()

    def stage_other() -> None:
        try:
            other.append(cs.data.stage(DRIVE, tmp_path / "second"))
        except BaseException as exc:
            other.append(exc)
        finally:
            waiting.set()

    def say(text: str) -> None:
        if "waiting for it" in text:
            waiting.set()
        real_say(text)

    def unpack_and_let_another_in(*args: Any) -> None:
        if not waiting.is_set() and threading.current_thread().name == "first":
            thread = threading.Thread(target=stage_other, name="second", daemon=True)
            thread.start()
            waiting.wait(30)  # the other one waits for the downloads (or, before, ran)
        real_unpack(*args)

    monkeypatch.setattr(_stage, "_unpack_shard", unpack_and_let_another_in)
    monkeypatch.setattr(_stage, "say", say)
    first: list[Path] = []
    thread = threading.Thread(
        target=lambda: first.append(cs.data.stage(DRIVE, tmp_path / "first")), name="first"
    )
    thread.start()
    thread.join(60)
    deadline = time.monotonic() + 60
    while not other and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first
    assert tree(first[0]) == tree(flowers)
    assert other
    assert isinstance(other[0], Path), other
    assert tree(other[0]) == tree(flowers)


# 10. An env archive whose manifest does not say its unpacked size ------------------------------


def _crafted_env(folder: Path, name: str, members: list[tuple[str, bytes]], unpacked: int) -> None:
    """An environment saved by hand: a zstd layer of *members* and its manifest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            entry = tarfile.TarInfo(member)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    compressed = io.BytesIO()
    writer = _archive.zstd_writer(compressed, 19)
    writer.write(raw.getvalue())
    writer.close()
    data = compressed.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    archive = f"layer-{digest[:16]}.tar.zst"
    info = EnvInfo(
        name=name,
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=sysconfig.get_platform(),
        requirements=("bomb",),
        packages=(("bomb", "1.0"),),
        archive=archive,
        size=len(data),
        sha256=digest,
        created="2026-01-01T00:00:00+00:00",
        installer="pip",
        files=len(members),
        unpacked=unpacked,
        sequence=1,
        version=EnvInfo.VERSION,
    )
    (folder / name).mkdir(parents=True)
    (folder / name / archive).write_bytes(data)
    (folder / name / "manifest.000001.abcdef01.json").write_bytes(info.to_json())


@pytest.mark.usefixtures("clean_interpreter")
def test_an_env_archive_with_no_declared_size_unpacks_within_a_ratio_of_its_own(
    tmp_path: Path, isolated: Path
) -> None:
    folder = tmp_path / "envs"
    _crafted_env(folder, "bomb", [("bomb/zeros.bin", bytes(32 << 20))], unpacked=0)
    location = Location(LocalFileSystem(), str(folder), "drive:envs")
    with pytest.raises(cs.EnvError, match="unpacks to more than"):
        cs.env.restore("bomb", location=location)
    assert not any((isolated / "envs" / "bomb").glob("layer-*"))
    _crafted_env(folder, "fine", [("fine/__init__.py", b"VALUE = 1\n" * 100)], unpacked=0)
    assert cs.env.restore("fine", location=location).name == "fine"  # a real ratio passes


# 4. Two installs into one environment at once --------------------------------------------------


@pytest.mark.usefixtures("clean_interpreter")
def test_an_install_that_another_overtook_says_so_and_saves_nothing(
    isolated: Path, pip_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cs.env.install("cs-demo-c", pip_args=pip_args)
    real_compile = _env_build.compile_layer
    overtaken = [False]

    def compile_while_another_installs(layer: Path) -> None:
        if not overtaken[0]:  # the other notebook's install runs and saves meanwhile
            overtaken[0] = True
            cs.env.install("cs-demo-b==1.0", pip_args=pip_args)
        real_compile(layer)

    monkeypatch.setattr(_env_build, "compile_layer", compile_while_another_installs)
    with pytest.raises(cs.EnvError, match=r"another install .* while this one was building"):
        cs.env.install("cs-demo-a", pip_args=pip_args)
    (info,) = cs.env.list()
    assert dict(info.packages) == {"cs-demo-c": "1.0", "cs-demo-b": "1.0"}  # the one said saved


@pytest.mark.usefixtures("clean_interpreter")
def test_two_installs_that_commit_at_the_same_moment_both_withdraw(
    isolated: Path, pip_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cs.env.install("cs-demo-c", pip_args=pip_args)
    assert first is not None
    real_write = _store.Store.write

    def write_with_a_rival(self: Store, name: str, data: bytes) -> None:
        real_write(self, name, data)
        if name.startswith("manifest."):  # another VM's manifest of the same number, at once
            number = name.split(".")[1]
            real_write(self, f"manifest.{number}.00000000.json", data.replace(b"cs-demo", b"xx"))

    monkeypatch.setattr(_store.Store, "write", write_with_a_rival)
    with pytest.raises(cs.EnvError, match=r"another install .* at the same moment"):
        cs.env.install("cs-demo-a", pip_args=pip_args)
    folder = isolated / "drive" / "Colab Notebooks" / "colabsession" / "envs" / "my_env"
    ours = [p.name for p in folder.glob("manifest.*.json") if not p.name.endswith("00000000.json")]
    assert len(ours) == 1  # this install withdrew its manifest; the first one's stays
    assert json.loads((folder / ours[0]).read_text())["sequence"] == first.sequence


# Design: one gateway for Drive -------------------------------------------------------------------

# What fsspec file systems do that reaches the remote (a Drive mount's daemon, the Drive API).
REMOTE_CALLS = {
    "open",
    "ls",
    "info",
    "find",
    "glob",
    "walk",
    "du",
    "exists",
    "isfile",
    "isdir",
    "cat",
    "cat_file",
    "pipe",
    "pipe_file",
    "put",
    "put_file",
    "get",
    "get_file",
    "rm",
    "rm_file",
    "mv",
    "cp_file",
    "copy",
    "makedirs",
    "mkdir",
    "rmdir",
    "touch",
    "modified",
    "size",
}
# The calls that bound what they are given: the gateway.
BOUNDING = {"io", "call_with_timeout", "map_bounded"}
# Code allowed to reach the remote without the gateway, and why.
ALLOWED = {
    "_storage.store": "the gateway itself: Store.io bounds every public operation",
    "_storage.backends": "the backends' calls, run only inside Store.io",
    "_core.timeout": "the bounding calls themselves",
    "_data.walk.read_file": "run only by map_bounded's workers (read_ahead)",
    "_data.walk.copy_file": "run only by map_bounded's workers (stage_folder)",
}


def _unbounded_remote_calls(path: Path, package: Path) -> list[str]:
    """``fs.<call>(...)`` in *path* that is neither passed to a bounding call (directly in a
    lambda, or in a function handed to one) nor allowed above: a reasonable heuristic for a
    Drive operation that forgot the gateway."""
    import ast

    module = ".".join(path.relative_to(package).with_suffix("").parts)
    if module in ALLOWED:
        return []
    root = ast.parse(path.read_text())
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(root):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    bounded_names: set[str] = set()  # functions handed to a bounding call by name
    bounded_lambdas: set[ast.AST] = set()
    for node in ast.walk(root):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in BOUNDING:
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if isinstance(arg, ast.Lambda):
                        bounded_lambdas.add(arg)
                    elif isinstance(arg, ast.Name):
                        bounded_names.add(arg.id)
    found = []
    for node in ast.walk(root):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = node.func.value
        on_fs = (isinstance(receiver, ast.Attribute) and receiver.attr == "fs") or (
            isinstance(receiver, ast.Name) and receiver.id == "fs"
        )
        if not on_fs or node.func.attr not in REMOTE_CALLS:
            continue
        scope: ast.AST | None = parents.get(node)
        chain = []
        ok = False
        while scope is not None:
            if scope in bounded_lambdas:
                ok = True
                break
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if scope.name in bounded_names:
                    ok = True
                    break
                chain.append(scope.name)
            scope = parents.get(scope)
        where = ".".join([module, *reversed(chain)])
        if not ok and not any(where.startswith(allowed) for allowed in ALLOWED):
            found.append(f"{path.name}:{node.lineno} {where}: fs.{node.func.attr}(...)")
    return found


def test_every_remote_file_system_call_goes_through_the_gateway() -> None:
    package = Path(cs.__file__).parent
    paths = sorted(package.rglob("*.py"))
    assert len(paths) > 40  # the subpackages are read too
    found = [hit for path in paths for hit in _unbounded_remote_calls(path, package)]
    assert found == [], "Drive operations outside Store.io / call_with_timeout:\n" + "\n".join(
        found
    )


class StuckFS(LocalFileSystem):  # type: ignore[misc]
    """A mount whose shard files stop answering: a read and a close wait until released (a
    close waits for the read stuck in the kernel, as a buffered file's lock makes it)."""

    cachable = False

    def __init__(self, released: threading.Event) -> None:
        super().__init__()
        self.released = released

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        f = super().open(path, mode, **kwargs)
        if "r" not in mode or not path.rsplit("/", 1)[-1].startswith("part-"):
            return f
        released, read, close = self.released, f.read, f.close

        def stuck_read(n: int = -1) -> bytes:
            released.wait(300)
            return bytes(read(n))

        def stuck_close() -> None:
            released.wait(300)
            close()

        f.read, f.close = stuck_read, stuck_close
        return f


def test_staging_never_hangs_closing_a_shard_whose_mount_stopped_answering(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cs.mount()
    make_dataset(root, files=12)
    cs.data.pack(DRIVE)
    monkeypatch.setattr(_stage, "_sleep", lambda s: None)
    monkeypatch.setattr(_stage, "ATTEMPTS", 1)
    monkeypatch.setattr(_stage, "SLOWEST", 1 << 40)  # the timeout alone, whatever the size
    released = threading.Event()
    location = Location(StuckFS(released), str(packed_dir(root)), DRIVE + ".packed")
    try:
        with pytest.raises(cs.DataError, match="did not answer in time"):
            in_thread(lambda: cs.data.stage(location, timeout="0.3s"), limit=30)
    finally:
        released.set()
