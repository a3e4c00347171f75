"""One writer per run: a lease file with its owner and a heartbeat, renewed in the background.

Drive offers no atomic create, so this guards against the common case (a second notebook opened
on a run that is still training), not against two writers starting in the same second.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from ._errors import LeaseError
from ._units import format_duration

logger = logging.getLogger("colabsession.checkpoint")


class Lease:
    """The lease at *path* in the fsspec file system *fs*, held as *owner*."""

    def __init__(
        self, fs: Any, path: str, *, owner: str, session: str, ttl: float, takeover: bool, what: str
    ) -> None:
        self.fs, self.path, self.owner, self.session = fs, path, owner, session
        self.ttl, self.takeover, self.what = ttl, takeover, what
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # a torn lease file: nobody holds it
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        """Take the lease. A holder on this machine whose process is gone, or one silent for
        longer than its ttl, loses it; for a holder elsewhere that may have died with its
        runtime, wait until its ttl runs out; a holder that is still alive is an error (unless
        *takeover*)."""
        try:
            lease = self.read()
        except OSError as exc:
            logger.warning(
                "colabsession: cannot read the lease of %s (%s): writing anyway", self.what, exc
            )
            return
        if lease and lease.get("owner") != self.owner and not self._stale(lease):
            if self.takeover:
                logger.warning("colabsession: taking %s over from %s", self.what, _who(lease))
            else:
                lease = self._wait_for_silence(lease)
        self.write()
        self._start_heartbeat()

    def _stale(self, lease: dict[str, Any]) -> bool:
        if time.time() - float(lease.get("heartbeat", 0)) >= float(lease.get("ttl", self.ttl)):
            return True
        if lease.get("host") == socket.gethostname():
            import psutil

            return not psutil.pid_exists(int(lease.get("pid", -1)))  # a crashed kernel
        return False

    def _wait_for_silence(self, lease: dict[str, Any]) -> dict[str, Any]:
        ttl = float(lease.get("ttl", self.ttl))
        age = time.time() - float(lease.get("heartbeat", 0))
        print(
            f"colabsession: {self.what} was written by {_who(lease)} "
            f"{format_duration(age)} ago; waiting up to {format_duration(ttl - age)} in case "
            "that runtime is gone",
            flush=True,
        )
        first_beat = lease.get("heartbeat")
        deadline = time.monotonic() + ttl - age + 1
        while time.monotonic() < deadline:
            time.sleep(min(max(ttl / 6, 0.05), 10.0))
            current = self.read()
            if not current or current.get("owner") == self.owner or self._stale(current):
                return current or {}
            if current.get("heartbeat") != first_beat:  # it is alive: do not write over it
                break
        current = self.read() or lease
        raise LeaseError(
            f"{self.what} is being written by another notebook ({_who(current)}, heard of "
            f"{format_duration(time.time() - float(current.get('heartbeat', 0)))} ago). Two "
            "writers would overwrite each other's checkpoints: stop the other one, or pass "
            "takeover=True"
        )

    def write(self) -> None:
        record = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "session": self.session,
            "heartbeat": time.time(),
            "ttl": self.ttl,
        }
        with self._lock:
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(self.path, json.dumps(record).encode())

    def check(self) -> None:
        """Raise LeaseError if another writer took the run over."""
        if self.lost:
            raise LeaseError(self.lost)
        try:
            lease = self.read()
        except OSError:
            return  # the location is down; the local commit goes on
        if lease and lease.get("owner") != self.owner:
            self.lost = (
                f"{self.what} was taken over by another notebook ({_who(lease)}); "
                "this one no longer writes to it"
            )
            raise LeaseError(self.lost)

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.check()
                    self.write()
                except LeaseError:
                    return
                except OSError as exc:
                    logger.debug("colabsession: lease heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="colabsession-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            lease = self.read()
            if lease and lease.get("owner") == self.owner:
                self.fs.rm_file(self.path)
        except OSError:
            pass  # it expires by itself


def _who(lease: dict[str, Any]) -> str:
    return f"host {lease.get('host')}, pid {lease.get('pid')}"
