"""Copying a run from its local mirror to its location (Drive), in a thread of its own.

The training thread commits each checkpoint to the local disk and never waits for Drive: the
:class:`Replicator` uploads what the location lacks, appends the history, and applies retention
there. A file at the location counts as there only once it is whole: its size matches the local
copy's and its trailer's manifest the local one's (a cheap check: one listing with sizes, then
the last bytes of a file whose size matches). A copy cut short (a kill or a dropped mount during
the upload) is sent again, and retention removes those that no local copy will replace. What is
kept and set aside follows the live lineage (see :mod:`.lineage`), so checkpoints of a branch
abandoned while the location did not answer are set aside as soon as it answers.

Every operation on the location is bounded (see :class:`.store.Store`), so a stuck or dropped
mount or a silent API server delays replication only: the user is told which steps are not yet
on Drive, and it tries again with a growing pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from colabsession._core.errors import DriveError, LeaseError
from colabsession._core.files import reason
from colabsession._core.timeout import Backoff
from colabsession._core.units import format_duration
from colabsession._storage.history import HistoryLog
from colabsession._storage.layout import CutShort, Lineage, Manifest, parse_name
from colabsession._storage.lease import Lease
from colabsession._storage.lineage import split_live
from colabsession._storage.retention import Policy, split
from colabsession._storage.store import Entry, Store

logger = logging.getLogger(__name__)


class Replicator:
    """Keeps *remote* up to date with the committed checkpoints of *local* and the history."""

    def __init__(
        self,
        local: Store,
        remote: Store,
        *,
        history: HistoryLog,
        lease: Lease,
        policy: Policy,
        head: Callable[[], Lineage | None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local, self.remote, self.history, self.lease = local, remote, history, lease
        self.policy = policy
        self.head = head  # the writer's branch, live whatever the location holds
        self.backoff = Backoff(initial=5.0, maximum=600.0, monotonic=monotonic)
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._remote_sizes: dict[str, int | None] = {}  # the location's files, as last listed
        self._whole: set[str] = set()  # checkpoints known to be whole at the location
        self._relist = True  # list the location before the next round's work
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # The training thread's side ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="colabsession-replicate", daemon=True
            )
            self._thread.start()

    def notify(self) -> None:
        """Something new is committed locally: replicate it now (unless pausing after a
        failure)."""
        self.start()
        with self._lock:
            self._idle.clear()
        self._wake.set()

    def flush(self, timeout: float) -> list[int]:
        """Replicate now and wait up to *timeout* seconds; return the steps still not on the
        location (empty when everything is there)."""
        self.backoff.succeeded()  # no pause: this is the last chance
        self.notify()
        self._idle.wait(timeout)
        return self.pending()

    def pending(self) -> list[int]:
        """Committed local steps (that retention keeps) not yet whole on the location."""
        return sorted(e.step for e in self._wanted() if e.name not in self._whole)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    # The replicating thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(None if self.backoff.due() else self.backoff.wait)
            self._wake.clear()
            if self._stop:
                break
            if not self.backoff.due():
                continue
            try:
                self._round()
            except LeaseError as exc:
                self.lease.lost = self.lease.lost or str(exc)
                self.lease.lost_to = self.lease.lost_to or exc.holder
                self._idle.set()
                return
            except (OSError, TimeoutError, DriveError) as exc:
                self._failed(exc)
            else:
                if self.backoff.failures:
                    logger.warning("colabsession: %s answers again: caught up", self.remote)
                self.backoff.succeeded()
                self.last_error = None
            with self._lock:
                if self.backoff.failures or not self._wake.is_set():
                    self._idle.set()

    def _round(self) -> None:
        if self.lease.lost:
            raise self.lease.error()
        if not self.lease.held:
            self.lease.acquire()  # deferred: the location did not answer at the first save
        else:
            self.lease.verify()  # a writer that took over since: upload nothing more
        if self._relist:
            self._remote_sizes = self.remote.sizes()
            self._whole &= set(self._remote_sizes)
            self._relist = False
        local = self.local.entries(warn=False)
        self._park_abandoned(local)
        wanted = self._wanted(local)
        # The history first: each checkpoint listed above logged its records before it was
        # committed, so the location never holds a checkpoint ahead of its history (a kill
        # between the two would leave a new VM a history with a gap up to that step; records
        # past the restored step are dropped on resume, so being ahead is harmless).
        self.history.sync()
        for entry in sorted(wanted, key=lambda e: -e.step):  # the newest matters most
            if entry.name in self._whole:
                continue
            if self.lease.lost:
                raise self.lease.error()
            try:
                if self._is_whole(entry):
                    self._whole.add(entry.name)
                    continue
                size = self.local.size(entry.name)
                self.remote.forget(entry.name)  # a copy cut short is replaced
                self.remote.upload(entry)
            except FileNotFoundError:
                continue  # retention removed it locally meanwhile: a newer one supersedes it
            self._remote_sizes[entry.name] = size
            self._whole.add(entry.name)
        self._retain({e.name for e in wanted})

    def _is_whole(self, entry: Entry) -> bool:
        """Whether the location's copy of *entry* is whole: its size first (from the listing),
        then its trailer's manifest (the file's last bytes) against the local one."""
        remote_size = self._remote_sizes.get(entry.name, -1)
        if remote_size == -1:
            return False
        if remote_size is not None and remote_size != self.local.size(entry.name):
            return False
        found = self.remote.manifest(entry.name, warn=False)
        return (
            isinstance(found, Manifest)
            and found.size == entry.manifest.size
            and found.crc32c == entry.manifest.crc32c
        )

    def _wanted(self, local: list[Entry] | None = None) -> list[Entry]:
        """The local checkpoints the location should hold: the live lineage's, as kept."""
        if local is None:
            local = self.local.entries(warn=False)
        return split(split_live(local, self.head())[0], self.policy)[0]

    def _remote_entries(self) -> list[Entry]:
        return self.remote.entries(sorted(self._remote_sizes), warn=False)

    def _park_abandoned(self, local: list[Entry]) -> None:
        """Set aside the location's checkpoints that the live lineage leaves out (a branch
        abandoned by restoring an older step), however late the location hears of it."""
        remote = self._remote_entries()
        local_names = {e.name for e in local}
        everything = [*local, *(e for e in remote if e.name not in local_names)]
        abandoned = {e.name for e in split_live(everything, self.head())[1]}
        for entry in remote:
            if entry.name in abandoned:
                self.remote.park(entry)
                self._remote_sizes.pop(entry.name, None)
                self._whole.discard(entry.name)

    def _retain(self, wanted: set[str]) -> None:
        for entry in split(self._remote_entries(), self.policy)[1]:
            self.remote.delete(entry)
            self._remote_sizes.pop(entry.name, None)
            self._whole.discard(entry.name)
        # Copies cut short that no local copy will replace (a kill during an upload on
        # another runtime): nothing can be read from them, and each restore would warn.
        for name in [n for n in self._remote_sizes if parse_name(n) is not None]:
            if name not in wanted and isinstance(self.remote.manifest(name, warn=False), CutShort):
                self.remote.remove(name)
                self._remote_sizes.pop(name, None)

    def _failed(self, exc: BaseException) -> None:
        self._relist = True  # the failure may have left anything behind
        pause = self.backoff.failed()
        steps = self.pending()
        self.last_error = reason(exc)
        logger.warning(
            "colabsession: could not write to %s (%s). Checkpoint steps %s are saved locally in "
            "%s but NOT yet on %s; trying again in %s",
            self.remote,
            self.last_error,
            steps or "(none)",
            self.local,
            self.remote,
            format_duration(pause),
        )
