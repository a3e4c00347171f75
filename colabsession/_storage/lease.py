"""One writer per run: a lease file with its owner and a heartbeat, renewed in the background.

The lease is replaced whole (a temporary file renamed over it on disk and on the Drive mount; the
Drive API replaces on write), so a reader never sees it half written; a lease that cannot be read
counts as held, never as free. Drive offers no atomic create, so this guards against the common
case (a second notebook opened on a run that is still training), not against two writers
starting in the same second.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from colabsession._core.errors import LeaseError
from colabsession._core.records import InvalidRecord, Record, parse_record, read_duration
from colabsession._core.say import say
from colabsession._core.units import format_duration
from colabsession._storage.store import Store

logger = logging.getLogger(__name__)

NAME = "lease.json"
MAX_BYTES = 64 << 10  # a lease is a few hundred bytes


@dataclass(frozen=True)
class LeaseRecord(Record):
    """Who writes a run, and when it was last heard of."""

    KIND: ClassVar[str] = "colabsession-lease"
    owner: str
    host: str
    pid: int
    session: str
    heartbeat: float
    ttl: float


class Lease:
    """The lease of the run in *store*, held as *owner*.

    Every operation on *store* is bounded by *timeout* seconds (None: the store's own), shorter
    than the store's where a save waits for the lease. *now* and *sleep* are the wall clock and
    the pause (tests pass fakes)."""

    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        session: str,
        ttl: float,
        takeover: bool,
        what: str,
        timeout: float | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store, self.owner, self.session = store, owner, session
        self.ttl, self.takeover, self.what = ttl, takeover, what
        self.timeout, self.now, self.sleep = timeout, now, sleep
        self.lost: str | None = None  # why this writer lost the lease, once it has
        self.lost_to: str | None = None  # who took it (as LeaseError.holder)
        self.held = False
        self._mark: tuple[object, ...] | None = None  # the lease file as our last write left it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> LeaseRecord | None:
        """The lease as it stands; None when nobody holds it. Raises OSError or TimeoutError
        when the store does not answer."""
        try:
            data = self.store.read(NAME, limit=MAX_BYTES, timeout=self.timeout)
        except FileNotFoundError:
            return None
        try:
            return parse_record(
                LeaseRecord, data, what=f"the lease of {self.what}", max_bytes=MAX_BYTES
            )
        except InvalidRecord:
            # Damaged: held by someone unknown, heard of when the file was last written.
            return LeaseRecord(
                owner="(unreadable lease)",
                host="?",
                pid=-1,
                session="?",
                heartbeat=self._mtime(),
                ttl=self.ttl,
            )

    def _mtime(self) -> float:
        try:
            info = self._info() or {}
            mtime = info.get("mtime") or info.get("modified")
            if mtime is None:
                return self.now()
            return float(mtime.timestamp() if hasattr(mtime, "timestamp") else mtime)
        except (OSError, TimeoutError, TypeError, ValueError):
            return self.now()

    def _info(self) -> dict[str, Any] | None:
        """The lease file's size, times and identity as the store reports them; None if absent."""
        try:
            return self.store.info(NAME, timeout=self.timeout)
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        """Take the lease. A holder on this machine whose process is gone, or one silent for
        longer than its ttl, loses it; for a holder elsewhere that may have died with its
        runtime, wait until its ttl runs out; a holder that is still alive is an error (unless
        *takeover*). Raises OSError or TimeoutError when the store does not answer."""
        lease = self.read()
        if lease and lease.owner != self.owner and not self._stale(lease):
            if self.takeover:
                logger.warning("colabsession: taking %s over from %s", self.what, _who(lease))
            else:
                self._wait_for_silence(lease)
        self.write()
        self.held = True
        self._start_heartbeat()

    def _silence(self, lease: LeaseRecord) -> tuple[float, float]:
        """How long *lease*'s holder has been silent and how long it may be, by this writer's
        clock and settings: times and durations read from Drive are untrusted (another VM's
        clock may run an hour ahead; a ttl in the file may be huge), so a heartbeat in the
        future counts as now and a ttl counts for at most this writer's own."""
        age = max(0.0, self.now() - lease.heartbeat)
        return age, read_duration(lease.ttl, at_most=self.ttl)

    def _stale(self, lease: LeaseRecord) -> bool:
        age, ttl = self._silence(lease)
        if age >= ttl:
            return True
        if lease.host == socket.gethostname() and lease.pid > 0:
            import psutil

            return not psutil.pid_exists(lease.pid)  # a crashed kernel
        return False

    def _wait_for_silence(self, lease: LeaseRecord) -> None:
        age, ttl = self._silence(lease)
        say(
            f"{self.what} was written by {_who(lease)} {format_duration(age)} ago; "
            f"waiting up to {format_duration(ttl - age)} in case that runtime is gone"
        )
        first_beat = lease.heartbeat
        # By this writer's clock alone: at most its own ttl, whatever the file says.
        deadline = self.now() + (ttl - age) + 1
        while self.now() < deadline:
            self.sleep(min(max(ttl / 6, 0.05), 10.0))
            current = self.read()
            if not current or current.owner == self.owner or self._stale(current):
                return
            if current.heartbeat != first_beat:  # it is alive: do not write over it
                lease = current
                break
        else:
            return
        raise LeaseError(
            f"{self.what} is being written by another notebook ({_who(lease)}, heard of "
            f"{format_duration(self._silence(lease)[0])} ago). Two writers would overwrite "
            "each other's checkpoints: stop the other one, or take the run over (takeover=True, "
            "or `colabsession ckpt takeover RUN` from a shell)",
            holder=_who(lease),
            run=self.what,
        )

    def revoke(self) -> LeaseRecord | None:
        """Take the lease from its holder without becoming one (for a notebook that is gone):
        a holder that is still alive finds it lost at its next save and stops writing, and the
        next writer takes it at once. Returns the lease as it stood; None if nobody held it."""
        lease = self.read()
        if lease is None or self._stale(lease):
            return None
        revoked = LeaseRecord(
            owner=f"revoked-by-{self.owner}",
            host=socket.gethostname(),
            pid=-1,
            session=self.session,
            heartbeat=0.0,  # long expired: the next writer need not wait
            ttl=self.ttl,
        )
        self.store.replace(NAME, revoked.to_json(), timeout=self.timeout)
        return lease

    def write(self) -> None:
        record = LeaseRecord(
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            session=self.session,
            heartbeat=self.now(),
            ttl=self.ttl,
        )
        if self._mark is None:  # the first write: the run's folder may not exist yet
            self.store.makedirs(timeout=self.timeout)
        try:
            self.store.replace(NAME, record.to_json(), timeout=self.timeout)
        except FileNotFoundError:  # the folder was deleted since: make it again
            self.store.makedirs(timeout=self.timeout)
            self.store.replace(NAME, record.to_json(), timeout=self.timeout)
        self._mark = self._stat()

    def _stat(self) -> tuple[object, ...] | None:
        info = self._info()
        if info is None:
            return None
        return tuple(info.get(k) for k in ("size", "mtime", "ino", "checksum", "modified"))

    def verify(self) -> None:
        """Raise LeaseError if the run was taken over: a look at the lease file's size and time
        (one round trip), and a read only when someone else wrote it since our last write."""
        if self.lost:
            raise self.error()
        if self._mark is None or self._stat() != self._mark:
            self.check()

    def check(self) -> None:
        """Raise LeaseError if another writer took the run over (a store that does not answer
        raises OSError or TimeoutError)."""
        if self.lost:
            raise self.error()
        lease = self.read()
        if lease and lease.owner != self.owner:
            self.lost_to = _who(lease)
            self.lost = (
                f"{self.what} was taken over by another notebook ({self.lost_to}); this one no "
                "longer writes to it. Its checkpoints so far are kept"
            )
            raise self.error()

    def error(self) -> LeaseError:
        """The LeaseError saying that this writer lost the run (after :meth:`check` found it)."""
        return LeaseError(
            self.lost or f"{self.what}: lease lost", holder=self.lost_to, run=self.what
        )

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    # A look at the file (read only if someone wrote it since): on the Drive
                    # mount a stat is one round trip where a read is four.
                    self.verify()
                    self.write()
                except LeaseError:
                    return
                except (OSError, TimeoutError) as exc:
                    logger.debug("colabsession: lease heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="colabsession-lease", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop renewing (as if this runtime died); the lease expires after its ttl. Returns
        once a renewal in flight is over (or abandoned after a few seconds on a stuck mount),
        so that nothing is written to the lease's folder afterwards."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.held:
            return
        self.held = False
        try:
            lease = self.read()
            if lease and lease.owner == self.owner:
                self.store.remove(NAME, timeout=self.timeout)
        except (OSError, TimeoutError):
            pass  # it expires by itself


def _who(lease: LeaseRecord) -> str:
    return f"host {lease.host}, pid {lease.pid}"
