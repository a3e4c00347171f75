"""Datasets: pack once, stage in every session (issue 10), under kills, damage, hostile archives,
a full disk and a mount that drops."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import pytest

import colabsession as cs
from colabsession._data import archive as _archive
from colabsession._data import stage as _stage
from colabsession._data import walk as _walk
from colabsession._storage import store as _store
from colabsession.drive import Location

DRIVE = "drive:datasets/flowers"


def make_dataset(root: Path, files: int = 120, seed: int = 0) -> Path:
    """A small image-folder dataset: classes, samples with two files, an empty folder, a
    name with odd characters, an executable script."""
    import random

    rng = random.Random(seed)
    folder = root / "datasets" / "flowers"
    for index in range(files):
        klass = ("roses", "tulips", "daisy")[index % 3]
        (folder / klass).mkdir(parents=True, exist_ok=True)
        size = rng.randint(100, 5000)
        (folder / klass / f"img{index:04d}.jpg").write_bytes(rng.randbytes(size))
        if index % 10 == 0:
            (folder / klass / f"img{index:04d}.json").write_text(json.dumps({"i": index}))
    (folder / "empty").mkdir()
    (folder / "caf\u00e9 label.txt").write_text("odd name")
    (folder / "prepare.sh").write_text("#!/bin/sh\n")
    (folder / "prepare.sh").chmod(0o755)
    return folder


def tree(folder: Path) -> dict[str, Any]:
    """Every path under *folder*: its bytes (files), None (folders), and its execute bit."""
    found: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            found[key] = None
        else:
            found[key] = (path.read_bytes(), bool(path.stat().st_mode & 0o100))
    return found


@pytest.fixture
def drive_root(isolated: Path) -> Path:
    root = cs.mount()
    return root


@pytest.fixture
def flowers(drive_root: Path) -> Path:
    return make_dataset(drive_root)


def packed_dir(drive_root: Path) -> Path:
    return drive_root / "datasets" / "flowers.packed"


def shard_files(drive_root: Path) -> list[Path]:
    return sorted(packed_dir(drive_root).glob("part-*"))


# Round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_pack_and_stage_round_trip(flowers: Path, drive_root: Path, compression: str) -> None:
    info = cs.data.pack(DRIVE, shard_size="40KiB", compression=compression)
    assert len(info.shards) > 3
    assert info.files == len(list(flowers.rglob("*")))
    local = cs.data.stage(DRIVE)
    assert tree(local) == tree(flowers)
    assert not local.is_relative_to(drive_root)
    # Member order is the source's sorted order, shard after shard.
    names = [m.path for s in info.shards for m in s.members]
    assert names == sorted(names)
    # A sample's files (img0000.jpg, img0000.json) are never split across shards.
    for first, second in zip(info.shards, info.shards[1:], strict=False):
        assert _pack_key(first.members[-1].path) != _pack_key(second.members[0].path)
    # The downloads are gone once staged; the record beside the folder says what it holds.
    assert not any((cs.data.staged()[0].path, list(_stage.downloads().glob("*")))[1])
    assert cs.data.staged()[0].files == info.files


def _pack_key(path: str) -> str:
    from colabsession._data.pack import key

    return key(path)


def test_shards_are_plain_tar_that_other_tools_read(flowers: Path, drive_root: Path) -> None:
    cs.data.pack(DRIVE, shard_size="64KiB", compression="none")
    seen = []
    for shard in shard_files(drive_root):
        with tarfile.open(shard) as tar:  # stdlib tarfile, as WebDataset reads them
            seen += [m.name for m in tar.getmembers()]
    assert sorted(seen) == sorted(p.relative_to(flowers).as_posix() for p in flowers.rglob("*"))


def test_large_files_are_streamed(
    flowers: Path, drive_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_walk, "SMALL", 1024)  # every file above 1 KiB is streamed
    (flowers / "big.bin").write_bytes(os.urandom(3 << 20))
    cs.data.pack(DRIVE, shard_size="1MiB")
    assert tree(cs.data.stage(DRIVE)) == tree(flowers)


def test_a_second_stage_returns_at_once(
    flowers: Path, drive_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cs.data.pack(DRIVE, shard_size="64KiB")
    first = cs.data.stage(DRIVE)

    def no_copy(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a shard was copied again")

    monkeypatch.setattr(_store.Store, "fetch_file", no_copy)
    capsys.readouterr()
    assert cs.data.stage(DRIVE) == first
    assert cs.data.stage(f"{DRIVE}.packed") == first  # the packed folder itself: the same
    assert "staged already" in capsys.readouterr().out


def test_incremental_pack_and_a_changed_source_is_staged_again(
    flowers: Path, drive_root: Path
) -> None:
    first = cs.data.pack(DRIVE, shard_size="40KiB")
    local = cs.data.stage(DRIVE)
    before = {p.name for p in shard_files(drive_root)}
    (flowers / "zinnia").mkdir()
    (flowers / "zinnia" / "new.jpg").write_bytes(b"new" * 100)
    second = cs.data.pack(DRIVE, shard_size="40KiB")
    after = {p.name for p in shard_files(drive_root)}
    assert before < after  # adding files wrote new shards only
    assert [s.name for s in second.shards[: len(first.shards)]] == [s.name for s in first.shards]
    assert cs.data.pack(DRIVE, shard_size="40KiB") == second  # nothing changed: nothing written
    # A changed file: its shard is packed again, the old one removed once committed.
    (flowers / "roses" / "img0000.jpg").write_bytes(b"changed")
    third = cs.data.pack(DRIVE, shard_size="40KiB")
    assert len({p.name for p in shard_files(drive_root)} - after) >= 1
    assert {p.name for p in shard_files(drive_root)} == {s.name for s in third.shards}
    assert len(list(packed_dir(drive_root).glob("manifest.*"))) == 1
    assert cs.data.stage(DRIVE) == local
    assert tree(local) == tree(flowers)


def test_staging_replaces_nothing_it_did_not_stage(flowers: Path, tmp_path: Path) -> None:
    cs.data.pack(DRIVE)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(cs.DataError, match="not staged by colabsession"):
        cs.data.stage(DRIVE, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert tree(cs.data.stage(DRIVE, tmp_path / "elsewhere")) == tree(flowers)


def test_sources_that_are_not_datasets(drive_root: Path, flowers: Path) -> None:
    (drive_root / "notes.txt").write_text("x")
    with pytest.raises(cs.DataError, match=r"is a file, not a folder or an archive \(.zip"):
        cs.data.stage("drive:notes.txt")
    with pytest.raises(cs.DataError, match="there is nothing at drive:missing"):
        cs.data.stage("drive:missing")
    (drive_root / "hollow").mkdir()
    with pytest.raises(cs.DataError, match="holds no files"):
        cs.data.pack("drive:hollow")
    with pytest.raises(cs.ConfigError, match="shard_size"):
        cs.data.pack(DRIVE, shard_size="lots")
    cs.data.pack(DRIVE)
    with pytest.raises(cs.DataError, match="packed dataset already"):
        cs.data.pack(f"{DRIVE}.packed")
    # Packed into a folder inside the source: that folder is not packed into itself.
    info = cs.data.pack(DRIVE, f"{DRIVE}/.packed-here")
    assert not any(m.path.startswith(".packed-here") for s in info.shards for m in s.members)


# Kills and resumes ----------------------------------------------------------------------------


def test_packing_cut_short_continues(
    flowers: Path, drive_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _store.Store.put_file
    uploads: list[str] = []

    def dies_on_the_third(self: Any, source: Any, name: str, **kwargs: Any) -> None:
        uploads.append(name)
        if len(uploads) == 3:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        real(self, source, name, **kwargs)

    monkeypatch.setattr(_store.Store, "put_file", dies_on_the_third)
    with pytest.raises(cs.DataError, match="pack again to continue"):
        cs.data.pack(DRIVE, shard_size="40KiB")
    with pytest.raises(cs.DataError, match="did not finish"):
        cs.data.stage(DRIVE)
    uploads.clear()
    monkeypatch.setattr(_store.Store, "put_file", real)
    info = cs.data.pack(DRIVE, shard_size="40KiB")
    names = {s.name for s in info.shards}
    assert {p.name for p in shard_files(drive_root)} == names  # the orphan went
    assert tree(cs.data.stage(DRIVE)) == tree(flowers)


def test_stage_cut_short_resumes_where_it_stopped(
    flowers: Path, drive_root: Path, isolated: Path
) -> None:
    (flowers / "big.bin").write_bytes(os.urandom(6 << 20))
    info = cs.data.pack(DRIVE, shard_size="1MiB", compression="none")
    big = max(info.shards, key=lambda s: s.size)
    opened = FlakyShardReadsFS.reset(fail_after={big.name: 3 << 20}, exc=KeyboardInterrupt)
    location = Location(FlakyShardReadsFS(), str(packed_dir(drive_root)), DRIVE + ".packed")
    with pytest.raises(KeyboardInterrupt):
        cs.data.stage(location, workers=1)
    assert not list(isolated.glob("datasets/flowers-*"))  # nothing half staged
    part = _stage.downloads() / f"{big.sha256}.tar.part"
    assert part.stat().st_size >= 3 << 20
    FlakyShardReadsFS.reset()
    local = cs.data.stage(location, workers=1)
    assert tree(local) == tree(flowers)
    read = sum(opened.read.values())
    assert read < info.size - (3 << 20) + 1  # the 3 MiB already copied were not read again


def test_a_kill_at_any_moment_of_staging_leaves_a_complete_folder_or_none(
    flowers: Path, drive_root: Path, isolated: Path, tmp_path: Path
) -> None:
    """SIGKILL a real process at increasing moments while it stages; after each kill the
    folder is complete or absent, and the next call finishes the work."""
    (flowers / "big.bin").write_bytes(os.urandom(8 << 20))
    cs.data.pack(DRIVE, shard_size="1MiB", compression="none")
    script = textwrap.dedent(
        f"""
        import time, colabsession as cs
        from colabsession._storage import store as _store
        real = _store.Store.fetch_file
        def slow(self, *a, **k):
            time.sleep(0.05)
            return real(self, *a, **k)
        _store.Store.fetch_file = slow
        cs.data.stage({DRIVE!r}, workers=2)
        print("done", flush=True)
        """
    )
    env = {**os.environ}
    dest = None
    for delay in (0.3, 0.6, 1.0, 1.5):
        process = subprocess.Popen([sys.executable, "-c", script], env=env)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        for folder in (isolated / "datasets").glob("flowers-*"):
            assert tree(folder) == tree(flowers)  # complete, never half
            dest = folder
    local = cs.data.stage(DRIVE)
    assert dest in (None, local)
    assert tree(local) == tree(flowers)


def test_two_notebooks_staging_the_same_on_one_machine(flowers: Path, isolated: Path) -> None:
    """The second waits for the first, then finds the data staged: no part file is written by
    two processes at once."""
    (flowers / "big.bin").write_bytes(os.urandom(8 << 20))
    cs.data.pack(DRIVE, shard_size="1MiB")
    script = f"import colabsession as cs; print(cs.data.stage({DRIVE!r}))"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    paths = {out.strip().splitlines()[-1] for out in outputs}
    assert len(paths) == 1
    assert tree(Path(paths.pop())) == tree(flowers)
    assert sum("staged already" in out for out in outputs) == 1


def test_a_kill_between_the_folder_and_its_record(flowers: Path) -> None:
    """Killed after the staged folder was moved into place but before its record was written:
    the claim beside it says it is colabsession's, so the next call stages it again instead
    of refusing to replace it."""
    cs.data.pack(DRIVE, shard_size="64KiB")
    local = cs.data.stage(DRIVE)
    _stage.marker(local).unlink()
    _stage.claim(local).touch()  # as prepare() leaves it until the record is written
    assert cs.data.stage(DRIVE) == local
    assert tree(local) == tree(flowers)
    assert not _stage.claim(local).exists()


# Damage -------------------------------------------------------------------------------------


def test_a_shard_damaged_on_drive_is_refused_then_repacked(
    flowers: Path, drive_root: Path, isolated: Path
) -> None:
    cs.data.pack(DRIVE, shard_size="40KiB")
    victim = shard_files(drive_root)[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))  # same size, one bit flipped
    with pytest.raises(cs.DataError, match=r"damaged on Drive .* verify=True"):
        cs.data.stage(DRIVE)
    assert not list((isolated / "datasets").glob("flowers-*"))
    leftovers = (isolated / "datasets").glob(".flowers-*")
    assert not [p for p in leftovers if p.suffix not in (".lock", ".staging")]
    info = cs.data.pack(DRIVE, shard_size="40KiB", verify=True)
    assert victim.name not in {s.name for s in info.shards}
    assert tree(cs.data.stage(DRIVE)) == tree(flowers)


def test_a_shard_damaged_in_transit_is_fetched_again(
    flowers: Path, drive_root: Path, caplog: Any
) -> None:
    info = cs.data.pack(DRIVE, shard_size="40KiB")
    FlakyShardReadsFS.reset(corrupt_once={info.shards[0].name})
    location = Location(FlakyShardReadsFS(), str(packed_dir(drive_root)), DRIVE + ".packed")
    assert tree(cs.data.stage(location)) == tree(flowers)
    assert "arrived damaged" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["shards"][0].update(name="../../etc/passwd"), "not a shard's name"),
        (lambda m: m["shards"][0]["members"][0].update(path="../evil"), "outside"),
        (lambda m: m["shards"][0]["members"][0].update(path="/etc/evil"), "absolute"),
        (lambda m: m["shards"][0].update(unpacked=-5), "not possible"),
        (lambda m: m["shards"][1]["members"].append(m["shards"][0]["members"][0]), "twice|add up"),
        (lambda m: m.update(compression="lz4"), "unknown"),
        (lambda m: m.update(version=7), "newer colabsession"),
    ],
)
def test_hostile_manifests_are_refused(
    flowers: Path, drive_root: Path, change: Any, message: str
) -> None:
    cs.data.pack(DRIVE, shard_size="40KiB")
    (manifest,) = packed_dir(drive_root).glob("manifest.*")
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))
    with pytest.raises(cs.DataError, match=message):
        cs.data.stage(DRIVE)


def test_a_shard_that_holds_more_than_its_manifest_says_is_refused(
    flowers: Path, drive_root: Path, isolated: Path
) -> None:
    """A shard replaced on Drive by one with an extra member outside, its manifest's sha256
    and sizes updated to match: the unpacking rules still refuse it."""
    cs.data.pack(DRIVE, shard_size="40KiB", compression="none")
    (manifest,) = packed_dir(drive_root).glob("manifest.*")
    data = json.loads(manifest.read_text())
    shard = data["shards"][0]
    evil = _tar_bytes(("../../escaped.txt", b"gotcha"))
    import hashlib

    digest = hashlib.sha256(evil).hexdigest()
    name = f"part-000000-{digest[:16]}.tar"
    (packed_dir(drive_root) / name).write_bytes(evil)
    shard.update(name=name, sha256=digest, size=len(evil))
    manifest.write_text(json.dumps(data))
    with pytest.raises(cs.DataError, match="outside"):
        cs.data.stage(DRIVE)
    assert not list(isolated.rglob("escaped.txt"))


# Archives -----------------------------------------------------------------------------------


def _tar_bytes(*members: tuple[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_bytes(*members: tuple[str, bytes], link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16  # a symbolic link, as Info-ZIP stores one
            archive.writestr(info, "/etc")
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tar.zst"])
def test_archives_are_staged(drive_root: Path, suffix: str) -> None:
    members = [("train/a.jpg", b"a" * 3000), ("train/b.jpg", b"b"), ("labels.csv", b"x,1\n")]
    path = drive_root / "datasets" / f"digits{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".zip":
        path.write_bytes(_zip_bytes(*members))
    elif suffix == ".tar.zst":
        raw = _tar_bytes(*members)
        with open(path, "wb") as f:
            writer = _archive.zstd_writer(f, 3)
            writer.write(raw)
            writer.close()
    else:
        path.write_bytes(_tar_bytes(*members, mode="w:gz" if suffix == ".tar.gz" else "w"))
    local = cs.data.stage(f"drive:datasets/digits{suffix}")
    assert local.name.startswith("digits-")
    assert {k: v[0] for k, v in tree(local).items() if v} == dict(members)
    assert cs.data.stage(f"drive:datasets/digits{suffix}") == local  # cached
    assert not list(_stage.downloads().iterdir())


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (lambda: _tar_bytes(("../evil", b"x")), "outside"),
        (lambda: _tar_bytes(("/etc/evil", b"x")), "absolute"),
        (lambda: _zip_bytes(("../evil", b"x")), "outside"),
        (lambda: _zip_bytes(("/abs", b"x")), "absolute"),
        (lambda: _zip_bytes(("ok", b"x"), link="data"), "link"),
        (lambda: b"PK\x03\x04 not really a zip", "not a zip"),
    ],
)
def test_hostile_archives_are_refused(
    drive_root: Path, isolated: Path, archive: Any, message: str
) -> None:
    data = archive()
    suffix = ".zip" if data.startswith(b"PK") else ".tar"
    path = drive_root / f"evil{suffix}"
    path.write_bytes(data)
    with pytest.raises(cs.DataError, match=message):
        cs.data.stage(f"drive:evil{suffix}")
    assert not list(isolated.glob("datasets/evil*"))
    assert not list(Path("/").glob("evil"))
    assert not list(isolated.rglob("evil"))


def test_a_zip_member_larger_than_it_declares_is_stopped(drive_root: Path) -> None:
    payload = _zip_bytes(("a.bin", b"x" * 5000))
    # Lower the declared size in the central directory: a zip bomb's trick.
    central = payload.rfind(b"PK\x01\x02")
    forged = bytearray(payload)
    forged[central + 24 : central + 28] = (10).to_bytes(4, "little")
    (drive_root / "bomb.zip").write_bytes(bytes(forged))
    with pytest.raises(cs.DataError, match="damaged or unsafe"):
        cs.data.stage("drive:bomb.zip")


# Full disk ----------------------------------------------------------------------------------


def test_too_little_free_space_is_said_before_anything_is_copied(
    flowers: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    cs.data.pack(DRIVE)
    monkeypatch.setattr(_stage, "disk_usage", lambda path: os.statvfs_result((0,) * 10))
    import shutil

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(_stage, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(cs.DataError, match=r"needs about .* free space"):
        cs.data.stage(DRIVE)
    assert not (isolated / "datasets" / ".download").exists() or not list(
        (isolated / "datasets" / ".download").iterdir()
    )


def test_a_disk_that_fills_up_while_unpacking(
    flowers: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    cs.data.pack(DRIVE, shard_size="40KiB")
    from colabsession._core.files import write_fd as real

    written = []

    def fills_up(path: str, *args: Any, **kwargs: Any) -> None:
        written.append(path)
        if len(written) > 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, *args, **kwargs)

    monkeypatch.setattr("colabsession._data.archive.write_fd", fills_up)
    with pytest.raises(cs.DataError, match=r"filled up .* not copied again"):
        cs.data.stage(DRIVE)
    assert not list((isolated / "datasets").glob(".flowers-*unpacking*"))
    assert list(_stage.downloads().glob("*.tar.zst"))  # kept for the next try
    monkeypatch.setattr("colabsession._data.archive.write_fd", real)
    assert tree(cs.data.stage(DRIVE)) == tree(flowers)


# A mount that drops or hangs -------------------------------------------------------------


class FlakyShardReadsFS:
    """A local file system whose reads of a packed dataset's shards (``part-*``) fail as the
    Drive mount's do: after some bytes of a named shard (once), with corrupted bytes (once), or
    never answering."""

    read: ClassVar[dict[str, int]] = {}
    fail_after: ClassVar[dict[str, int]] = {}
    corrupt_once: ClassVar[set[str]] = set()
    hang: ClassVar[threading.Event | None] = None
    stay: ClassVar[bool] = False  # a failure that keeps failing (the mount stays down)
    exc: ClassVar[Any] = OSError

    @classmethod
    def reset(cls, **switches: Any) -> type[FlakyShardReadsFS]:
        cls.read = {}
        cls.fail_after = switches.get("fail_after", {})
        cls.corrupt_once = set(switches.get("corrupt_once", ()))
        cls.hang = switches.get("hang")
        cls.exc = switches.get("exc", OSError)
        cls.stay = switches.get("stay", False)
        return cls

    def __new__(cls) -> Any:
        from fsspec.implementations.local import LocalFileSystem

        class Faulty(LocalFileSystem):  # type: ignore[misc]
            cachable = False

            def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
                f = super().open(path, mode, **kwargs)
                name = path.rsplit("/", 1)[-1]
                if "r" not in mode or not name.startswith("part-"):
                    return f
                return _FlakyShardFile(f, name, cls)

        return Faulty()


class _FlakyShardFile:
    def __init__(self, raw: Any, name: str, switches: type[FlakyShardReadsFS]) -> None:
        self.raw, self.name, self.switches = raw, name, switches

    def __enter__(self) -> _FlakyShardFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.raw.seek(offset, whence))

    def read(self, n: int = -1) -> bytes:
        s = self.switches
        if s.hang is not None:
            s.hang.wait(30)
        limit = s.fail_after.get(self.name)
        done = s.read.get(self.name, 0)
        if limit is not None and done >= limit:
            if not s.stay:
                del s.fail_after[self.name]
            if s.exc is OSError:
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            raise s.exc()
        if limit is not None and n > 0:
            n = min(n, limit - done) or n
        data = self.raw.read(n)
        s.read[self.name] = done + len(data)
        if self.name in s.corrupt_once and data:
            s.corrupt_once.discard(self.name)
            data = bytes([data[0] ^ 1]) + data[1:]
        return bytes(data)


def test_a_mount_that_drops_mid_stage_is_retried_and_resumed(
    flowers: Path, drive_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    (flowers / "big.bin").write_bytes(os.urandom(4 << 20))
    info = cs.data.pack(DRIVE, shard_size="1MiB", compression="none")
    big = max(info.shards, key=lambda s: s.size)
    opened = FlakyShardReadsFS.reset(fail_after={big.name: 2 << 20})
    monkeypatch.setattr(_stage, "_sleep", lambda s: None)
    location = Location(FlakyShardReadsFS(), str(packed_dir(drive_root)), DRIVE + ".packed")
    assert tree(cs.data.stage(location)) == tree(flowers)
    assert "not connected" in caplog.text or "dropped" in caplog.text
    assert opened.read[big.name] == big.size  # resumed: no byte of it was read twice


def test_a_mount_that_stays_down_is_a_clear_error_and_the_next_call_continues(
    flowers: Path, drive_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (flowers / "big.bin").write_bytes(os.urandom(4 << 20))
    info = cs.data.pack(DRIVE, shard_size="1MiB", compression="none")
    big = max(info.shards, key=lambda s: s.size)
    monkeypatch.setattr(_stage, "_sleep", lambda s: None)
    location = Location(FlakyShardReadsFS(), str(packed_dir(drive_root)), DRIVE + ".packed")
    opened = FlakyShardReadsFS.reset(fail_after={big.name: 1 << 20}, stay=True)
    monkeypatch.setattr(_stage, "ATTEMPTS", 2)
    with pytest.raises(cs.DataError, match=r"cs.drive.ensure\(\).*run the same call again"):
        cs.data.stage(location, workers=1)
    FlakyShardReadsFS.reset()
    assert tree(cs.data.stage(location, workers=1)) == tree(flowers)
    assert opened.read[big.name] == big.size - (1 << 20)


def test_a_mount_that_hangs_never_hangs_the_caller(
    flowers: Path, drive_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cs.data.pack(DRIVE)
    monkeypatch.setattr(_stage, "_sleep", lambda s: None)
    monkeypatch.setattr(_stage, "ATTEMPTS", 2)
    stuck = threading.Event()
    FlakyShardReadsFS.reset(hang=stuck)
    location = Location(FlakyShardReadsFS(), str(packed_dir(drive_root)), DRIVE + ".packed")
    try:
        with pytest.raises(cs.DataError, match="did not answer in time"):
            cs.data.stage(location, timeout="0.5s")
    finally:
        stuck.set()


# Plain folders ------------------------------------------------------------------------------


def test_a_folder_never_packed_is_copied_in_parallel_and_advice_given_once(
    flowers: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colabsession._data import api as data

    monkeypatch.setattr(data, "_advised", set())
    local = cs.data.stage(DRIVE)
    assert tree(local) == tree(flowers)
    out = capsys.readouterr().out
    assert "is not packed" in out
    assert "cs.data.pack('drive:datasets/flowers')" in out
    (flowers / "roses" / "new.jpg").write_bytes(b"new")
    copied = []
    real = _walk.copy_file

    def counted(loc: Any, item: Any, target: str) -> int:
        copied.append(item.path)
        return real(loc, item, target)

    monkeypatch.setattr("colabsession._data.stage.copy_file", counted)
    assert cs.data.stage(DRIVE) == local
    assert copied == ["roses/new.jpg"]  # the unchanged files were not copied again
    assert tree(local) == tree(flowers)
    assert "is not packed" not in capsys.readouterr().out


def test_a_folder_copy_cut_short_resumes(flowers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _walk.copy_file
    copied: list[str] = []

    failing = [True]

    def fails_midway(loc: Any, item: Any, target: str) -> int:
        copied.append(item.path)
        if failing[0] and len(copied) == 60:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return real(loc, item, target)

    monkeypatch.setattr("colabsession._data.stage.copy_file", fails_midway)
    with pytest.raises(cs.DataError, match="copied so far are kept"):
        cs.data.stage(DRIVE, workers=1)
    first = len(copied)
    copied.clear()
    failing[0] = False
    local = cs.data.stage(DRIVE, workers=1)
    assert tree(local) == tree(flowers)
    assert len(copied) < len([p for p in flowers.rglob("*") if p.is_file()])
    assert first + len(copied) <= len([p for p in flowers.rglob("*") if p.is_file()]) + 2


# Through the Drive API (the fake server) --------------------------------------------------------


def test_pack_and_stage_through_the_drive_api(
    flowers: Path, drive_api: Any, fake_drive: Any
) -> None:
    fs = drive_api
    remote = Location(fs, f"{fs.root}/datasets/flowers.packed", "drive:datasets/flowers.packed")
    (flowers / "0-new.jpg").write_bytes(b"new" * 100)
    first = cs.data.pack(DRIVE, remote, shard_size="64KiB")
    (flowers / "0-new.jpg").unlink()  # a shard's files changed: it goes, as do old manifests
    again = cs.data.pack(DRIVE, remote, shard_size="64KiB")
    gone = {s.name for s in first.shards} - {s.name for s in again.shards}
    assert gone
    assert fake_drive.count("DELETE ") >= len(gone)
    assert fake_drive.used()[1] == 0  # deleted for good, not sent to the Trash (issue 23)
    local = cs.data.stage(remote)
    assert tree(local) == tree(flowers)
    # A folder on the Drive API that was never packed: listed with sizes, copied file by file.
    source = Location(fs, f"{fs.root}/raw", "drive:raw")
    fs.makedirs(source.path, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        with fs.open(f"{source.path}/{name}", "wb") as f:
            f.write(name.encode() * 100)
    assert {k: v[0] for k, v in tree(cs.data.stage(source)).items()} == {
        "a.jpg": b"a.jpg" * 100,
        "b.jpg": b"b.jpg" * 100,
    }


def test_a_stage_cut_short_resumes_through_the_drive_api(
    flowers: Path, drive_api: Any, caplog: Any
) -> None:
    """Part files left by a kill, continued through the API (a Range read, or from the start
    where the file cannot seek): never taken for damage."""
    fs = drive_api
    remote = Location(fs, f"{fs.root}/datasets/flowers.packed", "drive:datasets/flowers.packed")
    info = cs.data.pack(DRIVE, remote, shard_size="64KiB")
    cache = _stage.downloads()
    cache.mkdir(parents=True, exist_ok=True)
    for shard in info.shards:
        data = fs.cat_file(f"{remote.path}/{shard.name}")
        (cache / f"{shard.sha256}.tar.zst.part").write_bytes(data[: len(data) // 2])
    assert tree(cs.data.stage(remote)) == tree(flowers)
    assert "damaged" not in caplog.text


# Command line -------------------------------------------------------------------------------


def test_cli(flowers: Path, capsys: Any) -> None:
    from colabsession._cli import main

    assert main(["data", "pack", DRIVE, "--shard-size", "64KiB"]) == 0
    assert "packed drive:datasets/flowers" in capsys.readouterr().out
    assert main(["data", "stage", DRIVE]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert tree(Path(path)) == tree(flowers)
    assert main(["data", "ls", "drive:datasets"]) == 0
    assert "flowers" in capsys.readouterr().out
    assert main(["data", "ls", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)[0]["path"] == path, out
    assert main(["data", "stage", "drive:datasets/nothing-here"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("colabsession: error:")
    with pytest.raises(SystemExit) as exit_:
        main(["data", "pack", DRIVE, "--compression", "lz4"])
    assert exit_.value.code == 2
