"""Persistent environments with real pip against wheels the tests build, a local folder as Drive."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fsspec.implementations.local import LocalFileSystem

import colabsession as cs
from colabsession._data import archive as _archive
from colabsession.drive import Location

pytestmark = pytest.mark.usefixtures("clean_interpreter")


def env_folder(isolated: Path, name: str = "my_env") -> Path:
    return isolated / "drive" / "Colab Notebooks" / "colabsession" / "envs" / name


def drive_files(isolated: Path, name: str = "my_env") -> list[str]:
    return sorted(p.name for p in env_folder(isolated, name).iterdir())


def manifest_of(isolated: Path, name: str = "my_env") -> Path:
    (found,) = env_folder(isolated, name).glob("manifest.*.json")
    return found


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_install_persists_and_activates(
    isolated: Path, pip_args: list[str], installer: str
) -> None:
    if installer == "uv":
        pytest.importorskip("uv")
    info = cs.env.install("cs-demo-a", pip_args=pip_args, installer=installer)
    assert info is not None
    assert info.installer == installer
    assert dict(info.packages) == {"cs-demo-a": "1.0", "cs-demo-b": "2.0"}
    assert info.requirements == ("cs-demo-a",)
    assert info.python == ".".join(map(str, sys.version_info[:3]))
    files = drive_files(isolated)
    assert files == sorted([manifest_of(isolated).name, info.archive])  # one of each
    assert info.archive.endswith(".tar.zst")
    import cs_demo_a  # type: ignore[import-not-found]

    assert cs_demo_a.VERSION == "1.0"
    assert sys.path.index(os.environ["PYTHONPATH"].split(os.pathsep)[0]) <= 1  # ahead of the base
    script = shutil.which("cs-demo-a")
    assert script is not None
    out = subprocess.run([script], capture_output=True, text=True, check=True)
    assert "hello from cs_demo_a 1.0" in out.stdout
    out = subprocess.run(
        [sys.executable, "-c", "import cs_demo_b; print(cs_demo_b.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "2.0"  # !python sees the layer too


def test_only_what_the_base_lacks(pip_args: list[str]) -> None:
    info = cs.env.install("packaging", "cs-demo-c", pip_args=pip_args)
    assert info is not None
    assert dict(info.packages) == {"cs-demo-c": "1.0"}  # the base's packaging stays the base's


def test_install_extends_the_environment(pip_args: list[str]) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    info = cs.env.install("cs-demo-c", "cs-demo-b==1.0", pip_args=pip_args)
    assert info is not None
    assert dict(info.packages) == {"cs-demo-a": "1.0", "cs-demo-b": "1.0", "cs-demo-c": "1.0"}
    assert set(info.requirements) == {"cs-demo-a", "cs-demo-c", "cs-demo-b==1.0"}
    assert len(cs.env.list()) == 1


def test_restore_on_a_fresh_runtime(isolated: Path, pip_args: list[str], tmp_path: Path) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    env = {
        **os.environ,
        "COLABSESSION_HOME": str(tmp_path / "new-vm"),
        "COLABSESSION_DRIVE": str(isolated / "drive"),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if "cs-home" not in p),
    }
    # fsspec (with asyncio and its entry points, 0.1-0.3 s) is not needed to read local files:
    # a restore from the Drive mount or its stand-in never imports it.
    code = (
        "import sys, colabsession as cs; cs.env.restore(); import cs_demo_a; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 'asyncio'))); "
        "print(cs_demo_a.VERSION)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    *_, imported, version = out.stdout.strip().splitlines()
    assert version == "1.0"
    assert imported == "[]"
    assert (tmp_path / "new-vm" / "envs" / "my_env").is_dir()  # extracted to local disk


class CountingFS(LocalFileSystem):  # type: ignore[misc]
    cachable = False
    reads: ClassVar[list[str]] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:
            CountingFS.reads.append(path)
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        CountingFS.reads.append(path)
        with super()._open(path, "rb") as f:
            return f.read()


def test_restore_reads_two_files(tmp_path: Path, pip_args: list[str], isolated: Path) -> None:
    location = Location(CountingFS(), str(tmp_path / "envs"), "counting-drive")
    cs.env.install("cs-demo-a", location=location, pip_args=pip_args)
    shutil.rmtree(isolated / "envs")  # a new runtime: nothing on local disk
    CountingFS.reads.clear()
    cs.env.restore(location=location)
    assert len(CountingFS.reads) == 2  # the manifest and the archive
    CountingFS.reads.clear()
    cs.env.restore(location=location)  # already on local disk: the manifest only
    assert len(CountingFS.reads) == 1


def test_python_upgrade_rebuilds(
    isolated: Path, pip_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    manifest = manifest_of(isolated)
    data = json.loads(manifest.read_text())
    data["python"] = "3.9.18"
    manifest.write_text(json.dumps(data))
    with pytest.raises(cs.EnvError, match="strict=True"):
        cs.env.restore(strict=True)
    info = cs.env.restore("my_env", pip_args=pip_args)
    assert "rebuilding it from its exact versions" in capsys.readouterr().out
    assert info.python == ".".join(map(str, sys.version_info[:3]))
    assert json.loads(manifest_of(isolated).read_text())["python"] == info.python  # saved again
    assert dict(info.packages) == {"cs-demo-a": "1.0", "cs-demo-b": "2.0"}
    assert len(drive_files(isolated)) == 2  # the old archive went once the new one was saved


def test_damaged_archive_is_refused(isolated: Path, pip_args: list[str]) -> None:
    info = cs.env.install("cs-demo-a", pip_args=pip_args)
    assert info is not None
    shutil.rmtree(isolated / "envs")
    archive = isolated / "drive/Colab Notebooks/colabsession/envs/my_env" / info.archive
    archive.write_bytes(archive.read_bytes()[: info.size // 2])
    before = list(sys.path)
    with pytest.raises(cs.EnvError, match=f"{info.archive} is damaged"):
        cs.env.restore()
    assert sys.path == before


def test_damaged_manifest(isolated: Path, pip_args: list[str]) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    manifest_of(isolated).write_text("{torn")
    with pytest.raises(cs.EnvError, match=r"is damaged .*not valid JSON.*cs\.env\.install"):
        cs.env.restore()


def test_missing_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(cs.EnvError, match=r"cs\.env\.install"):
        cs.env.restore("nothing-here")
    # The first cell after every restart is safe before anything was saved: one line, None.
    assert cs.env.restore() is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "no environment 'my_env' saved yet" in out


def test_failed_install_changes_nothing(isolated: Path, pip_args: list[str]) -> None:
    cs.env.install("cs-demo-a", pip_args=pip_args)
    before_files, before_path = drive_files(isolated), list(sys.path)
    with pytest.raises(cs.EnvError, match="pip could not resolve"):
        cs.env.install("no-such-package-anywhere", pip_args=pip_args)
    assert drive_files(isolated) == before_files
    assert sys.path == before_path


@pytest.mark.parametrize("bad", ["cs-demo-a==>1", "not a requirement!", ""])
def test_unparsable_requirement(bad: str) -> None:
    with pytest.raises((cs.EnvError, cs.ConfigError)):
        cs.env.install(bad)


def _tar(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


def _unpack(archive: Path, target: Path, limit: int | None = None) -> None:
    with open(archive, "rb") as f:
        _archive.unpack(_archive.decompress(f, "gzip"), target, limit=limit)


SYM, HARD = tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("/etc/evil", tarfile.REGTYPE, "")], "absolute"),
        ([("../evil", tarfile.REGTYPE, "")], "outside"),
        ([("pkg/../../evil", tarfile.REGTYPE, "")], "outside"),
        ([("pkg/link", SYM, "../../etc/passwd")], "outside"),
        ([("pkg/abs", SYM, "/etc/passwd")], "absolute"),
        ([("pkg/dev", tarfile.CHRTYPE, "")], "device"),
        ([("pkg/fifo", tarfile.FIFOTYPE, "")], "device"),
        # Issue 13's sequence: a link deep inside, a second link through it, the first one
        # re-pointed, then a file written through the second.
        (
            [
                ("a", SYM, "pkg/deep"),
                ("a/b", SYM, "../../.."),
                ("a", SYM, "/"),
                ("a/b/evil", tarfile.REGTYPE, ""),
            ],
            "passes through the link",
        ),
        ([("a", SYM, "pkg"), ("a", SYM, "..")], "appears twice"),
        ([("pkg/x", tarfile.REGTYPE, ""), ("pkg/x", SYM, "../..")], "appears twice"),
        # A sibling whose name merely starts with the folder's name.
        ([("evil", SYM, "../outxy/secret")], "outside"),
        ([("pkg", tarfile.DIRTYPE, ""), ("pkg", SYM, "..")], "appears twice"),
        ([("pkg/f", tarfile.REGTYPE, ""), ("pkg", SYM, "/tmp")], "appears twice"),
        ([("h", HARD, "/etc/passwd")], "absolute"),
        ([("h", HARD, "missing")], "does not name a file"),
        ([("loop1", SYM, "loop2"), ("loop2", SYM, "loop1"), ("x", SYM, "loop1/..")], "loops"),
    ],
)
def test_malicious_archives_are_refused(
    tmp_path: Path, members: list[tuple[str, bytes, str]], message: str
) -> None:
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    archive = _tar(
        tmp_path,
        *((_member(n, k, link), b"x" if k == tarfile.REGTYPE else b"") for n, k, link in members),
    )
    target = tmp_path / "out"
    with pytest.raises(_archive.UnsafeArchive, match=message):
        _unpack(archive, target)
    assert not (tmp_path / "outxy").exists()
    assert not list(Path("/").glob("evil"))
    # Nothing was written outside: only members before the refused one, inside *target*.
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(target) and p != archive]
    assert outside == []


def test_links_inside_are_kept(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path,
        (_member("pkg/real.py"), b"x"),
        (_member("pkg/alias.py", SYM, "real.py"), b""),
        (_member("pkg/hard.py", HARD, "pkg/real.py"), b""),
        (_member("top", SYM, "pkg/../pkg"), b""),
    )
    _unpack(archive, tmp_path / "out")
    assert (tmp_path / "out/pkg/alias.py").is_symlink()
    assert (tmp_path / "out/pkg/hard.py").read_bytes() == b"x"
    assert (tmp_path / "out/top/real.py").read_bytes() == b"x"


def test_unpacking_stops_at_the_declared_size(tmp_path: Path) -> None:
    archive = _tar(tmp_path, (_member("a"), b"x" * 1000), (_member("b"), b"y" * 1000))
    with pytest.raises(_archive.UnsafeArchive, match="more than the 1,500 bytes"):
        _unpack(archive, tmp_path / "out", limit=1500)


def test_pack_and_unpack_round_trip(tmp_path: Path) -> None:
    """Long names (pax and GNU headers), odd characters, empty files, modes, links: the same
    tree comes back."""
    source = tmp_path / "src"
    deep = source / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("f" * 120 + ".py")).write_bytes(b"long name")
    (source / "caf\u00e9 \n.txt").write_bytes(b"odd")
    (source / "empty").write_bytes(b"")
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    (source / "run.sh").write_bytes(b"#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    (source / "alias").symlink_to("d" * 90)
    archive = tmp_path / "layer.tar.zst"
    stats = _archive.pack(source, archive)
    with open(archive, "rb") as f:
        out = _archive.unpack(
            _archive.decompress(f, "zstd"), tmp_path / "out", limit=stats.unpacked
        )
    assert out == stats

    def tree(root: Path) -> list[tuple[str, bytes | str, int]]:
        return sorted(
            (
                p.relative_to(root).as_posix(),
                os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "",
                p.lstat().st_mode & (0o777 if not p.is_symlink() else 0),
            )
            for p in root.rglob("*")
        )

    assert tree(tmp_path / "out") == tree(source)


@pytest.mark.parametrize(
    ("kind", "message"),
    [(tarfile.XGLTYPE, "tar extension"), (tarfile.GNUTYPE_SPARSE, "tar extension")],
)
def test_extensions_are_refused_not_guessed(tmp_path: Path, kind: bytes, message: str) -> None:
    header = tarfile.TarInfo("x")
    header.type = kind
    archive = tmp_path / "ext.tar"
    archive.write_bytes(header.tobuf(tarfile.USTAR_FORMAT) + bytes(1024))
    with open(archive, "rb") as f, pytest.raises(_archive.UnsafeArchive, match=message):
        _archive.unpack(f, tmp_path / "out")


@pytest.mark.parametrize("cut", [100, 512, 700, 1500])
def test_cut_short_archive_is_refused(tmp_path: Path, cut: int) -> None:
    archive = _tar(tmp_path, (_member("a"), b"x" * 1000), (_member("b"), b"y" * 1000))
    with gzip.open(archive, "rb") as f:
        data = f.read()
    short = tmp_path / "short.tar"
    short.write_bytes(data[:cut])
    with open(short, "rb") as f, pytest.raises(_archive.UnsafeArchive, match=r"cut short|valid"):
        _archive.unpack(f, tmp_path / "out")


def test_warns_when_the_base_version_is_already_imported(
    pip_args: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = types.ModuleType("cs_demo_b")
    old.__file__ = "/usr/lib/python3/dist-packages/cs_demo_b/__init__.py"
    monkeypatch.setitem(sys.modules, "cs_demo_b", old)
    with caplog.at_level(logging.WARNING, "colabsession"):
        cs.env.install("cs-demo-a", pip_args=pip_args)
    assert "cs_demo_b is already imported" in caplog.text
    assert "Restart session" in caplog.text


def test_list_and_remove(isolated: Path, pip_args: list[str]) -> None:
    cs.env.install("cs-demo-c", name="small", pip_args=pip_args)
    cs.env.install("cs-demo-a", name="big", pip_args=pip_args)
    assert [e.name for e in cs.env.list()] == ["big", "small"]
    cs.env.remove("small")
    assert [e.name for e in cs.env.list()] == ["big"]
    with pytest.raises(cs.EnvError, match="no environment"):
        cs.env.remove("small")
    with pytest.raises(cs.ConfigError):
        cs.env.install("x", name="../escape")


def test_cli(pip_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from colabsession._cli import main

    assert (
        main(
            [
                "env",
                "install",
                "--name",
                "cli",
                "cs-demo-c",
                "--pip-arg=--no-index",
                f"--pip-arg=--find-links={pip_args[-1]}",
            ]
        )
        == 0
    )
    assert main(["env", "list"]) == 0
    assert "cli" in capsys.readouterr().out
    assert main(["env", "restore", "--name", "cli"]) == 0
    assert main(["env", "remove", "cli"]) == 0
    assert main(["env", "restore", "--name", "cli"]) == 1


def _headers() -> list[bytes]:
    """Header blocks of every kind tarfile writes, and some it only reads."""
    blocks = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for name, kind, size, mode in [
            ("a.py", tarfile.REGTYPE, 12345, 0o644),
            ("dir", tarfile.DIRTYPE, 0, 0o755),
            ("x" * 60 + "/" + "y" * 60 + ".py", tarfile.REGTYPE, 7, 0o600),  # ustar prefix
            ("link", tarfile.SYMTYPE, 0, 0o777),
            ("caf\u00e9.txt", tarfile.REGTYPE, 0, 0o644),
            ("big", tarfile.REGTYPE, 8**11 + 5, 0o644),  # base-256 size in GNU format
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode, info.mtime = kind, size, mode, 1_700_000_000
            info.linkname = "target" if kind == tarfile.SYMTYPE else ""
            try:
                data = info.tobuf(fmt, "utf-8", "surrogateescape")
            except ValueError:
                continue  # too large for ustar
            at = 0
            while at < len(data):  # the header blocks, not the extended headers' data
                block = data[at : at + 512]
                blocks.append(block)
                extra = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape").size
                at += 512 + (-(-extra // 512) * 512 if at + 512 < len(data) else 0)
    v7 = bytearray(tarfile.TarInfo("old/").tobuf(tarfile.USTAR_FORMAT)[:512])
    v7[156:157] = tarfile.AREGTYPE  # a directory the V7 way: a regular file ending in /
    v7[148:156] = b"        "
    v7[148:155] = b"%06o\0" % sum(v7)
    return [*blocks, bytes(v7)]


@pytest.mark.parametrize("block", _headers())
def test_header_reads_as_tarfile_does(block: bytes) -> None:
    expected = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    got = _archive.header(block)
    fields = ("name", "type", "mode", "size", "mtime", "linkname")
    assert [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields]


@pytest.mark.parametrize("flip", [0, 100, 124, 148, 156, 300, 511])
def test_damaged_header_is_refused(flip: int) -> None:
    block = bytearray(tarfile.TarInfo("a.py").tobuf(tarfile.USTAR_FORMAT)[:512])
    block[flip] ^= 0x5A
    with pytest.raises(tarfile.HeaderError):
        _archive.header(bytes(block))


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a/b.py", "a/b.py"),
        ("a..b/c", "a..b/c"),
        (".hidden/x", ".hidden/x"),
        ("a/..x", "a/..x"),
        ("./a", "a"),
        ("a/./b", "a/b"),
        ("a//b/", "a/b"),
        ("..", None),
        ("a/../b", None),
        ("/a", None),
        ("a\\b", None),
        ("x\0y", None),
        (".", None),
    ],
)
def test_member_names_are_cleaned_one_way(name: str, clean: str | None) -> None:
    """The quick path for names already clean and the full one agree: one name, one path, so
    that no link can be re-pointed under a second spelling."""
    if clean is None:
        with pytest.raises(_archive.UnsafeArchive):
            _archive.clean(name)
    else:
        assert _archive.clean(name) == clean


@pytest.mark.parametrize(
    "body", [b"zz path=a\n", b"99 path=a\n", b"9 path=a", b"0 =\n", b"12 size=x1\n"]
)
def test_malformed_pax_header_is_refused(tmp_path: Path, body: bytes) -> None:
    extended = tarfile.TarInfo("././@PaxHeader")
    extended.type, extended.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo("a")
    archive = tmp_path / "pax.tar"
    archive.write_bytes(
        extended.tobuf(tarfile.USTAR_FORMAT)
        + body.ljust(512, b"\0")
        + member.tobuf(tarfile.USTAR_FORMAT)
        + bytes(1024)
    )
    with open(archive, "rb") as f, pytest.raises(_archive.UnsafeArchive, match="pax"):
        _archive.unpack(f, tmp_path / "out")
