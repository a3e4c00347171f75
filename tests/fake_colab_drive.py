"""``google.colab.drive`` as colabtools' ``google/colab/drive.py`` behaves, for the tests.

It follows the real control flow, in the real order, with the real messages:

1. no ``/var/colab/hostname``: NotImplementedError ("... Use PyDrive2 instead ...");
2. a space in the mountpoint: ValueError;
3. the authorisation popup, *before* the already-mounted check: denied raises
   ``MessageError('Error: credential propagation was unsuccessful')``; with no browser attached
   the wait ends silently and the mount fails later;
4. ``My Drive`` (with a space) under the mountpoint: prints "Drive already mounted ..." and
   returns (Colab's own mounts create ``MyDrive``, so this rarely fires);
5. ``umount -f``: a mount at the mountpoint is removed from the mount table first;
6. the mountpoint checks: a link, a folder holding files, a file, a missing parent;
7. the Drive process: "mount failed", "mount failed: timeout during initial read of root
   folder ...", the Workspace "domain policy has disabled Drive File Stream", or pexpect's
   TIMEOUT when it never answers;
8. success: ``MyDrive`` appears under the mountpoint and a ``fuse.drive`` line in the mount table.

Colab's paths (``/content/drive``) live under *root* (a temporary folder standing in for the
VM's file system), and :meth:`FakeColabDrive.stat` answers for them, as the
mount would: ``ENOTCONN`` once :meth:`drop` was called, or never, with :attr:`hang`.

:meth:`FakeColabDrive.link` makes the mount's My Drive and a fake Drive API server
(fake_drive_api.py) one Drive, as the Drive client in Colab keeps them: a write on the mount lands
in the client's local cache (the folder) and reaches Drive's servers (what the API sees) only once
uploaded, which :attr:`~FakeColabDrive.uploads` governs ("now": before the API's next request;
"held": only at :meth:`~FakeColabDrive.upload`, never if it is not called: colabtools #287, #2607);
a deletion on the mount trashes the file on Drive; what the API changes shows on the mount.
:meth:`~FakeColabDrive.disconnect` drops the mount and loses what the cache had not uploaded.
:meth:`~FakeColabDrive.filesystem` is the mount as an fsspec file system that fails with ENOTCONN
once dropped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    from .fake_drive_api import FakeDrive


class MessageError(RuntimeError):
    """google.colab._message.MessageError."""


class TIMEOUT(Exception):
    """pexpect.exceptions.TIMEOUT."""


TIMEOUT.__module__ = "pexpect.exceptions"


class FakeColabDrive:
    """Switches: ``auth`` ("allow", "deny", "no_browser"), ``outcome`` ("ok", "fail",
    "root_timeout", "domain_policy", "hang"), ``flush`` ("ok", "fail", "unsupported"), and once
    :meth:`link`-ed to a fake Drive API server, ``uploads`` ("now", "held")."""

    def __init__(self, root: Path, hostname: Path, mount_table: Path, drive: Path) -> None:
        self.root, self.hostname, self.mount_table, self.drive = root, hostname, mount_table, drive
        drive.mkdir(parents=True, exist_ok=True)
        self.auth = "allow"
        self.outcome = "ok"
        self.flush = "ok"
        self.dropped: set[str] = set()
        self.hang: threading.Event | None = None
        self.popups = 0
        self.server: FakeDrive | None = None
        self.uploads = "now"
        self.synced: dict[str, str] = {}  # path under My Drive -> md5 both sides agree on

    def local(self, path: str | os.PathLike[str]) -> Path:
        """Where the VM path *path* lives here: Colab's /content under *root*, any other path
        (a test's temporary folder) as it is."""
        text = os.path.abspath(os.fspath(path))
        if text == "/content" or text.startswith("/content/"):
            return self.root / text.lstrip("/")
        return Path(text)

    # google.colab.drive ------------------------------------------------------------------------

    def mount(
        self,
        mountpoint: str,
        force_remount: bool = False,
        timeout_ms: int = 120000,
        readonly: bool = False,
    ) -> None:
        if not self.hostname.exists():
            raise NotImplementedError(
                "Mounting drive is unsupported in this environment. Use PyDrive2 instead. See "
                "examples at https://colab.research.google.com/notebooks/io.ipynb"
                "#scrollTo=7taylj9wpsA2."
            )
        if " " in mountpoint:
            raise ValueError("Mountpoint must not contain a space.")
        self.popups += 1
        if self.auth == "deny":
            raise MessageError("Error: credential propagation was unsuccessful")
        mountpoint = os.path.expanduser(mountpoint)
        here = self.local(mountpoint)
        if not force_remount and (here / "My Drive").is_dir():
            print(
                f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
                f'drive.mount("{mountpoint}", force_remount=True).'
            )
            return
        self._unmount(mountpoint)  # umount -f {mountpoint}; pkill -9 -x drive
        if here.is_symlink():
            raise ValueError("Mountpoint must not be a symlink")
        if here.is_dir() and any(here.iterdir()):
            raise ValueError("Mountpoint must not already contain files")
        if not here.is_dir() and here.exists():
            raise ValueError("Mountpoint must either be a directory or not exist")
        normed = os.path.normpath(mountpoint)
        if "/" in normed and not self.local(os.path.dirname(normed)).exists():
            raise ValueError("Mountpoint must be in a directory that exists")
        if self.auth == "no_browser" or self.outcome == "fail":
            raise ValueError("mount failed")
        if self.outcome == "root_timeout":
            raise ValueError(
                "mount failed: timeout during initial read of root folder; for more info: "
                "https://research.google.com/colaboratory/faq.html#drive-timeout"
            )
        if self.outcome == "domain_policy":
            raise ValueError(
                "The domain policy has disabled Drive File Stream: "
                "https://support.google.com/a/answer/7496409"
            )
        if self.outcome == "hang":
            raise TIMEOUT("Timeout exceeded.\n<pexpect.popen_spawn.PopenSpawn object at 0x7f>")
        here.mkdir(exist_ok=True)
        (here / "MyDrive").symlink_to(self.drive, target_is_directory=True)
        options = "ro" if readonly else "rw"
        with self.mount_table.open("a") as table:
            table.write(
                f"drive {mountpoint} fuse.drive {options},nosuid,nodev,relatime,user_id=0,"
                "group_id=0,allow_other 0 0\n"
            )
        if self.server is not None:  # a new Drive client, with an empty cache
            self.dropped.add(mountpoint)  # not there until it shows My Drive
            try:
                for child in list(self.drive.iterdir()):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
                self.synced.clear()
                self.sync()
            finally:
                self.dropped.discard(mountpoint)
        print(f"Mounted at {mountpoint}")

    def flush_and_unmount(self, timeout_ms: int = 24 * 60 * 60 * 1000) -> None:
        if self.flush == "unsupported":  # /var/colab/mp exists
            raise NotImplementedError("google.colab.drive is unsupported in this environment.")
        mounted = [line for line in self._table() if " fuse.drive " in line]
        if not mounted:
            print("Drive not mounted, so nothing to flush and unmount.")
            return
        if self.flush == "fail":  # the Drive process exits non-zero, or after timeout_sec
            raise ValueError("flush_and_unmount failed")
        for line in mounted:
            self._unmount(line.split()[1])

    # The mount as the kernel answers for it ----------------------------------------------------

    def drop(self, mountpoint: str = "/content/drive") -> None:
        """The Drive process died: the mount table still lists it, every access fails."""
        self.dropped.add(mountpoint)

    def stat(self, path: str | os.PathLike[str]) -> os.stat_result:
        text = os.path.abspath(os.fspath(path))
        for point in self.dropped:
            if text == point or text.startswith(point + "/"):
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", text)
        if self.hang is not None:
            self.hang.wait(60)
        return os.stat(self.local(text))

    def _table(self) -> list[str]:
        return self.mount_table.read_text().splitlines() if self.mount_table.exists() else []

    def _unmount(self, mountpoint: str) -> None:
        lines = self._table()
        kept = [line for line in lines if line.split()[1:2] != [mountpoint]]
        if kept != lines:
            self.mount_table.write_text("".join(f"{line}\n" for line in kept))
            link = self.local(mountpoint) / "MyDrive"
            if link.is_symlink():
                link.unlink()
        self.dropped.discard(mountpoint)

    def written_while_unmounted(self, mountpoint: str = "/content/drive") -> bool:
        """Whether files landed in the mountpoint's folder on the VM's disk."""
        here = self.local(mountpoint)
        return here.is_dir() and any(
            p.name != "MyDrive" or not p.is_symlink() for p in here.iterdir()
        )

    def reset_vm(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "content").mkdir(parents=True)

    # One My Drive, on the mount and through the API -----------------------------------------

    def link(self, server: FakeDrive) -> None:
        """Make the mount's My Drive and *server*'s one Drive (see the module's docstring)."""
        self.server = server
        server.state.before = lambda: self._sync(uploading=self.uploads == "now")
        self.sync()

    def sync(self) -> None:
        """The Drive client's round: uploads (if :attr:`uploads` is "now") and downloads."""
        assert self.server is not None
        with self.server.state.lock:
            self._sync(uploading=self.uploads == "now")

    def upload(self) -> None:
        """The cache's held writes reach Drive now (the upload delay is over)."""
        assert self.server is not None
        with self.server.state.lock:
            self._sync(uploading=True)

    def disconnect(self, mountpoint: str = "/content/drive") -> None:
        """The runtime lost its Drive client: the mount drops, and what its cache had not
        uploaded is gone."""
        self.drop(mountpoint)
        if self.server is None:
            return
        with self.server.state.lock:
            for rel, md5 in self._local().items():
                if self.synced.get(rel) != md5:
                    (self.drive / rel).unlink()

    def filesystem(self) -> Any:
        """The mount as fsspec sees it: the local file system, failing with ENOTCONN for
        paths in My Drive while the mount is dropped."""
        return _MountFS(self)

    def _local(self) -> dict[str, str]:
        found = {}
        for folder, _, names in os.walk(self.drive):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # a write under way
                path = Path(folder) / name
                rel = path.relative_to(self.drive).as_posix()
                found[rel] = hashlib.md5(path.read_bytes()).hexdigest()
        return found

    def _sync(self, *, uploading: bool) -> None:
        from .fake_drive_api import ROOT_ID

        assert self.server is not None
        state = self.server.state
        local, remote = self._local(), self._remote(state, ROOT_ID)
        for rel in sorted(set(local) | set(remote) | set(self.synced)):
            mine, base = local.get(rel), self.synced.get(rel)
            theirs = remote.get(rel)
            theirs_md5 = state.files[theirs].get("md5Checksum") if theirs else None
            if mine is not None and mine != base:  # written on the mount
                if uploading:
                    self._put(state, ROOT_ID, rel, (self.drive / rel).read_bytes(), theirs)
                    self.synced[rel] = mine
            elif mine is None and base is not None and theirs_md5 == base:  # deleted on it
                if uploading and theirs is not None:
                    state.files[theirs]["labels"]["trashed"] = True
                    self.synced.pop(rel)
            elif theirs is not None and theirs_md5 != base:  # changed through the API
                path = self.drive / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(state.content.get(theirs, b""))
                self.synced[rel] = str(theirs_md5)
            elif theirs is None and base is not None:  # deleted through the API
                (self.drive / rel).unlink(missing_ok=True)
                self.synced.pop(rel)

    @staticmethod
    def _remote(state: Any, root: str) -> dict[str, str]:
        """Drive's files under My Drive by path (the newest of a name), trash left out."""
        from .fake_drive_api import FOLDER, _trashed

        children: dict[str, list[dict[str, Any]]] = {}
        for item in state.files.values():
            for parent in item.get("parents", []):
                children.setdefault(parent["id"], []).append(item)
        found: dict[str, tuple[str, str]] = {}
        todo = [(root, "")]
        while todo:
            folder, prefix = todo.pop()
            for item in children.get(folder, []):
                if _trashed(state, item):
                    continue
                rel = f"{prefix}{item['title']}"
                if item["mimeType"] == FOLDER:
                    todo.append((item["id"], rel + "/"))
                elif rel not in found or found[rel][0] < item["modifiedDate"]:
                    found[rel] = (item["modifiedDate"], item["id"])
        return {rel: item_id for rel, (_, item_id) in found.items()}

    @staticmethod
    def _put(state: Any, root: str, rel: str, content: bytes, existing: str | None) -> None:
        from .fake_drive_api import FOLDER, _item, _now, _trashed

        if existing is None:
            parent = root
            *folders, title = rel.split("/")
            for name in folders:
                match = [
                    f
                    for f in state.files.values()
                    if f["title"] == name
                    and f["mimeType"] == FOLDER
                    and any(p["id"] == parent for p in f.get("parents", []))
                    and not _trashed(state, f)
                ]
                if match:
                    parent = match[0]["id"]
                else:
                    folder_id = f"id{next(state.ids):06d}"
                    state.files[folder_id] = _item(folder_id, name, FOLDER, [parent])
                    parent = folder_id
            existing = f"id{next(state.ids):06d}"
            state.files[existing] = _item(existing, title, "application/octet-stream", [parent])
        item = state.files[existing]
        state.content[existing] = content
        item["fileSize"] = str(len(content))
        item["md5Checksum"] = hashlib.md5(content).hexdigest()
        item["modifiedDate"] = _now()


class _MountFS(LocalFileSystem):  # type: ignore[misc]
    """The local file system over the fake mount: ENOTCONN in My Drive once dropped."""

    cachable = False

    def __init__(self, fake: FakeColabDrive) -> None:
        super().__init__()
        self.fake = fake

    def _check(self, path: Any) -> None:
        text = os.path.abspath(os.fspath(str(path)))
        mine = os.path.abspath(self.fake.drive)
        if self.fake.dropped and (text == mine or text.startswith(mine + "/")):
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", text)

    def ls(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(path)
        return super().ls(path, *args, **kwargs)

    def info(self, path: Any, **kwargs: Any) -> Any:
        self._check(path)
        return super().info(path, **kwargs)

    def _open(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(path)
        return super()._open(path, *args, **kwargs)

    def rm_file(self, path: Any) -> None:
        self._check(path)
        super().rm_file(path)

    def mv(self, path1: Any, path2: Any, *args: Any, **kwargs: Any) -> None:
        self._check(path1)
        super().mv(path1, path2, *args, **kwargs)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        self._check(path)
        super().makedirs(path, exist_ok=exist_ok)

    def cat_file(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._check(path)
        return super().cat_file(path, *args, **kwargs)


def install(fake: FakeColabDrive, mocker: Any) -> Any:
    """``google.colab.drive`` whose functions are the fake's, spied (``mount.call_args``...)."""
    import types

    module = types.ModuleType("google.colab.drive")
    module.mount = mocker.Mock(name="drive.mount", wraps=fake.mount)  # type: ignore[attr-defined]
    module.flush_and_unmount = mocker.Mock(  # type: ignore[attr-defined]
        name="drive.flush_and_unmount", wraps=fake.flush_and_unmount
    )
    return module
