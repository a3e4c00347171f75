"""Copying a run from its local mirror to its location (Drive), in a thread of its own.

The training thread commits each checkpoint to the local disk and never waits for Drive: the
:class:`Replicator` uploads what the location lacks, and applies retention there. Each checkpoint
carries the history records that the location's history file lacks (see
:class:`~.layout.HistoryTail`): the file is appended only where one does not, where those records
grow large, at a flush that finds records no checkpoint there carries, and at close.

A file at the location counts as there only once it is whole: its size matches the local copy's
and its trailer's manifest the local one's (a cheap check: one listing with sizes, then the last
bytes of a file whose size matches). A copy cut short (a kill or a dropped mount during
the upload) is sent again, and retention removes those that no local copy will replace. What is
kept and set aside follows the live lineage (see :mod:`.lineage`), so checkpoints of a branch
abandoned while the location did not answer are set aside as soon as it answers.

Every operation on the location is bounded (see :class:`.store.Store`), so a stuck or dropped
mount or a silent API server delays replication only: the user is told which steps are not yet
on Drive, and it tries again with a growing pause.

On the Colab mount a finished write is in the Drive client's cache, not yet on Drive. Where the
API can see the same files (an :class:`~colabsession._drive.companion.ApiView`), a checkpoint
counts as on Drive only once the API reports it with the local copy's size and md5 (or, where
Drive gives no md5, its trailer read back through the API); a flush (``sync()``, the deadline
stop, ``close()``) waits a bounded while for that, then sends what Drive still lacks through the
API itself. When the mount dies, checkpoints go on reaching Drive through the API (the history
waits for the mount), and the mount is tried again with a growing pause. Each checkpoint's
state (:meth:`Replicator.states`) says which of these is true.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable

from colabsession._core.errors import DriveError, LeaseError
from colabsession._core.files import reason
from colabsession._core.progress import ProgressFactory, transfer
from colabsession._core.timeout import Backoff
from colabsession._core.units import format_duration
from colabsession._drive import companion
from colabsession._storage.history import SYNC_AT, HistoryLog
from colabsession._storage.layout import (
    PARKED,
    CutShort,
    Lineage,
    Manifest,
    is_part_name,
    parse_name,
    part_step,
)
from colabsession._storage.lease import Lease
from colabsession._storage.lineage import split_live
from colabsession._storage.retention import Policy, split
from colabsession._storage.store import Entry, Store

logger = logging.getLogger(__name__)

#: What a checkpoint's state means, as reports say it.
STATES = {
    "local": "saved locally only, not yet on Drive",
    "mount": "written to the mount, not yet confirmed by Drive",
    "unchecked": "written to the mount (Drive not checked)",
    "written": "written to the location",
    "drive": "on Drive (confirmed by Drive)",
}
CONFIRM_POLL = 3.0  # seconds between two looks through the API while a flush waits for Drive
CONFIRM_WAIT = 60.0  # the longest a flush waits for the mount's uploads before using the API
ORPHAN_PARTS_AGE = 3600.0  # how long a part file no checkpoint names stays at the location
_sleep = time.sleep  # tests replace it


class _MountDown(Exception):
    """The mount failed and the round went through the API instead."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(reason(cause))
        self.cause = cause


class DriveCheck:
    """Asks Drive, through its API (*view*, *api*: the run's folder there), which checkpoints
    it holds whole: the size Drive reports, then its md5Checksum against the local copy's in
    *local* (kept in *md5s*), or, where Drive gives none or there is no local copy, the
    trailer read back through the API against the checkpoint's manifest."""

    def __init__(
        self,
        view: companion.ApiView,
        api: Store,
        local: Store | None,
        md5s: dict[str, str] | None = None,
    ) -> None:
        self.view, self.api, self.local = view, api, local
        self.md5s = md5s if md5s is not None else {}

    def confirmed(self, entries: list[Entry]) -> set[str]:
        """The names of *entries* that Drive holds whole (one listing, a read per file
        without an md5)."""
        if not entries:
            return set()
        files = self.view.files(self.api.root, self.api.timeout or 60.0)
        return {
            e.name
            for e in entries
            if self._parts_whole(e, files) and self._whole(e, files.get(e.name))
        }

    def _parts_whole(self, entry: Entry, files: dict[str, tuple[int | None, str | None]]) -> bool:
        """Whether Drive holds every part of *entry* (a sharded save's files, written to the
        mount before the checkpoint's own but uploaded by Drive in its own order): each at
        its size, and at the local copy's md5 where Drive gives one and the copy is here."""
        for part in entry.manifest.parts or ():
            found = files.get(part.file)
            if found is None or found[0] != part.size:
                return False
            md5 = found[1]
            local = self._local_path_of(part.file)
            if (
                md5 is not None
                and local is not None
                and os.path.exists(local)
                and md5 != self._md5(part.file, local)
            ):
                return False
        return True

    def _whole(self, entry: Entry, found: tuple[int | None, str | None] | None) -> bool:
        if found is None:
            return False
        size, md5 = found
        if size is None:
            return False
        local = self._local_path(entry)
        if local is not None:
            try:
                if size != os.path.getsize(local):
                    return False
                if md5 is not None:
                    return md5 == self._md5(entry.name, local)
            except FileNotFoundError:
                pass  # retention removed it locally meanwhile: ask the trailer
        # No md5 to compare: the trailer read back through the API, at the size Drive reports
        # (a manifest is valid only at its file's true size).
        self.api.forget(entry.name)
        manifest = self.api.manifest(entry.name, warn=False, size=size)
        return isinstance(manifest, Manifest) and manifest.crc32c == entry.manifest.crc32c

    def _local_path(self, entry: Entry) -> str | None:
        return self._local_path_of(entry.name)

    def _local_path_of(self, name: str) -> str | None:
        if self.local is None or not self.local.location.is_local:
            return None
        return self.local.path(name)

    def _md5(self, name: str, path: str) -> str:
        known = self.md5s.get(name)
        if known is None:
            digest = hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as f:
                while chunk := f.read(8 << 20):
                    digest.update(chunk)
            known = self.md5s[name] = digest.hexdigest()
        return known


def drive_states(local: Store, remote: Store | None, entries: list[Entry]) -> dict[str, str]:
    """Where each of *entries* (checkpoints of the run, local or at the location) stands with
    Drive, by name: a key of :data:`STATES`, asked of Drive now where the location is the
    Colab mount and an API view exists (``colabsession ckpt list``)."""
    if remote is None:
        return {}
    at_location = [e for e in entries if e.store is remote]
    names = {e.name for e in at_location}
    states = {e.name: "local" for e in entries if e.name not in names}
    if not companion.under_mount(remote.location):
        return {**states, **dict.fromkeys(names, "written")}
    view = companion.view_for(remote.location)
    where = view.location(remote.location) if view is not None else None
    if view is None or where is None:
        return {**states, **dict.fromkeys(names, "unchecked")}
    api = Store(where, timeout=remote.timeout)
    try:
        confirmed = DriveCheck(view, api, local).confirmed(at_location)
    except (OSError, TimeoutError) as exc:
        logger.warning("colabsession: cannot ask Drive through its API (%s)", reason(exc))
        return {**states, **dict.fromkeys(names, "unchecked")}
    return {**states, **{n: "drive" if n in confirmed else "mount" for n in names}}


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
        progress: ProgressFactory = transfer,
    ) -> None:
        self.local, self.remote, self.history, self.lease = local, remote, history, lease
        self.progress = progress  # a bar for each large upload (see _core.progress)
        self.policy = policy
        self.head = head  # the writer's branch, live whatever the location holds
        self.backoff = Backoff(initial=5.0, maximum=600.0, monotonic=monotonic)
        self._monotonic = monotonic
        self._orphans: dict[str, float] = {}  # part files no checkpoint names: since when
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
        # Drive through its API beside the mount (None: none, or not looked for yet)
        self._api: Store | None = None
        self._api_view: companion.ApiView | None = None
        self._api_looked = False
        self._confirmed: set[str] = set()  # checkpoints Drive itself reports whole
        # The checkpoints this replicator sent through the API, each with its part files.
        self._via_api: dict[str, list[str]] = {}
        self._md5: dict[str, str] = {}
        self._mount_down = False
        self._patient = False  # a flush waits for Drive to confirm (the next round)
        self._round_patient = False  # this round does
        self._whole_history = False  # a flush asks for the history file itself (close())
        self._round_history = False  # this round brings it up to date
        self._flush_budget = 0.0

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

    def flush(self, timeout: float, *, history: bool = False) -> list[int]:
        """Replicate now and wait up to *timeout* seconds; return the steps still not on the
        location (empty when everything is there). *history*: bring the history file up to
        date too, though the checkpoints there carry its records (at close)."""
        self.backoff.succeeded()  # no pause: this is the last chance
        self._patient, self._flush_budget = True, timeout
        self._whole_history = self._whole_history or history
        self.notify()
        self._idle.wait(timeout)
        return self.pending()

    def pending(self) -> list[int]:
        """Committed local steps (that retention keeps) not yet on the location: where Drive
        can be asked through its API, not yet confirmed by Drive."""
        return sorted(s for s, state in self.states().items() if state in ("local", "mount"))

    def states(self) -> dict[int, str]:
        """Each committed local step that retention keeps, and where it is (a key of
        :data:`STATES`): ``local``, ``mount`` (written to the mount, Drive has not confirmed
        it), ``unchecked`` (written to the mount, no API view to ask Drive), ``written`` (at a
        location that is not the mount), ``drive`` (Drive confirmed it)."""
        on_mount = companion.under_mount(self.remote.location)
        states = {}
        for entry in self._wanted():
            if entry.name in self._confirmed:
                state = "drive"
            elif entry.name not in self._whole:
                state = "local"
            elif self._api is not None:
                state = "mount"
            else:
                state = "unchecked" if on_mount else "written"
            states[entry.step] = state
        return states

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
            on_location = self.backoff.due() or self._patient  # a flush does not wait
            if not on_location and not self._mount_down:
                continue
            # Taken at the round's start: a flush asked for during a round is the next one's.
            self._round_patient, self._patient = self._patient, False
            self._round_history, self._whole_history = self._whole_history, False
            try:
                if on_location:
                    self._round()
                else:
                    self._round_through_api()  # the mount is resting: Drive through its API
            except LeaseError as exc:
                self.lease.lost = self.lease.lost or str(exc)
                self.lease.lost_to = self.lease.lost_to or exc.holder
                self._idle.set()
                return
            except _MountDown as exc:
                self._relist = True
                self.backoff.failed()
                self.last_error = str(exc)
            except (OSError, TimeoutError, DriveError) as exc:
                self._failed(exc)
            else:
                if on_location:
                    if self.backoff.failures:
                        logger.warning("colabsession: %s answers again: caught up", self.remote)
                    self.backoff.succeeded()
                    self.last_error = None
                    self._mount_down = False
            with self._lock:
                # After a failure a flush waits for nothing more, unless it asked for a round
                # that has not run yet (this one began before it).
                if (self.backoff.failures and not self._patient) or not self._wake.is_set():
                    self._idle.set()

    def _round(self) -> None:
        try:
            self._round_on_location()
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, DriveError) or not self._fall_back(exc):
                raise
            raise _MountDown(exc) from exc

    def _round_on_location(self) -> None:
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
        there = self._whole | self._confirmed
        todo = [e for e in wanted if e.name not in there]
        # The history before a checkpoint that does not carry it: each checkpoint listed above
        # logged its records before it was committed, and the location never holds one ahead
        # of its history (a kill between the two would leave a new VM a history with a gap up
        # to that step; records past the restored step are dropped on resume, so being ahead
        # is harmless). One that carries the records the file lacks (see HistoryTail) needs
        # no append: the location holds them as soon as it holds the checkpoint.
        if self.history.sync_needed(e.manifest.history for e in todo):
            self.history.sync()
        try:
            self._upload_all(wanted)
        except (OSError, TimeoutError):
            if self._round_patient:  # a flush: the records at least, if the location takes them
                with contextlib.suppress(OSError, TimeoutError):
                    self._sync_history(wanted)
            raise
        self._sync_history(wanted)
        self._retain({e.name for e in wanted})
        self._remove_orphan_parts(local)
        try:
            self._confirm(wanted)
        except LeaseError:
            raise
        except (OSError, TimeoutError, DriveError) as exc:  # the mount did its part
            logger.warning(
                "colabsession: cannot ask Drive through its API whether it holds what was "
                "written to the mount (%s); asking again at the next round",
                reason(exc),
            )

    def _upload_all(self, wanted: list[Entry]) -> None:
        for entry in sorted(wanted, key=lambda e: -e.step):  # the newest matters most
            if entry.name in self._whole or entry.name in self._confirmed:
                continue  # (one Drive holds, sent through the API, shows on the mount later)
            if self.lease.lost:
                raise self.lease.error()
            try:
                if self._is_whole(entry):
                    self._whole.add(entry.name)
                    continue
                size = self.local.size(entry.name)
                self.remote.forget(entry.name)  # a copy cut short is replaced
                self._upload(self.remote, entry)
            except FileNotFoundError:
                continue  # retention removed it locally meanwhile: a newer one supersedes it
            self._remote_sizes[entry.name] = size
            self._whole.add(entry.name)

    def _sync_history(self, wanted: list[Entry]) -> None:
        """Append the history file where the checkpoints no longer suffice: the records not in
        it have grown past SYNC_AT (the next checkpoints' tails stay small), a flush finds
        records that no checkpoint at the location carries (logged after the last save, or
        one whose upload failed), or close() asks for the file itself."""
        there = self._whole | self._confirmed
        at_location = [e.manifest.history for e in wanted if e.name in there]
        if (
            self._round_history
            or self.history.unsynced_bytes() > SYNC_AT
            or (self._round_patient and self.history.pending(at_location))
        ):
            # After the uploads, which may outlast the lease: a writer that took the run over
            # meanwhile writes its own revision, which this one would overwrite or outnumber.
            self.lease.verify()
            self.history.sync()

    # Drive through its API -------------------------------------------------------------------

    def _api_store(self) -> Store | None:
        """The location's folder through the Drive API, where the location is the Colab mount
        and credentials can be had without a prompt (looked for once)."""
        if not self._api_looked:
            self._api_looked = True
            view = companion.view_for(self.remote.location)
            where = view.location(self.remote.location) if view is not None else None
            if view is not None and where is not None:
                self._api_view = view
                self._api = Store(where, timeout=self.remote.timeout)
        return self._api

    def _confirm(self, wanted: list[Entry]) -> None:
        """Ask Drive which checkpoints written to the mount it holds whole. In a flush, wait a
        bounded while for the mount's uploads, then send what Drive still lacks through the
        API."""
        api = self._api_store()
        if api is None:
            return
        todo = [e for e in wanted if e.name in self._whole and e.name not in self._confirmed]
        polls = 0
        if self._round_patient:
            polls = int(min(CONFIRM_WAIT, self._flush_budget / 3) // CONFIRM_POLL)
        for attempt in range(polls + 1):
            todo = self._unconfirmed(api, todo)
            if not todo:
                return
            if attempt < polls:
                _sleep(CONFIRM_POLL)
        if self._round_patient:
            logger.warning(
                "colabsession: Drive has not received checkpoint steps %s written to the mount "
                "(they wait in its cache): sending them through the Drive API",
                sorted(e.step for e in todo),
            )
            self._send_through_api(api, todo)

    def _unconfirmed(self, api: Store, entries: list[Entry]) -> list[Entry]:
        """Those of *entries* that Drive does not report whole (one listing)."""
        assert self._api_view is not None
        confirmed = DriveCheck(self._api_view, api, self.local, self._md5).confirmed(entries)
        self._confirmed |= confirmed
        return [e for e in entries if e.name not in confirmed]

    def _upload(self, store: Store, entry: Entry) -> None:
        size = entry.store.size(entry.name)  # the arrays and the manifest after them
        size += sum(part.size for part in entry.manifest.parts or [])  # copied first
        with self.progress(size, f"copying step {entry.step} to {store}") as bar:
            store.upload(entry, progress=bar.update)

    def _send_through_api(self, api: Store, entries: list[Entry]) -> None:
        for entry in sorted(entries, key=lambda e: -e.step):
            if self.lease.lost:
                raise LeaseError(self.lease.lost)
            api.forget(entry.name)
            try:
                self._upload(api, entry)
            except FileNotFoundError:
                continue  # retention removed it locally meanwhile
            self._via_api[entry.name] = entry.part_files
        self._unconfirmed(api, entries)

    def _fall_back(self, exc: BaseException) -> bool:
        """The mount failed (*exc*): go on through the API if there is a view; whether it
        did."""
        api = self._api_store()
        if api is None:
            return False
        if not self._mount_down:
            self._mount_down = True
            logger.warning(
                "colabsession: the Drive mount does not answer (%s): checkpoints go to Drive "
                "through its API meanwhile, and the mount is tried again now and then. Colab "
                "cannot remount Drive while a cell runs: when training ends, run "
                "cs.drive.ensure() in a cell",
                reason(exc),
            )
        self._round_through_api()
        return True

    def _round_through_api(self) -> None:
        """Send the wanted checkpoints Drive lacks through the API (the mount is down); drop
        those this replicator sent that retention no longer keeps."""
        api = self._api_store()
        if api is None:
            return
        if self.lease.lost:
            raise LeaseError(self.lease.lost)
        wanted = self._wanted()
        self._send_through_api(api, self._unconfirmed(api, wanted))
        self._drop_sent({e.name for e in wanted})

    def _drop_sent(self, keep: set[str]) -> None:
        """Delete the checkpoints this replicator sent through the API that retention no
        longer keeps (only those: files it wrote, by their names)."""
        if self._api is None:
            return
        for name in sorted(set(self._via_api) - keep):
            if parse_name(name) is not None:
                self._api.remove(name)  # no longer a checkpoint, then its parts
                for part in self._via_api[name]:
                    self._api.remove(part)
            del self._via_api[name]
            self._confirmed.discard(name)

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
                for name in [entry.name, *entry.part_files]:
                    self._remote_sizes.pop(name, None)
                self._whole.discard(entry.name)

    def _retain(self, wanted: set[str]) -> None:
        self._drop_sent(wanted)
        for entry in split(self._remote_entries(), self.policy)[1]:
            self._delete(entry)
            for name in [entry.name, *entry.part_files]:
                self._remote_sizes.pop(name, None)
            self._whole.discard(entry.name)
            self._confirmed.discard(entry.name)
        # Copies cut short that no local copy will replace (a kill during an upload on
        # another runtime): nothing can be read from them, and each restore would warn.
        for name in [n for n in self._remote_sizes if parse_name(n) is not None]:
            if name not in wanted and isinstance(self.remote.manifest(name, warn=False), CutShort):
                self.remote.remove(name)
                self._remote_sizes.pop(name, None)

    def _remove_orphan_parts(self, local: list[Entry]) -> None:
        """Remove the location's part files that no checkpoint names, here or there, once they
        have stayed so for ORPHAN_PARTS_AGE: a save killed while its parts were uploading (its
        file, sent last, never came) leaves them, taking quota. Only after a while: a writer
        that took the run over since this round verified the lease may be uploading its own."""
        parts = {n for n in self._remote_sizes if is_part_name(n)}
        if not parts and not self._orphans:
            return
        entries = [*local, *self._remote_entries()]
        named = {name for e in entries for name in e.part_files}
        # A checkpoint file of a part's step, however unreadable here (a newer release's, a
        # park cut short between its file and its parts), may name it: such parts stay.
        steps = {parse_name(n.removeprefix(PARKED)) for n in self._remote_sizes}
        unnamed = {n for n in parts - named if part_step(n) not in steps}
        now = self._monotonic()
        self._orphans = {n: self._orphans.get(n, now) for n in unnamed}
        for name, since in sorted(self._orphans.items()):
            if now - since >= ORPHAN_PARTS_AGE:
                self.remote.remove(name)
                self._remote_sizes.pop(name, None)
                del self._orphans[name]

    def _delete(self, entry: Entry) -> None:
        """Delete a checkpoint that retention drops. One Drive holds (confirmed through the
        API) is deleted through the API, by its own name in the run's folder, so that it does
        not sit in Drive's Trash (a file deleted on the mount goes there, counting against
        the quota for 30 days); then on the mount, where the deletion may not have arrived."""
        api = self._api if entry.name in self._confirmed else None
        if api is not None and parse_name(entry.name) is not None:
            # Drive confirmed it (and each of its parts, DriveCheck) against the local copy:
            # colabsession wrote them, so the API deletes them for good, without marking them
            # as colabsession's first. The file first: it is no longer a checkpoint.
            names = [entry.name, *entry.part_files]
            try:
                remove_confirmed = getattr(api.fs, "remove_confirmed", None)
                for name in names:  # (part names are checked when a manifest is read)
                    if remove_confirmed is None:
                        api.remove(name)
                        continue
                    job = functools.partial(remove_confirmed, api.path(name))
                    with contextlib.suppress(FileNotFoundError):
                        api.io(f"delete {name}", job)
                    api.forget(name)
            except (OSError, TimeoutError) as exc:
                logger.info("colabsession: %s: %s; deleting on the mount", api, reason(exc))
        self.remote.delete(entry)

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
