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
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Any


class MessageError(RuntimeError):
    """google.colab._message.MessageError."""


class TIMEOUT(Exception):
    """pexpect.exceptions.TIMEOUT."""


TIMEOUT.__module__ = "pexpect.exceptions"


class FakeColabDrive:
    """Switches: ``auth`` ("allow", "deny", "no_browser"), ``outcome`` ("ok", "fail",
    "root_timeout", "domain_policy", "hang"), ``flush`` ("ok", "fail", "unsupported")."""

    def __init__(self, root: Path, hostname: Path, mount_table: Path, drive: Path) -> None:
        self.root, self.hostname, self.mount_table, self.drive = root, hostname, mount_table, drive
        drive.mkdir(parents=True, exist_ok=True)
        self.auth = "allow"
        self.outcome = "ok"
        self.flush = "ok"
        self.dropped: set[str] = set()
        self.hang: threading.Event | None = None
        self.popups = 0

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


def install(fake: FakeColabDrive, mocker: Any) -> Any:
    """``google.colab.drive`` whose functions are the fake's, spied (``mount.call_args``...)."""
    import types

    module = types.ModuleType("google.colab.drive")
    module.mount = mocker.Mock(name="drive.mount", wraps=fake.mount)  # type: ignore[attr-defined]
    module.flush_and_unmount = mocker.Mock(  # type: ignore[attr-defined]
        name="drive.flush_and_unmount", wraps=fake.flush_and_unmount
    )
    return module
