"""Copying a run from its local mirror to its location (Drive), in a thread of its own.

The training thread commits each checkpoint to the local disk and never waits for Drive: the
:class:`Replicator` uploads what the location lacks, appends the history, and applies retention
there. Every operation on the location is bounded (see :class:`._store.Store`), so a stuck or
dropped mount or a silent API server delays replication only: the user is told which steps are
not yet on Drive, and it tries again with a growing pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._errors import DriveError, LeaseError
from ._history import HistoryLog
from ._lease import Lease
from ._retention import Policy, split
from ._storage import reason
from ._store import Entry, Store
from ._timeout import Backoff
from ._units import format_duration

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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local, self.remote, self.history, self.lease = local, remote, history, lease
        self.policy = policy
        self.backoff = Backoff(initial=5.0, maximum=600.0, monotonic=monotonic)
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._park: list[int] = []  # steps newer than a restored one, to set aside first
        self._remote_names: set[str] = set()  # what the location holds, as last listed
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

    def park_newer_than(self, step: int) -> None:
        """Before the next upload, set aside the location's checkpoints newer than *step*."""
        with self._lock:
            self._park.append(step)

    def flush(self, timeout: float) -> list[int]:
        """Replicate now and wait up to *timeout* seconds; return the steps still not on the
        location (empty when everything is there)."""
        self.backoff.succeeded()  # no pause: this is the last chance
        self.notify()
        self._idle.wait(timeout)
        return self.pending()

    def pending(self) -> list[int]:
        """Committed local steps (that retention keeps) not yet on the location."""
        return sorted(e.step for e in self._wanted() if e.name not in self._remote_names)

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
            raise LeaseError(self.lease.lost)
        if not self.lease.held:
            self.lease.acquire()  # deferred: the location did not answer at the first save
        else:
            self.lease.verify()  # a writer that took over since: upload nothing more
        if self._relist:
            self._remote_names = set(self.remote.names())
            self._relist = False
        with self._lock:
            park, self._park = self._park, []
        for step in park:
            for entry in self._remote_entries():
                if entry.step > step:
                    self.remote.park(entry)
                    self._remote_names.discard(entry.name)
        for entry in sorted(self._wanted(), key=lambda e: -e.step):  # the newest matters most
            if entry.name in self._remote_names:
                continue
            if self.lease.lost:
                raise LeaseError(self.lease.lost)
            try:
                self.remote.upload(entry)
            except FileNotFoundError:
                continue  # retention removed it locally meanwhile: a newer one supersedes it
            self._remote_names.add(entry.name)
        self.history.sync()
        self._retain()

    def _wanted(self) -> list[Entry]:
        return split(self.local.entries(warn=False), self.policy)[0]

    def _remote_entries(self) -> list[Entry]:
        return self.remote.entries(sorted(self._remote_names))

    def _retain(self) -> None:
        for entry in split(self._remote_entries(), self.policy)[1]:
            self.remote.delete(entry)
            self._remote_names.discard(entry.name)

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
