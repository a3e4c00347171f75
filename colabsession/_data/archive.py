"""Tar archives from untrusted places: packing with zstd, and unpacking that cannot escape.

Drive is written by other people and other notebooks, so an archive read from it is untrusted.
:func:`unpack` validates every member against a model of the tree built so far, whatever the
member order: no absolute names and no ``..``; no member may pass through a symbolic link (so no
file is ever written through one); no name may appear twice (a link cannot be re-pointed); hard
links must name a regular file already unpacked; no devices, FIFOs or sockets; every symbolic link,
followed through the final tree the way the system follows it, must stay inside. It writes no more
than *limit* bytes. Unpack into a fresh folder and move it into place only once it is complete and
the archive verified: a refused or damaged archive leaves nothing behind.

>>> folder = Path("notes"); folder.mkdir(); _ = (folder / "a.txt").write_text("hello")
>>> stats = pack(folder, Path("layer.tar.zst"))
>>> with open("layer.tar.zst", "rb") as f:
...     unpack(decompress(f, "zstd"), Path("fresh"), limit=stats.unpacked)
PackStats(files=1, unpacked=5)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from colabsession._core.errors import ColabSessionError
from colabsession._core.files import write_fd

CHUNK = 4 << 20
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
# Already clean: parts that are neither empty, "." nor "..", no backslash, no NUL.
_PART = r"(?!\.\.?(?:/|$))[^/\\\0]+"
_PLAIN = re.compile(rf"{_PART}(?:/{_PART})*")
CUT_SHORT = "it ends too early (cut short)"
MAX_HOPS = 40  # as the system's own limit on links followed in one path


class UnsafeArchive(ColabSessionError):
    """An archive member would land outside its folder, or the archive is not what it says."""


@dataclass(frozen=True)
class PackStats:
    files: int  # members
    unpacked: int  # bytes of file data


def suffix(compression: str) -> str:
    return {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}[compression]


def compression_of(name: str) -> str:
    """The compression an archive's name says: zstd, gzip or none."""
    if name.endswith((".tar.zst", ".tzst")):
        return "zstd"
    if name.endswith((".tar.gz", ".tgz")):
        return "gzip"
    if name.endswith(".tar"):
        return "none"
    raise UnsafeArchive(f"{name!r} is not a .tar, .tar.gz or .tar.zst archive")


def pack(folder: Path, target: Path, *, level: int = 3) -> PackStats:
    """Write *folder*'s contents (sorted, names relative to it) to the zstd tar *target*."""
    files = unpacked = 0
    with open(target, "wb") as raw:
        compressor = zstd_writer(raw, level)
        with tarfile.open(fileobj=compressor, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(folder.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = int(info.mtime)  # a fraction would cost a PAX header per member
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                    unpacked += info.size
                else:
                    tar.addfile(info)
                files += 1
        compressor.close()
    return PackStats(files, unpacked)


def decompress(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A stream of the archive's tar bytes, from *raw* compressed as *compression*; data that
    does not decompress raises UnsafeArchive."""
    if compression == "zstd":
        return _Checked(_zstd_reader(raw), "zstd")  # type: ignore[return-value]
    if compression == "gzip":
        import gzip

        return _Checked(gzip.GzipFile(fileobj=raw, mode="rb"), "gzip")  # type: ignore[return-value]
    return raw


class _Checked:
    """A decompressing reader whose errors (each library has its own) are UnsafeArchive."""

    def __init__(self, reader: Any, what: str) -> None:
        self.reader, self.what = reader, what

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self.reader.read(n))
        except (OSError, TimeoutError):
            if not _decoder_error(sys.exc_info()[1]):
                raise  # the source failed (a dropped mount): not the data
            raise UnsafeArchive(f"it is not valid {self.what} data") from None
        except (EOFError, ValueError, MemoryError) as exc:
            raise UnsafeArchive(f"it is not valid {self.what} data ({exc})") from None
        except Exception as exc:  # zstandard.ZstdError, compression.zstd.ZstdError, zlib.error
            raise UnsafeArchive(f"it is not valid {self.what} data ({exc})") from None

    def readable(self) -> bool:
        return True


def _decoder_error(exc: BaseException | None) -> bool:
    import gzip

    return isinstance(exc, gzip.BadGzipFile)


def unpack(
    stream: IO[bytes],
    target: Path,
    *,
    limit: int | None = None,
    progress: Callable[[tarfile.TarInfo], object] | None = None,
) -> PackStats:
    """Unpack the tar *stream* into the new folder *target*, checking each member (see the
    module's text) and writing at most *limit* bytes of file data. Raises UnsafeArchive."""
    unpacker = Unpacker(target, progress=progress)
    stats = unpacker.add(members(stream), limit=limit)
    unpacker.finish()
    return stats


class Unpacker:
    """Unpacks several archives (a dataset's shards, in order) into one new folder, as one
    tree: a name may appear once in all of them, and a link is checked against all of them.

    >>> for name in ("a", "b"):  # two shards, a file in each
    ...     Path(name).mkdir(); _ = Path(name, name + ".txt").write_text(name)
    ...     _ = pack(Path(name), Path(name + ".tar.zst"))
    >>> unpacker = Unpacker(Path("fresh"))
    >>> for shard in ("a.tar.zst", "b.tar.zst"):
    ...     with open(shard, "rb") as f:
    ...         _ = unpacker.add(members(decompress(f, "zstd")))
    >>> unpacker.finish()
    PackStats(files=2, unpacked=2)
    """

    def __init__(
        self, target: Path, *, progress: Callable[[tarfile.TarInfo], object] | None = None
    ) -> None:
        target.mkdir(parents=True, exist_ok=False)
        self.root = str(target)
        self.progress = progress
        self.tree = _Tree()
        self.made = {""}  # folders created so far, relative to the target
        self.files = 0
        self.written = 0

    def add(
        self,
        entries: Iterable[tuple[tarfile.TarInfo, Iterable[bytes | memoryview] | None]],
        *,
        limit: int | None = None,
    ) -> PackStats:
        """Unpack *entries* (from :func:`members` or :func:`zip_members`), writing at most
        *limit* bytes of file data; returns what this call unpacked."""
        root, made, tree = self.root, self.made, self.tree
        files = written = 0
        for member, data in entries:
            path = tree.add(member)
            destination = f"{root}/{path}"
            parent = path.rpartition("/")[0]
            if parent not in made:  # parents the archive may not list; none is a link
                os.makedirs(f"{root}/{parent}", mode=0o755, exist_ok=True)
                made.add(parent)
            if member.isdir():
                if path not in made:
                    with contextlib.suppress(FileExistsError):  # made as a parent before
                        os.mkdir(destination, 0o755)
                    made.add(path)
            elif member.issym():
                os.symlink(member.linkname, destination)
            elif member.islnk():
                os.link(f"{root}/{clean(member.linkname)}", destination)
            else:
                assert data is not None
                written += member.size
                if limit is not None and written > limit:
                    raise UnsafeArchive(f"it unpacks to more than the {limit:,} bytes it declares")
                # O_EXCL and O_NOFOLLOW: never through a link, never over an existing file.
                write_fd(
                    destination, _exactly(data, member.size), _NEW_FILE, member.mode & 0o755 | 0o600
                )
            files += 1
            if self.progress is not None:
                self.progress(member)
        self.files += files
        self.written += written
        return PackStats(files, written)

    def finish(self) -> PackStats:
        """Check every link through the whole tree; what was unpacked in all."""
        self.tree.check_links()
        return PackStats(self.files, self.written)


def _exactly(data: Iterable[bytes | memoryview], size: int) -> Iterator[bytes | memoryview]:
    """*data*, refused if it is not *size* bytes (a zip member can lie about its size)."""
    got = 0
    for chunk in data:
        got += len(chunk)
        if got > size:
            raise UnsafeArchive("a member holds more bytes than it declares")
        yield chunk
    if got != size:
        raise UnsafeArchive(CUT_SHORT)


def members(
    stream: IO[bytes],
) -> Iterator[tuple[tarfile.TarInfo, Iterator[bytes | memoryview] | None]]:
    """Each member of the tar *stream* with an iterator over its data (read it before asking for
    the next member), parsed block by block: tarfile reads each header, and the name, link and
    size of pax (``x``) and GNU long-name headers are applied; global pax headers, sparse files
    and other extensions are refused rather than guessed at. (tarfile's own stream mode reads
    data in 10 KiB pieces: three times slower here.)"""
    name: str | None = None
    linkname: str | None = None
    size: int | None = None
    while True:
        block = _read_exact(stream, tarfile.BLOCKSIZE)
        if block.count(0) == tarfile.BLOCKSIZE:
            return  # the end marker
        try:
            member = header(block)
        except tarfile.HeaderError as exc:
            raise UnsafeArchive(f"it is not a valid tar archive ({exc})") from None
        if member.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if member.size > 1 << 20:
                raise UnsafeArchive("it has an extended header larger than 1 MiB")
            body = _read_exact(stream, member.size + (-member.size % tarfile.BLOCKSIZE))
            body = body[: member.size]
            if member.type == tarfile.XHDTYPE:
                records = _pax_records(body)
                name = records.get("path", name)
                linkname = records.get("linkpath", linkname)
                if "size" in records:
                    size = _pax_int(records["size"])
            else:
                text = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if member.type == tarfile.GNUTYPE_LONGNAME:
                    name = text
                else:
                    linkname = text
            continue
        if member.type not in (
            tarfile.REGTYPE,
            tarfile.AREGTYPE,
            tarfile.DIRTYPE,
            tarfile.SYMTYPE,
            tarfile.LNKTYPE,
        ):
            raise UnsafeArchive(f"{member.name!r} is a device, special file or tar extension")
        if name is not None:
            member.name = name
        if linkname is not None:
            member.linkname = linkname
        if size is not None:
            member.size = size
        name = linkname = size = None
        if member.isreg():
            data = _data(stream, member.size)
            yield member, data
            for _ in data:  # what the caller left unread
                pass
        else:  # as tarfile reads it: only regular files have data
            yield member, None


def zip_members(
    archive: Any,
) -> Iterator[tuple[tarfile.TarInfo, Iterator[bytes] | None]]:
    """Each member of the open ``zipfile.ZipFile`` *archive* as a tar member (folders and
    regular files; a link, which zip stores as a file with a link's mode, is refused), with an
    iterator over its data that checks the member's CRC-32 as zipfile does."""
    import stat

    for item in archive.infolist():
        member = tarfile.TarInfo(item.filename)
        mode = item.external_attr >> 16
        kind = stat.S_IFMT(mode)  # 0 when the zip was made where files have no Unix mode
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchive(f"{item.filename!r} is a link or special file")
        if item.is_dir():
            member.type = tarfile.DIRTYPE
            member.name = item.filename.rstrip("/")
            yield member, None
            continue
        member.type = tarfile.REGTYPE
        member.size = item.file_size
        member.mode = (mode & 0o777) or 0o644
        yield member, _zip_data(archive, item)


def _zip_data(archive: Any, item: Any) -> Iterator[bytes]:
    import zipfile

    try:
        with archive.open(item) as data:
            while chunk := data.read(CHUNK):
                yield chunk
    except (zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise UnsafeArchive(f"{item.filename!r} is damaged or not readable ({exc})") from None


def header(block: bytes) -> tarfile.TarInfo:
    """The 512-byte header *block* as ``tarfile.TarInfo.frombuf`` reads it (name, type, mode,
    size, mtime, link), three times quicker for the plain octal headers that :func:`pack` and
    most tools write; anything else (base-256 numbers, signed checksums, damage) is left to
    frombuf itself, which also raises ``tarfile.HeaderError`` for what is not a header."""
    try:
        checksum = _octal(block[148:156])
        mode, size, mtime = _octal(block[100:108]), _octal(block[124:136]), _octal(block[136:148])
    except ValueError:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    if len(block) != tarfile.BLOCKSIZE or checksum != sum(block) - sum(block[148:156]) + 256:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    member = tarfile.TarInfo(_text(block[0:100]))
    member.mode, member.size, member.mtime = mode, size, mtime
    member.type = block[156:157]
    member.linkname = _text(block[157:257])
    if member.type == tarfile.AREGTYPE and member.name.endswith("/"):
        member.type = tarfile.DIRTYPE  # the old V7 way of saying directory
    if member.isdir():
        member.name = member.name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix and member.type not in tarfile.GNU_TYPES:
        member.name = f"{prefix}/{member.name}"
    return member


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _data(stream: IO[bytes], size: int) -> Iterator[bytes | memoryview]:
    read = getattr(stream, "readview", None) or stream.read  # Prefetch's: no copy
    left = size
    while left:
        chunk = read(min(left, CHUNK))
        if not chunk:
            raise UnsafeArchive(CUT_SHORT)
        left -= len(chunk)
        yield chunk
    _read_exact(stream, -size % tarfile.BLOCKSIZE)  # the padding


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    """*n* bytes of *stream*; UnsafeArchive if it ends before."""
    data = stream.read(n) if n else b""
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            raise UnsafeArchive(CUT_SHORT)
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _pax_records(body: bytes) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    records: dict[str, str] = {}
    at = 0
    while at < len(body):
        space = body.find(b" ", at)
        try:
            length = int(body[at:space])
        except ValueError:
            raise UnsafeArchive("it has a malformed pax header") from None
        end = at + length
        if space < 0 or length <= 0 or end > len(body) or body[end - 1 : end] != b"\n":
            raise UnsafeArchive("it has a malformed pax header")
        key, _, value = body[space + 1 : end - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        at = end
    return records


def _pax_int(text: str) -> int:
    if not text.isdigit():
        raise UnsafeArchive(f"it has a pax size that is not a number ({text[:20]!r})")
    return int(text)


def is_plain(name: str) -> bool:
    """Whether *name* is already a clean relative path: parts that are neither empty, ``.`` nor
    ``..``, and no backslash or NUL (nothing that could leave its folder)."""
    return _PLAIN.fullmatch(name) is not None


def clean(name: str) -> str:
    """*name* as a relative path with no ``.``, ``..`` or empty parts; raises UnsafeArchive."""
    if is_plain(name):  # the common case
        return name
    if "\0" in name:
        raise UnsafeArchive(f"{name!r} holds a NUL character")
    if name.startswith("/") or "\\" in name:
        raise UnsafeArchive(f"{name!r} is an absolute name")
    parts = [p for p in name.split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise UnsafeArchive(f"{name!r} would land outside the folder")
    return "/".join(parts)


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def links_outside(links: dict[str, str]) -> list[tuple[str, str]]:
    """(link, why) for each of *links* (relative path -> target, the links of one tree) that is
    absolute or, followed through the others the way the system follows it, leads outside the
    tree (or loops): what :class:`Unpacker` would refuse, found before anything is written.

    >>> for link, why in links_outside({"a/x": "../b", "a/y": "../../x", "z": "/etc"}):
    ...     print(link, "-", why)
    a/y - the link 'a/y' leads outside the folder
    z - the link 'z' -> '/etc' is absolute
    """
    tree = _Tree()
    bad = []
    for path, target in links.items():
        if not target or PurePosixPath(target).is_absolute():
            bad.append((path, f"the link {path!r} -> {target!r} is absolute"))
        else:
            tree.links[path] = target
    for path in list(tree.links):
        try:
            tree.resolve(path)
        except UnsafeArchive as exc:
            bad.append((path, str(exc)))
    return sorted(bad)


class _Tree:
    """What the archive has unpacked so far: directories, files and links (relative paths)."""

    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.files: set[str] = set()
        self.links: dict[str, str] = {}

    def add(self, member: tarfile.TarInfo) -> str:
        path = clean(member.name)
        # A parent already known as a folder has only folders above it (a link or file can never
        # take a folder's name): the walk up is needed only for a new parent.
        parents = [] if path.rpartition("/")[0] in self.dirs else _parents(path)
        for parent in parents:
            if parent in self.links:
                raise UnsafeArchive(f"{member.name!r} passes through the link {parent!r}")
            if parent in self.files:
                raise UnsafeArchive(f"{member.name!r} is under the file {parent!r}")
        taken = path in self.files or path in self.links
        if taken or (path in self.dirs and not member.isdir()):
            raise UnsafeArchive(f"{member.name!r} appears twice")
        if member.isdir():
            self.dirs.add(path)
        elif member.issym():
            if not member.linkname or PurePosixPath(member.linkname).is_absolute():
                raise UnsafeArchive(f"the link {member.name!r} -> {member.linkname!r} is absolute")
            self.links[path] = member.linkname
            self.resolve(path)  # escapes now: refuse before it is created
        elif member.islnk():
            if clean(member.linkname) not in self.files:
                raise UnsafeArchive(
                    f"the hard link {member.name!r} -> {member.linkname!r} does not name a file "
                    "unpacked before it"
                )
            self.files.add(path)
        elif member.isreg():
            self.files.add(path)
        else:
            raise UnsafeArchive(f"{member.name!r} is a device or special file")
        self.dirs.update(parents)
        return path

    def resolve(self, path: str) -> str:
        """Where *path* leads, following the links as the system does; raises UnsafeArchive
        when that is outside the folder (or a loop)."""
        done: list[str] = []
        todo = path.split("/")
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise UnsafeArchive(f"the link {path!r} leads outside the folder")
                done.pop()
                continue
            done.append(part)
            here = "/".join(done)
            if here in self.links:
                hops += 1
                if hops > MAX_HOPS:
                    raise UnsafeArchive(f"the link {path!r} loops")
                done.pop()
                todo = self.links[here].split("/") + todo
        return "/".join(done)

    def check_links(self) -> None:
        """Every link, followed through the whole tree, stays inside (a link created later may
        have changed where an earlier one leads)."""
        for link in self.links:
            self.resolve(link)


class HashingReader:
    """Reads *raw* while computing its sha256 and counting its bytes (one pass)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end (the tar's end marker may leave padding unread)."""
        drain(self)


class Prefetch:
    """Reads *raw* ahead in a thread (the Drive mount or the API) while the caller unpacks; with a
    *timeout*, a read that brings nothing for that long raises TimeoutError in the caller."""

    def __init__(self, raw: Any, depth: int = 8, *, timeout: float | None = None) -> None:
        self._timeout = timeout  # seconds the reader waits for the next chunk (None: no limit)
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._chunk = b""
        self._at = 0
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(raw,), daemon=True)
        self._thread.start()

    def _fill(self, raw: Any) -> None:
        try:
            while not self._stop.is_set():
                chunk = bytes(raw.read(CHUNK))
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # handed to the reader
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop reading ahead (the reader gave up early); the thread ends soon after."""
        self._stop.set()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, n: int = -1) -> bytes:
        at = self._at
        if 0 < n <= len(self._chunk) - at:  # the common case: a header, or a small file
            self._at = at + n
            return self._chunk[at : at + n]
        parts = []
        while n != 0:
            if self._at >= len(self._chunk):
                if self._done:
                    break
                item = self._next()
                if isinstance(item, BaseException):
                    raise item
                if not item:
                    self._done = True
                    break
                self._chunk, self._at = item, 0
            left = len(self._chunk) - self._at
            take = left if n < 0 else min(n, left)
            parts.append(self._chunk[self._at : self._at + take])
            self._at += take
            if n > 0:
                n -= take
        return b"".join(parts)

    def _next(self) -> bytes | BaseException:
        try:
            return self._queue.get(timeout=self._timeout)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"reading did not bring anything for {self._timeout:g} s") from None

    def readview(self, n: int) -> memoryview | bytes:
        """At most *n* bytes (n > 0) from the chunk at hand, without copying them; empty at
        the end. Files' data goes from here to the disk untouched."""
        if self._at >= len(self._chunk):
            if self._done:
                return b""
            item = self._next()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self._done = True
                return b""
            self._chunk, self._at = item, 0
        at = self._at
        self._at = end = min(at + n, len(self._chunk))
        return memoryview(self._chunk)[at:end]

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read what is left (the tar's end leaves padding unread)."""
        drain(self)


def drain(reader: Any) -> None:
    """Read *reader* to its end."""
    while reader.read(CHUNK):
        pass


def zstd_writer(raw: Any, level: int) -> Any:
    if sys.version_info >= (3, 14):
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.ZstdFile(raw, "wb", level=level)
    import zstandard

    return zstandard.ZstdCompressor(level=level, threads=-1).stream_writer(raw, closefd=False)


def _zstd_reader(raw: IO[bytes]) -> Any:
    if sys.version_info >= (3, 14):
        from compression import zstd

        return zstd.ZstdFile(raw, "rb")
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
