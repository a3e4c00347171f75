"""The code behind :mod:`colabsession.torch`'s distributed names: one checkpointer for a
``torch.distributed`` job (DDP, FSDP2), whatever its world size.

Every rank makes a :class:`JobCheckpointer` for the run; rank 0's holds the run's
:class:`~colabsession.Checkpointer` (the lease, the history, the replication to Drive) and the
others none. What must be the same on every rank is decided once, by an all-reduce of three
flags at the step boundary (:meth:`JobCheckpointer.agree`): whether to save, whether to stop
(the deadline on any rank's clock, SIGTERM or Ctrl-C on any rank), and whether a save failed.
A rank that died makes that all-reduce fail within ``timeout``, and the others stop instead
of writing on.

A save of a :class:`DistributedState`: each rank writes its shards of the model and optimizer
(``torch.distributed.checkpoint``'s ``async_save``: copied to host memory, then written in a
thread while training goes on) to a local staging folder, fsynced, summing each file's CRC32C
as it goes out; once DCP's coordinator has written its metadata (the last file, after every
rank finished), rank 0 renames the files into the run's local mirror as the parts of one small
colabsession checkpoint (see :class:`~colabsession._storage.layout.Part`), which names them
with their sizes and CRC32Cs and holds the ranks' own states (random states, the loader's
position); written last, it commits them, and it replicates with them (parts first). A restore
verifies every part of the newest valid checkpoint, links them into a staging folder and every
rank loads its part with DCP, which reshards: a checkpoint of 2 ranks loads on 1 or 4.
Checkpoints that packed the DCP files into the checkpoint file (earlier releases) still restore.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import numpy as np

from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.files import reason
from colabsession._core.notify import Notify
from colabsession._core.optional import require
from colabsession._core.say import say
from colabsession._core.units import Duration, format_duration, parse_duration
from colabsession._runtime.clock import SessionClock
from colabsession._runtime.interrupt import StopOnSigterm
from colabsession._storage.checkpointer import OPTIONS, Checkpointer, RunLike
from colabsession._storage.layout import Part, is_part_name, part_name
from colabsession._storage.save_policy import SavePolicy
from colabsession._storage.serialize import crc32c
from colabsession._training.torch import TrainingState, rng_state, set_rng_state

torch: Any = require("torch", extra="torch", purpose="colabsession.torch")

logger = logging.getLogger(__name__)

KIND = "colabsession-dcp"  # the tree of a checkpoint that packs a DCP folder (before parts)
KIND_PARTS = "colabsession-dcp-parts"  # the tree of a checkpoint whose parts are DCP's files
_FINAL, _SAVE, _FAILED = 0, 1, 2


def _dist() -> Any:
    return torch.distributed


def _dcp() -> Any:
    import torch.distributed.checkpoint as dcp  # loaded by the first save or restore

    return dcp


def world() -> tuple[int, int]:
    """(this process's rank, the world size) of the initialised default process group, or
    (0, 1) without one."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


class JobCheckpointer:
    """The Checkpointer of a ``torch.distributed`` job (torchrun, DDP, FSDP2): make one on every
    rank, with the same arguments; they act as one.

    Rank 0 holds the run's :class:`~colabsession.Checkpointer` (its lease, its history, the
    copy to Drive); the others hold none. :meth:`maybe_save` and :meth:`due` are collective:
    every rank calls them at the same steps (once per step is cheap: an all-reduce of three
    numbers), and every rank gets the same answer. The session deadline on any rank's clock,
    SIGTERM or Ctrl-C on any rank stop every rank at the same step, after one final save.

    >>> dist.init_process_group("nccl")                                   # doctest: +SKIP
    >>> ckpt = JobCheckpointer("my-run", every="10min")  # doctest: +SKIP
    >>> state = DistributedState(model, optimizer, loader=loader)  # doctest: +SKIP
    >>> with ckpt:  # doctest: +SKIP
    ...     for epoch in state.epochs(10, ckpt):   # restores on every rank; stops together
    ...         for x, y in loader:
    ...             train_step(x, y)
    ...             state.step += 1
    ...             ckpt.maybe_save(state.step, state)

    Args:
        run: the run, as :class:`~colabsession.Checkpointer` takes it.
        timeout: the longest a rank waits for the others at an agreement, a save or a restore;
            past it (a rank died or hangs) it raises a CheckpointError instead of waiting on.
        staging_dir: where the ranks write their shards before rank 0 moves them into the
            local mirror as the checkpoint's parts (default: a folder beside the mirror, on its
            file system: moved by renaming; elsewhere each is copied). Every rank must see it:
            one machine, or a shared file system.
        **options: the :class:`~colabsession.Checkpointer`'s keyword arguments (``every``,
            ``keep_last``, ``clock``, ...), for every rank (``clock`` and ``margin_floor`` set
            each rank's deadline).
    """

    def __init__(
        self,
        run: RunLike,
        *,
        timeout: Duration = "5min",
        staging_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        dist = _dist()
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "JobCheckpointer needs torch.distributed initialised first "
                "(torch.distributed.init_process_group(...), as torchrun's scripts do); "
                "a single process uses cs.Checkpointer"
            )
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ConfigError(
                f"JobCheckpointer got {', '.join(unknown)}, which the Checkpointer does not take"
            )
        self.rank, self.world_size = world()
        self.timeout = parse_duration(timeout, name="timeout")
        # torchrun's workers run in sessions of their own: killing torchrun's process group
        # leaves them running, so each checks at every agreement that its launcher lives.
        self._launcher = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None
        self._stopped = False
        # Our own gloo group: agreements and DCP's background save never share a group with
        # the training's collectives (NCCL on GPUs), and gloo takes a timeout on every call.
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout))
        self.save_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout))
        self.ckpt: Checkpointer | None = None
        if self.rank == 0:
            self.ckpt = Checkpointer(run, **options)
            ids = [uuid.uuid4().hex[:8], str(self.ckpt.local_dir)]
        else:
            ids = ["", ""]
        self._collective(lambda: dist.broadcast_object_list(ids, src=0, group=self.group))
        self.job, local_dir = ids
        self.location = self.ckpt.location if self.ckpt is not None else None
        self.staging = Path(staging_dir or Path(local_dir).parent / f".dcp-{Path(local_dir).name}")
        # Each rank's own view of the deadline and of signals: the stop is the max over ranks.
        self.clock: SessionClock = (
            self.ckpt.clock if self.ckpt is not None else options.get("clock") or SessionClock()
        )
        self._policy = (
            self.ckpt.save_policy
            if self.ckpt is not None
            else SavePolicy(
                every=None,
                every_steps=None,
                margin_floor=parse_duration(
                    options.get("margin_floor", "60s"), name="margin_floor"
                ),
                clock=self.clock,
                monotonic=options.get("_monotonic", time.monotonic),
            )
        )
        self._monotonic: Callable[[], float] = options.get("_monotonic", time.monotonic)
        self._sigterm = StopOnSigterm(self.request_stop)
        self._stopped = False
        self._closed = False
        self._agreed: tuple[int, Literal["save", "final"] | None] | None = None
        self._pending: Any = None  # this rank's DCP save in flight
        self._dcp_writer: Any = None
        self._dcp_stager: Any = None
        self._failed: BaseException | None = None
        self._last: tuple[int, Any, dict[str, Any] | None] | None = None

    # The agreement ----------------------------------------------------------------------

    def _who(self) -> str:
        return f"rank {self.rank} of {self.world_size}"

    def _collective(self, call: Callable[[], Any], what: str = "the other ranks") -> Any:
        """*call* (a collective on our groups); a peer that is gone (its connection closed, or
        no answer within the timeout) is a CheckpointError that names this rank."""
        if self._launcher is not None and os.getppid() != self._launcher:
            self._stopped = True
            raise CheckpointError(
                f"{self._who()}: its launcher (torchrun, pid {self._launcher}) is gone: this "
                "worker stops without saving; the job resumes from its last checkpoint"
            )
        try:
            return call()
        except CheckpointError:
            raise
        except (RuntimeError, OSError, ValueError) as exc:
            self._stopped = True
            raise CheckpointError(
                f"{self._who()}: {what} did not answer within "
                f"{format_duration(self.timeout)} ({reason(exc)}): a rank died or hangs, so "
                "this one stops without saving; the job resumes from its last checkpoint"
            ) from None

    def agree(self, step: int) -> Literal["save", "final"] | None:
        """What every rank does at *step*, decided together (collective): ``"final"`` when any
        rank's deadline is near or any rank was asked to stop, ``"save"`` when rank 0's interval
        has passed, else None. :meth:`due` and :meth:`maybe_save` call it; once per step."""
        step = _step(step)
        if self._agreed is not None and self._agreed[0] == step:
            return self._agreed[1]
        flags = torch.zeros(3, dtype=torch.int32)
        if not self._stopped and not self._closed:
            now = self._monotonic()
            self._policy.step_seen(now)
            flags[_FINAL] = int(self._policy.final_due())
            if self.ckpt is not None:
                flags[_SAVE] = int(self._policy.interval_due(step, now))
        flags[_FAILED] = int(self._failed is not None or self._pending_failed())
        dist = _dist()
        self._collective(
            lambda: dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group),
            "the agreement with the other ranks",
        )
        if flags[_FAILED]:
            self._stopped = True
            raise self._failed or CheckpointError(
                f"{self._who()}: another rank's save failed (its log says why): every rank "
                "stops; the job resumes from its last checkpoint"
            )
        if self._stopped or self._closed:
            decision: Literal["save", "final"] | None = None
        elif flags[_FINAL]:
            decision = "final"
        else:
            decision = "save" if flags[_SAVE] else None
        self._agreed = (step, decision)
        return decision

    def _pending_failed(self) -> bool:
        pending = self._pending
        if pending is None or not pending.done():
            return False
        try:
            pending.result()
        except Exception as exc:  # DCP's write on this rank
            self._failed = CheckpointError(
                f"{self._who()}: writing its shards to {self.staging} failed ({reason(exc)}): "
                "free disk space (!df -h) or pass staging_dir= elsewhere"
            )
            return True
        return False

    def due(self, step: int) -> Literal["save", "final"] | None:
        """What ``maybe_save(step, ...)`` would do, agreed by every rank (collective)."""
        return self.agree(step)

    @property
    def should_stop(self) -> bool:
        """Whether the loop should end now: the final save is made (local; no collective)."""
        return self._stopped

    def request_stop(self, why: str = "a stop was asked for") -> None:
        """Save at the next agreement and stop there, on every rank (safe in a signal
        handler)."""
        self._policy.request_stop(f"{why} on rank {self.rank}")

    # Saving ------------------------------------------------------------------------------

    def maybe_save(self, step: int, state: Any, *, metrics: dict[str, Any] | None = None) -> bool:
        """Save *state* (a :class:`DistributedState`) at *step* if the ranks agree a save is due
        (collective: every rank calls it at every step); returns whether it saved. *metrics*
        are rank 0's, for the run's history."""
        self._check_open()
        self._last = (step, state, metrics)
        decision = self.agree(step)
        if decision is None:
            if metrics and self.ckpt is not None:
                self.ckpt.log(step, **metrics)
            return False
        if decision == "final":
            logger.warning(
                "colabsession: %s: %s: saving step %d and stopping",
                self._who(),
                self._policy.stop_reason
                if self._policy.stop_asked
                else f"{format_duration(self.clock.remaining)} left in this session",
                step,
            )
        self.save(step, state, metrics=metrics)
        if decision == "final":
            self.wait()
            self._stopped = True
        return True

    def save(self, step: int, state: Any, *, metrics: dict[str, Any] | None = None) -> None:
        """Save *state* at *step* now, on every rank (collective). Returns once this rank's
        shards are copied to host memory; the writes go on in the background."""
        step = _step(step)
        self._check_open()
        if not isinstance(state, DistributedState):
            raise ConfigError(
                f"JobCheckpointer saves a DistributedState, not a {type(state).__name__}: wrap "
                "the model and optimizer in DistributedState(model, optimizer, ...)"
            )
        self._wait_own()
        dist = _dist()
        folder = self.staging / f"step-{step:012d}-{self.job}"
        if self.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
        mine = state.rank_state()
        gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        self._collective(
            lambda: dist.gather_object(mine, gathered, dst=0, group=self.group),
            "gathering the ranks' states",
        )
        dcp = _dcp()
        shared = state.shared_state()
        if self.ckpt is not None and not self.ckpt.async_save:
            dcp.save(shared, storage_writer=self._writer(folder), process_group=self.save_group)
            self._pending = _done_future()
        else:
            self._pending = dcp.async_save(
                shared,
                checkpoint_id=str(folder),
                storage_writer=self._writer(folder),
                process_group=self.save_group,
                async_stager=self._stager(),
            )
        if self.ckpt is None:
            return
        pending, ranks = self._pending, gathered

        local_dir = self.ckpt.local_dir

        def parts() -> tuple[dict[str, Any], list[Part]]:
            pending.result()  # DCP's coordinator wrote .metadata last: every rank is done
            return _as_parts(folder, Path(local_dir), ranks or [], step)

        try:
            self.ckpt.save(step, None, metrics=metrics, _later=parts)
        finally:
            if not self.ckpt.async_save:
                shutil.rmtree(folder, ignore_errors=True)

    def _writer(self, folder: Path) -> Any:
        """DCP's writer of this rank's shards, one for the job."""
        if self._dcp_writer is None:
            # Fsynced as DCP does: these files are the checkpoint's parts (moved, not copied,
            # into the local mirror); the small checkpoint file that names them commits them.
            self._dcp_writer = _dcp().FileSystemWriter(str(folder), sync_files=True)
            # Each file's CRC32C computed as DCP writes it, on its rank, while in the cache.
            self._dcp_writer.fs = _summing_file_system()
        else:
            self._dcp_writer.reset(str(folder))
        return self._dcp_writer

    def _stager(self) -> Any:
        """DCP's own default stager (the one ``async_save`` makes without a writer), kept for
        the job so that its host buffers are reused; pinned memory where CUDA is."""
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        if self._dcp_stager is None or not _STAGER_REUSABLE:
            cuda = torch.cuda.is_available()
            self._dcp_stager = DefaultStager(StagingOptions(cuda, False, False, False))
        return self._dcp_stager

    def _wait_own(self) -> None:
        """Wait for this rank's write in flight (at most one); raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception as exc:
                raise CheckpointError(
                    f"{self._who()}: writing its shards to {self.staging} failed "
                    f"({reason(exc)}): free disk space (!df -h) or pass staging_dir= elsewhere"
                ) from None
        if self.ckpt is not None:
            self.ckpt.wait()
            _clear(self.staging, keep=None)

    def wait(self) -> None:
        """Block until this rank's save in flight is written (on rank 0: committed to the
        local disk)."""
        self._wait_own()

    def sync(self, timeout: Duration | None = None) -> list[int]:
        """Rank 0: as :meth:`Checkpointer.sync`; other ranks: wait for their writes, ``[]``."""
        self._wait_own()
        return self.ckpt.sync(timeout) if self.ckpt is not None else []

    # Restoring ---------------------------------------------------------------------------

    def restore(self, state: DistributedState, step: int | None = None) -> int | None:
        """Load the newest valid checkpoint (or *step*'s) into *state* on every rank
        (collective); return its step, or None when there is none (every rank agrees which).
        A checkpoint of another world size reshards (DCP); each rank takes its own random
        state and data position where the saved job had that rank."""
        dist = _dist()
        folder = self.staging / f"restore-{self.job}"
        answer: list[Any] = [None]
        if self.ckpt is not None:
            try:
                restored = self.ckpt.restore(step)
                answer = [self._unpack(restored, folder) if restored is not None else None]
            except Exception as exc:  # told to every rank, then raised here
                answer = [("error", str(exc))]
                self._collective(
                    lambda: dist.broadcast_object_list(answer, src=0, group=self.group)
                )
                raise
        self._collective(
            lambda: dist.broadcast_object_list(answer, src=0, group=self.group),
            "rank 0's choice of checkpoint",
        )
        found = answer[0]
        if isinstance(found, tuple) and found[0] == "error":
            raise CheckpointError(f"{self._who()}: rank 0 could not restore: {found[1]}")
        if found is None:
            return None
        saved_step, ranks = found["step"], found["ranks"]
        try:
            shared = state.shared_state()
            _dcp().load(shared, checkpoint_id=str(folder), process_group=self.save_group)
            state.load_shared_state(shared)
        finally:
            self._collective(lambda: dist.barrier(group=self.group), "the restore")
            if self.rank == 0:
                shutil.rmtree(folder, ignore_errors=True)
        if len(ranks) != self.world_size and self.rank == 0:
            logger.warning(
                "colabsession: step %d was saved by %d ranks, this job has %d: the model and "
                "optimizer are resharded; the loader continues after the same samples; ranks "
                "beyond the saved ones draw their random states afresh",
                saved_step,
                len(ranks),
                self.world_size,
            )
        own = ranks[self.rank] if self.rank < len(ranks) else None
        state.load_rank_state(own if own is not None else ranks[0], rng=own is not None)
        state.step = int(saved_step)
        return int(saved_step)

    def _unpack(self, restored: Any, folder: Path) -> dict[str, Any]:
        assert self.ckpt is not None
        state = restored.state
        if isinstance(state, dict) and state.get("kind") == KIND_PARTS:
            if not _names_dcp_files(state, KIND_PARTS):
                raise CheckpointError(
                    f"step {restored.step} in {restored.where} names no DCP checkpoint: "
                    "restart the run"
                )
            return _link_parts(restored, folder, self.ckpt.local_dir, self.ckpt.remote)
        return _unpack(restored, folder)

    # Closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the save in flight; rank 0 then closes its Checkpointer (the copy to the
        location, the lease). Not collective."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wait_own()
        finally:
            if self.ckpt is not None:
                self.ckpt.close()

    def __enter__(self) -> JobCheckpointer:
        self._sigterm.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Every rank leaves the loop at the same step (the stop is agreed), so the last save
            # is collective; after an error on this rank the others meet a failed agreement.
            if exc_type is None and self._last is not None and not self._stopped:
                step, state, metrics = self._last
                last = self._policy.last_saved_step if self.ckpt is not None else None
                mine = torch.tensor([-1 if last is None else last], dtype=torch.int64)
                dist = _dist()
                self._collective(lambda: dist.broadcast(mine, src=0, group=self.group))
                if int(mine) < step:
                    self.save(step, state, metrics=metrics)
        finally:
            self._sigterm.uninstall()
            self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"{self._who()}: this JobCheckpointer is closed")

    def __repr__(self) -> str:
        return f"JobCheckpointer({str(self.location)!r}, {self._who()})"


class DistributedState(TrainingState):
    """A :class:`TrainingState` for a ``torch.distributed`` job: the model and optimizer are
    saved sharded (``torch.distributed.checkpoint``: an FSDP2 model's shards by the rank that
    holds them, a DDP model's replicated state once), the rest per rank (each rank's random
    states and its :class:`ResumableLoader`'s position), and a restore on another world size
    reshards.

    >>> loader = ResumableLoader(dataset, batch_size=32, shuffle=True, seed=0,  # doctest: +SKIP
    ...                          num_replicas=dist.get_world_size(), rank=dist.get_rank())
    >>> state = DistributedState(fsdp_model, optimizer, loader=loader)  # doctest: +SKIP
    >>> step = ckpt.restore(state) or 0  # doctest: +SKIP

    Args: as :class:`TrainingState`'s (``scheduler``, ``scaler`` and ``**extra`` are saved with
    each rank's state).
    """

    def shared_state(self) -> dict[str, Any]:
        """The model's and optimizer's state dicts as DCP saves and loads them (sharded)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        model, optimizer = self.parts.get("model"), self.parts.get("optimizer")
        if model is None:
            return {}
        if optimizer is None:
            return {"model": get_model_state_dict(model)}
        model_state, optim_state = get_state_dict(model, optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def load_shared_state(self, shared: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        model, optimizer = self.parts.get("model"), self.parts.get("optimizer")
        if model is None:
            return
        if optimizer is None:
            set_model_state_dict(model, shared["model"])
        else:
            set_state_dict(
                model,
                optimizer,
                model_state_dict=shared["model"],
                optim_state_dict=shared["optimizer"],
            )

    def rank_state(self) -> dict[str, Any]:
        """This rank's own state: the parts other than the model and optimizer, its random
        states, the step."""
        if self._hard_stop:
            raise CheckpointError(
                "a second Ctrl-C stopped the loop in the middle of a step: that state is not "
                "saved; the run resumes from its last checkpoint"
            )
        own = {n: p.state_dict() for n, p in self.parts.items() if n not in ("model", "optimizer")}
        state: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "parts": own}
        if self.rng:
            state["rng"] = rng_state()
        return state

    def load_rank_state(self, state: dict[str, Any], *, rng: bool = True) -> None:
        for name, part in self.parts.items():
            if name in ("model", "optimizer"):
                continue
            if name not in state["parts"]:
                raise CheckpointError(f"the checkpoint holds no {name}: restart the run")
            part.load_state_dict(state["parts"][name])
        if self.rng and rng and state.get("rng") is not None:
            set_rng_state(state["rng"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])

    def state_dict(self) -> dict[str, Any]:
        raise CheckpointError(
            "a DistributedState is saved by a JobCheckpointer (ckpt.maybe_save(step, state)), "
            "which writes its shards on every rank"
        )

    def restore(self, ckpt: Any, step: int | None = None) -> int:
        """Restore from *ckpt* (a :class:`JobCheckpointer`, collective); return the step to
        continue from (0 for a new run)."""
        if not isinstance(ckpt, JobCheckpointer):
            raise ConfigError("a DistributedState restores from a JobCheckpointer")
        found = ckpt.restore(self, step)
        self.restored = True
        if ckpt.rank == 0:
            if found is None:
                say(f"no checkpoint in {ckpt.location}: training starts at step 0")
            else:
                where = f"step {self.step}"
                if self.loader is not None:
                    where += f" (epoch {self.loader.epoch}, after batch {self.loader.position})"
                say(f"resuming {ckpt.location} at {where} on {ckpt.world_size} ranks")
        return self.step

    def epochs(
        self,
        total: int,
        ckpt: Any = None,
        *,
        notify: Notify = None,
        release_when_done: bool = False,
    ) -> Iterator[int]:
        """As :meth:`TrainingState.epochs`, with a :class:`JobCheckpointer`: every rank ends
        the same epoch at the same step."""
        return super().epochs(
            total, cast(Any, ckpt), notify=notify, release_when_done=release_when_done
        )


# torch 2.11's DefaultStager (Colab's torch) fails its second stage() with KeyError: <class
# 'type'>, seen with a reused stager only; 2.14 reuses it fine. A new one per save before 2.14.
_STAGER_REUSABLE = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 14)


# A DCP folder as a checkpoint's parts ---------------------------------------------------


def _as_parts(
    folder: Path, local_dir: Path, ranks: list[Any], step: int
) -> tuple[dict[str, Any], list[Part]]:
    """Move *folder*'s DCP files (written and fsynced by the ranks) into the run's local folder
    as part files of the checkpoint of *step* (renamed: no byte is copied), each with its size
    and CRC32C (summed by its rank as it wrote it); the checkpoint's state (the DCP names of
    its parts and the ranks' own states) and its parts."""
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"step {step}: DCP wrote no metadata in {folder}: not committed")
    files: dict[str, list[Any]] = {}
    parts: list[Part] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(SUMS):
            continue
        part = Part(file=part_name(step), size=path.stat().st_size, crc32c=_summed(path))
        target = local_dir / part.file
        try:
            os.replace(path, target)
        except OSError:  # staging_dir on another file system: copied once, fsynced
            _copy_synced(path, target)
        files[path.name] = [part.file, part.size, part.crc32c]
        parts.append(part)
    shutil.rmtree(folder, ignore_errors=True)
    return {"kind": KIND_PARTS, "world": len(ranks), "files": files, "ranks": ranks}, parts


SUMS = ".crc32c-"  # a DCP file's size and CRC32C, beside it in the staging folder


class _Summing:
    """A file being written, whose size and CRC32C are summed as its bytes go through; a
    seek back (which DCP's writer does not do) gives up the sum."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.size = 0
        self.crc: int | None = 0

    def write(self, data: Any) -> int:
        if self.crc is not None:
            self.crc = crc32c(data, self.crc)
        written: int = self.raw.write(data)
        self.size += written
        return written

    def seek(self, offset: int, whence: int = 0) -> int:
        self.crc = None
        return int(self.raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self.raw.tell())

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return int(self.raw.fileno())

    def close(self) -> None:
        self.raw.close()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)


def _summing_file_system() -> Any:
    """DCP's local file system, each file it writes summed (:class:`_Summing`) and its sum
    written beside it (``.crc32c-NAME``: its size and CRC32C) once it is closed."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    class SummingFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            if mode != "wb":
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with super().create_stream(path, mode) as raw:
                summing = _Summing(raw)
                yield summing
            if summing.crc is not None:
                where = Path(path)
                (where.parent / f"{SUMS}{where.name}").write_text(f"{summing.size} {summing.crc}")

    return SummingFileSystem()


def _summed(path: Path) -> int:
    """The CRC32C of the DCP file *path*: as summed while it was written, where that sum is
    beside it and matches its size; else read back."""
    try:
        size, crc = (int(x) for x in (path.parent / f"{SUMS}{path.name}").read_text().split())
        if size == path.stat().st_size:
            return crc
    except (OSError, ValueError):
        pass
    return _crc_of(path)


def _crc_of(path: Path) -> int:
    import google_crc32c

    crc = 0
    with open(path, "rb") as f:
        while data := f.read(8 << 20):
            crc = google_crc32c.extend(crc, data)
    return int(crc)


def _copy_synced(source: Path, target: Path) -> None:
    temp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temp)
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temp, target)
    source.unlink()


def _plain(name: Any) -> bool:
    """Whether *name* (read from a checkpoint, untrusted) is a plain file name."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
    )


def _link_parts(restored: Any, folder: Path, local_dir: Path, remote: Any) -> dict[str, Any]:
    """Put a restored checkpoint's parts (verified by the restore) in *folder* under their DCP
    names: hard links to the local mirror's files, or copies from the location (*remote*'s
    store) checked again as they arrive; what every rank needs to load."""
    state = restored.state
    files = state["files"]
    local = os.path.dirname(restored.where) == os.path.abspath(local_dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, found in files.items():
        if not (_plain(name) and isinstance(found, list) and len(found) == 3):
            raise CheckpointError(f"step {restored.step}: a part {name!r} is refused")
        file, size, crc = found
        if not is_part_name(file):
            raise CheckpointError(f"step {restored.step}: a part file {file!r} is refused")
        target = folder / name
        if local:
            try:
                os.link(local_dir / file, target)
            except OSError:
                shutil.copyfile(local_dir / file, target)
            continue
        remote.fetch_file(file, target, size=size)
        if target.stat().st_size != size or _crc_of(target) != crc:
            raise CheckpointError(
                f"step {restored.step}: its part {file} changed at {remote} while it was read: "
                "restore again"
            )
    return {"step": restored.step, "ranks": state["ranks"]}


def is_job_checkpoint(state: Any) -> bool:
    """Whether a restored *state* is a JobCheckpointer's (its DCP files as parts, or packed)."""
    return _names_dcp_files(state, KIND_PARTS) or _names_dcp_files(state, KIND)


def export_job_checkpoint(restored: Any, out: Path, *, local_dir: Path, remote: Any) -> None:
    """Write a JobCheckpointer's checkpoint to *out* as one ``torch.save`` file of the whole
    state dict: the model's and optimizer's shards gathered, as DCP's ``dcp_to_torch_save``
    does, with no process group. The ranks' own states (random states, loader positions) stay
    behind: they resume a job, not a model."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    # The DCP folder beside the local mirror, where the parts are hard-linked, not copied (the
    # target may be on the Drive mount); only the gathered file is written beside *out*.
    with tempfile.TemporaryDirectory(prefix=".cs-export-", dir=local_dir.parent) as tmp:
        folder = Path(tmp) / "dcp"
        if _names_dcp_files(restored.state, KIND_PARTS):
            _link_parts(restored, folder, local_dir, remote)
        else:
            _unpack(restored, folder)
        whole = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            dcp_to_torch_save(folder, whole)
            os.replace(whole, out)
        finally:
            whole.unlink(missing_ok=True)


def _names_dcp_files(state: Any, kind: str) -> bool:
    """Whether a restored *state* is a JobCheckpointer's of *kind* (packed whole or naming its
    parts): its DCP files (the metadata among them) and every rank's own state."""
    return (
        isinstance(state, dict)
        and state.get("kind") == kind
        and isinstance(state.get("files"), dict)
        and isinstance(state.get("ranks"), list)
        and bool(state["ranks"])
        and ".metadata" in state["files"]
    )


def _unpack(restored: Any, folder: Path) -> dict[str, Any]:
    """Write a restored checkpoint's DCP files (packed into it by colabsession before parts)
    to *folder*; what every rank needs to load."""
    state = restored.state
    if not _names_dcp_files(state, KIND):
        raise CheckpointError(
            f"step {restored.step} in {restored.where} was not saved by a JobCheckpointer: "
            "restore it with cs.Checkpointer, or restart the run"
        )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in state["files"].items():
        if not isinstance(name, str) or "/" in name or name in (".", ".."):
            raise CheckpointError(f"step {restored.step}: a file name {name!r} is refused")
        np.asarray(data, dtype=np.uint8).tofile(folder / name)
    return {"step": restored.step, "ranks": state["ranks"]}


def _clear(staging: Path, keep: str | None) -> None:
    """Remove the staging folders of saves already packed (rank 0, between saves)."""
    with contextlib.suppress(OSError):
        for path in staging.iterdir():
            if path.name.startswith("step-") and path.name != keep:
                shutil.rmtree(path, ignore_errors=True)


def _step(step: Any) -> int:
    if isinstance(step, (bool, float)) or operator.index(step) < 0:
        raise ConfigError(f"a checkpoint's step must be a non-negative integer, not {step!r}")
    return operator.index(step)


def _done_future() -> Any:
    from concurrent.futures import Future

    future: Future[None] = Future()
    future.set_result(None)
    return future
