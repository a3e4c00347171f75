"""The code behind :mod:`colabsession.torch` (its public names are listed there)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from colabsession._core.deprecation import warn_renamed
from colabsession._core.errors import CheckpointError, ColabSessionError, ConfigError
from colabsession._core.notify import Notify, webhook_url
from colabsession._core.notify import notify as post
from colabsession._core.optional import require
from colabsession._core.records import InvalidRecord, Record, parse_record
from colabsession._core.say import say
from colabsession._runtime.interrupt import stop_at_boundary
from colabsession._runtime.precision import Precision
from colabsession._storage.frameworks import checkpoint_maps, in_maps

if TYPE_CHECKING:
    from colabsession._runtime.probe import HardwareReport
    from colabsession._storage.checkpointer import Checkpointer

torch: Any = require("torch", extra="torch", purpose="colabsession.torch")

logger = logging.getLogger(__name__)


# The data order -------------------------------------------------------------------------------


def epoch_order(size: int, seed: int, epoch: int, *, shuffle: bool = True) -> Any:
    """The order of the samples of *epoch*: a pure function of ``(seed, epoch)``.

    >>> epoch_order(5, seed=0, epoch=0).tolist() == epoch_order(5, seed=0, epoch=0).tolist()
    True
    """
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


class _EpochBatches:
    """The batch sampler under :class:`ResumableLoader`: one epoch's batches from a sample."""

    def __init__(self, owner: ResumableLoader) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[list[int]]:
        owner = self.owner
        order = epoch_order(owner.size, owner.seed, owner.epoch, shuffle=owner.shuffle)
        size, replicas = owner.batch_size, owner.num_replicas
        if replicas == 1:
            for start in range(owner.position * size, owner.size, size):
                batch = order[start : start + size]
                if len(batch) < size and owner.drop_last:
                    return
                yield batch.tolist()
            return
        # Global step g takes samples [g*size*replicas, (g+1)*size*replicas) of the epoch's
        # order, this rank its own slice of them: which samples a step holds does not depend on
        # the world size, so a resume on another one continues after the same samples. The
        # last step wraps to the order's start, as DistributedSampler pads: every rank takes
        # as many batches (DDP needs every rank at every step).
        for step in range(owner.position, owner.batches_per_epoch):
            start = (step * replicas + owner.rank) * size
            yield [int(order[i % owner.size]) for i in range(start, start + size)]

    def __len__(self) -> int:
        return self.owner.batches_left  # what this iteration gives: the rest of the epoch


class ResumableLoader:
    """A ``torch.utils.data.DataLoader`` that can stop anywhere and start again at the next batch.

    Iterating it gives the rest of the current epoch; then :attr:`epoch` advances. Its state (seed,
    epoch and batches done) goes into the checkpoint through :class:`TrainingState`. Its defaults
    and ``len()`` are DataLoader's: ``len(loader)`` is the batches of a whole epoch, constant
    while iterating (a progress line ``100. * batch_idx / len(loader)`` reads as it did);
    :attr:`batches_left` is what remains of the current epoch, :attr:`position` what is done::

        loader = ResumableLoader(train_set, batch_size=64, shuffle=True, seed=0)
        for batch_idx, (x, y) in enumerate(loader, loader.position):  # true after a resume too
            ...

    Args:
        dataset: a map-style dataset (``len`` and ``[index]``).
        batch_size: samples per batch.
        shuffle: draw each epoch's order from ``(seed, epoch)``; False (DataLoader's default)
            keeps the dataset's order.
        seed: the data-order seed.
        drop_last: drop each epoch's last incomplete batch.
        num_replicas: the processes that share each epoch (``torch.distributed``'s world size);
            each takes its own slice of every global batch of ``batch_size * num_replicas``
            samples, and every one as many batches (the last global batch wraps to the epoch's
            start, as ``DistributedSampler`` pads). A resume on another world size continues
            after the same samples.
        rank: this process's place among them (``torch.distributed.get_rank()``).
        **loader_kwargs: for the DataLoader (``num_workers``, ``collate_fn``, ``pin_memory``,
            ...); not ``sampler``, ``batch_sampler``, ``shuffle`` or ``generator``, which this
            class sets. With ``persistent_workers=True`` the workers keep their random state
            across epochs, so a random augmentation in them resumes exactly only at an epoch's
            start: derive its randomness from the index for an exact mid-epoch resume.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        *,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        **loader_kwargs: Any,
    ) -> None:
        sampler = loader_kwargs.get("sampler")
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            raise ConfigError(
                "ResumableLoader shards for distributed training itself: pass "
                f"num_replicas={sampler.num_replicas}, rank={sampler.rank} (and shuffle=, seed=) "
                "instead of a DistributedSampler, whose position cannot be resumed"
            )
        clash = sorted({"sampler", "batch_sampler", "generator"} & set(loader_kwargs))
        if clash:
            raise ConfigError(f"ResumableLoader sets {' and '.join(clash)} itself: do not pass it")
        if not isinstance(dataset, Sized):
            raise ConfigError(
                "ResumableLoader needs a map-style dataset (with len() and [index]); an "
                "IterableDataset orders itself and cannot skip what is done"
            )
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if seed < 0:
            raise ConfigError("seed must not be negative")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(
                f"rank {rank} of {num_replicas} replicas: num_replicas must be at least 1 and "
                "rank in 0..num_replicas-1 (torch.distributed.get_world_size() and get_rank())"
            )
        self.dataset = dataset
        self.size = len(dataset)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already given out
        # Whether to end the epoch early, after the batch just given: TrainingState.epochs
        # sets it to its Checkpointer's should_stop.
        self._stop_when: Callable[[], bool] = _never
        self._generator = torch.Generator()
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_EpochBatches(self),
            generator=self._generator,
            **loader_kwargs,
        )

    @property
    def batches_per_epoch(self) -> int:
        """The batches of one whole epoch (what ``len()`` gives)."""
        full, rest = divmod(self.size, self.batch_size * self.num_replicas)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def batches_left(self) -> int:
        """The batches of the current epoch not given out yet (after a resume: fewer than
        ``len()``)."""
        return max(0, self.batches_per_epoch - self.position)

    def __len__(self) -> int:
        """The batches of one whole epoch, as ``len(DataLoader)``: constant while iterating."""
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        if self.position < self.batches_per_epoch:
            # Workers' seeds from (seed, epoch), not from torch's global generator, which the
            # DataLoader would otherwise draw from (and so shift the model's dropout).
            self._generator.manual_seed(_mix(self.seed, self.epoch))
            for batch in self.loader:
                self.position += 1
                yield batch
                if self._stop_when():
                    return
        self.end_epoch()

    @property
    def should_stop(self) -> Callable[[], bool]:
        """Deprecated: the hook is TrainingState.epochs' own; loops read ``ckpt.should_stop``."""
        warn_renamed("ResumableLoader.should_stop", "Checkpointer.should_stop")
        return self._stop_when

    @should_stop.setter
    def should_stop(self, check: Callable[[], bool]) -> None:
        warn_renamed("ResumableLoader.should_stop", "Checkpointer.should_stop")
        self._stop_when = check

    def end_epoch(self) -> None:
        """Start the next epoch at its first batch."""
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        saved = LoaderState(
            seed=self.seed,
            epoch=self.epoch,
            position=self.position,
            batch_size=self.batch_size,
            size=self.size,
            shuffle=self.shuffle,
            num_replicas=self.num_replicas,
        )
        return {"kind": LoaderState.KIND, **dataclasses.asdict(saved)}

    def check_state_dict(self, state: dict[str, Any]) -> LoaderState:
        """*state* as a :class:`LoaderState` if this loader can take it up, else a
        CheckpointError saying why; changes nothing."""
        try:
            saved = parse_record(LoaderState, state, what="the checkpoint's loader state")
        except InvalidRecord as exc:
            raise CheckpointError(f"{exc}: the checkpoint is damaged") from None
        if (
            min(saved.seed, saved.epoch, saved.position) < 0
            or min(saved.batch_size, saved.num_replicas) < 1
        ):
            raise CheckpointError(f"the checkpoint's loader state is damaged ({saved})")
        if saved.size != self.size:
            raise CheckpointError(
                f"the checkpoint's data had {saved.size} samples, this dataset has "
                f"{self.size}: resuming would not continue the same epoch. Use the same data, or "
                "restart the run (Checkpointer.restart())"
            )
        return saved

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = self.check_state_dict(state)
        self.seed, self.epoch, self.shuffle = saved.seed, saved.epoch, saved.shuffle
        done = saved.position * saved.batch_size * saved.num_replicas  # samples done this epoch
        step = self.batch_size * self.num_replicas
        if done >= self.size:  # every sample of the epoch is done (the last step padded)
            self.position = self.batches_per_epoch
            return
        if done % step:
            logger.warning(
                "colabsession: the batch size changed from %d x %d replicas to %d x %d: resuming "
                "after sample %d",
                saved.batch_size,
                saved.num_replicas,
                self.batch_size,
                self.num_replicas,
                done - done % step,
            )
        self.position = done // step


@dataclass(frozen=True)
class LoaderState(Record):
    """Where a :class:`ResumableLoader` is, as its checkpoint records it."""

    KIND: ClassVar[str] = "colabsession-torch-loader"
    seed: int
    epoch: int
    position: int  # batches of the epoch already given out
    batch_size: int
    size: int  # the dataset's samples, checked on resume
    shuffle: bool
    num_replicas: int = 1  # the processes that shared each global batch


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _never() -> bool:
    return False


def _mix(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 1]).integers(0, 2**63 - 1))


# Random states ------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every random state a training step may draw from: Python's, NumPy's global one, torch's
    CPU generator and, where CUDA is in use, each GPU's (never initialises CUDA)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": (version, np.array(internal, dtype=np.uint32), gauss),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    saved = state.get("cuda")
    if saved is not None and torch.cuda.is_available():
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s).cpu() for s in saved])
        else:
            logger.warning(
                "colabsession: the checkpoint holds the random state of %d GPUs, this runtime has "
                "%d: their random streams start afresh",
                len(saved),
                torch.cuda.device_count(),
            )


# The whole training state ---------------------------------------------------------------------


class TrainingState:
    """Everything a loop needs to resume exactly, as one state for the Checkpointer.

    Args:
        model: the ``nn.Module``.
        optimizer: its optimizer.
        scheduler: a learning-rate scheduler, if any.
        scaler: a ``torch.amp.GradScaler``, if any.
        loader: a :class:`ResumableLoader`, or any loader with ``state_dict()`` and
            ``load_state_dict()`` (torchdata's ``StatefulDataLoader``), whose position is
            saved and put back: a resumed epoch goes on at the next batch, with the random
            states as the uninterrupted run had them there.
        rng: save and restore every random state (Python, NumPy, torch CPU and CUDA, and the
            generator a DataLoader was given with ``generator=``).
        **extra: anything else with ``state_dict()`` and ``load_state_dict()`` (an EMA of the
            weights, say).

    :attr:`step` counts the optimizer steps done: the loop adds one per step and passes it to
    ``ckpt.maybe_save``.
    """

    def __init__(
        self,
        model: Any = None,
        optimizer: Any = None,
        *,
        scheduler: Any = None,
        scaler: Any = None,
        loader: ResumableLoader | Any = None,
        rng: bool = True,
        **extra: Any,
    ) -> None:
        parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        parts.update(extra, loader=loader)
        for name, part in parts.items():
            if part is not None and not (
                callable(getattr(part, "state_dict", None))
                and callable(getattr(part, "load_state_dict", None))
            ):
                raise ConfigError(
                    f"TrainingState's {name} is a {type(part).__name__}, which has no "
                    "state_dict() and load_state_dict()"
                    + (
                        ": use colabsession.torch.ResumableLoader or torchdata's "
                        "StatefulDataLoader, which resume inside an epoch"
                        if name == "loader"
                        else ""
                    )
                )
        self.parts = {name: part for name, part in parts.items() if part is not None}
        self.loader = loader
        self.rng = rng
        self.step = 0
        self.epoch = 0  # without a ResumableLoader; with one, the loader's epoch counts
        self.restored = False
        self._hard_stop = False

    def state_dict(self) -> dict[str, Any]:
        """The state to save (pass the method itself to ``maybe_save``: it runs only when a save
        is due)."""
        if self._hard_stop:
            raise CheckpointError(
                "a second Ctrl-C stopped the loop in the middle of a step: that state is not "
                "saved; the run resumes from its last checkpoint"
            )
        state: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        state["parts"] = {name: part.state_dict() for name, part in self.parts.items()}
        if self.rng:
            state["rng"] = rng_state()
            generator = self._loader_generator()
            if generator is not None:
                state["rng"]["loader"] = generator.get_state()
        return state

    def _loader_generator(self) -> Any:
        """The generator a loader other than :class:`ResumableLoader` was given (DataLoader's
        ``generator=``): its iterators draw their workers' seeds, and its sampler the order,
        from it."""
        if isinstance(self.loader, ResumableLoader):
            return None  # its generator is reseeded from (seed, epoch) each epoch
        generator = getattr(self.loader, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load(state, mapped=False)

    def _load(self, state: dict[str, Any], *, mapped: bool) -> None:
        """Load *state*: the optimizer's tensors into those it holds where they fit. *mapped*:
        some of its tensors may view a memory map of the checkpoint file
        (``restore(lazy=True)``), so whatever a part keeps of them (rather than copies, as
        modules do) is copied first."""
        if not (
            isinstance(state, dict)
            and isinstance(state.get("parts"), dict)
            and all(_is_count(state.get(k)) for k in ("step", "epoch"))
        ):
            raise CheckpointError(
                "this checkpoint was not saved from a TrainingState (no parts, step and epoch): "
                "use another run, or restart this one"
            )
        missing = sorted(set(self.parts) - set(state["parts"]))
        if missing:
            raise CheckpointError(
                f"the checkpoint holds no {', '.join(missing)}: it was saved from another "
                "TrainingState. Pass the same parts, or restart the run"
            )
        # Everything is checked before anything is loaded: a refused checkpoint leaves the
        # model, the optimizer and the rest as they were.
        for name, part in self.parts.items():
            _check_part(name, part, state["parts"][name])
        rng = state.get("rng") if self.rng else None
        if rng is not None and not _is_rng_state(rng):
            raise CheckpointError("the checkpoint's random states are damaged")
        generator = self._loader_generator()
        loader_rng = rng.get("loader") if rng is not None and generator is not None else None
        if loader_rng is not None and (
            tuple(getattr(loader_rng, "shape", ())) != tuple(generator.get_state().shape)
        ):
            raise CheckpointError("the checkpoint's random state of the loader is damaged")
        maps = checkpoint_maps() if mapped else []  # (a file read into memory: nothing to copy)
        for name, part in self.parts.items():
            saved = state["parts"][name]
            if isinstance(part, torch.optim.Optimizer):
                saved = _into_optimizer(part, saved, maps)
            elif not isinstance(part, torch.nn.Module):
                saved = _own(saved, maps)
            try:
                part.load_state_dict(saved)
            except ColabSessionError:
                raise
            except Exception as exc:  # a part's own check that ours could not foresee
                raise CheckpointError(
                    f"the checkpoint's {name} does not fit this {type(part).__name__} ({exc}); "
                    "the parts before it may be loaded already: build them afresh, then use "
                    "the run this checkpoint belongs to, or restart this one"
                ) from None
        if self.loader is not None and not isinstance(self.loader, ResumableLoader):
            # torchdata's StatefulDataLoader builds its resumed iterator here, and the next
            # iter() hands that one out: what it draws when it starts (the workers' base seed,
            # from the loader's generator or torch's global one) is drawn before the random
            # states are put back, as the uninterrupted run drew it before they were saved.
            self.loader.state_dict()
        if rng is not None:
            set_rng_state(_own(rng, maps))
        if loader_rng is not None:
            generator.set_state(torch.as_tensor(loader_rng).cpu())
        self.step, self.epoch = int(state["step"]), int(state["epoch"])

    def _keeps(self) -> Callable[[tuple[Any, ...]], bool]:
        """Which arrays of a checkpoint of this state are kept as they are restored rather
        than copied into a tensor that exists (a module's, or an optimizer's that holds state
        already): a fresh optimizer's moments on the CPU, the random states, other parts.
        A restore copies those out of the file as it verifies it, in one pass."""
        places: dict[str, tuple[dict[Any, Any], list[Any]] | None] = {}
        for name, part in self.parts.items():
            if isinstance(part, torch.nn.Module):
                places[name] = None
            elif isinstance(part, torch.optim.Optimizer):
                held = part.state_dict()["state"]
                places[name] = (held, [p for g in part.param_groups for p in g["params"]])

        def keeps(path: tuple[Any, ...]) -> bool:
            if len(path) < 2 or path[0] != "parts" or path[1] not in places:
                return True  # the random states, a scheduler's, a loader's, ...
            place = places[path[1]]
            if place is None or len(path) < 5 or path[2] != "state":
                return False  # a module's tensors are copied into its own
            held, params = place
            index, key = path[3], path[4]
            if isinstance(held.get(index), dict) and key in held[index]:
                return False  # copied into the optimizer's own tensor
            on_cpu = not isinstance(index, int) or not 0 <= index < len(params)
            return on_cpu or params[index].device.type == "cpu"

        return keeps

    def restore(self, ckpt: Checkpointer, step: int | None = None) -> int:
        """Load the newest valid checkpoint (or *step*'s) into every part; return the step to
        continue from (0 for a new run) and say where training resumes. A checkpoint that does
        not fit (another model, optimizer or dataset) is a CheckpointError raised before any
        part is changed.

        A local checkpoint file is mapped into memory and verified whole before anything is
        loaded (a damaged one is skipped, never loaded), then its values are copied straight
        into the model's parameters and the optimizer's existing state (its moments, once it
        has stepped): the restore allocates memory only for what the parts do not hold yet,
        and nothing of the file stays alive after it."""
        restored = ckpt.restore(step, lazy=True, _own=self._keeps())
        self.restored = True
        if restored is None:
            say(f"no checkpoint in {ckpt.location}: training starts at step 0")
            return self.step
        created = restored.created
        try:
            self._load(restored.state, mapped=True)
        finally:
            del restored  # the last views of the file's mapping: it is unmapped now
        where = f"step {self.step}"
        if isinstance(self.loader, ResumableLoader):
            where += f" (epoch {self.loader.epoch}, after batch {self.loader.position})"
        elif self.loader is not None:
            where += f" (epoch {self.epoch}, where the loader left it)"
        say(f"resuming {ckpt.location} at {where}, saved {created:%Y-%m-%d %H:%M} UTC")
        return self.step

    @property
    def current_epoch(self) -> int:
        return self.loader.epoch if isinstance(self.loader, ResumableLoader) else self.epoch

    def epochs(
        self,
        total: int,
        ckpt: Checkpointer | None = None,
        *,
        notify: Notify = None,
        release_when_done: bool = False,
    ) -> Iterator[int]:
        """The epochs still to train, up to *total*: restores from *ckpt* first (unless
        :meth:`restore` ran), and ends early once *ckpt* says to stop (the session's deadline,
        SIGTERM, or Ctrl-C: the first one saves at the next ``maybe_save`` and stops there; a
        second one stops at once). With a loader that is not a :class:`ResumableLoader`
        (torchdata's ``StatefulDataLoader``) the loop body must end the epoch when
        ``ckpt.should_stop`` turns True (``if ckpt.should_stop: break``).

        *notify* (as ``cs.fit``'s: a webhook's URL, True, None or False) gets a message when the
        loop ends: "finished" after the last
        epoch, "deadline" when it stopped to save (an exception in the loop's body never
        passes through this iterator: post "failed" around the loop yourself, or use
        ``cs.fit``, ``cs.hf.train`` or the Lightning callback). *release_when_done*: after the
        last epoch, save the final state, close *ckpt* and release the Colab runtime once that
        checkpoint is confirmed at the location (never before).

        >>> for epoch in state.epochs(10, ckpt, release_when_done=True):  # doctest: +SKIP
        ...     train_one_epoch()
        """
        notify = webhook_url(notify) or False
        if ckpt is not None and not self.restored:
            self.restore(ckpt)

        def stop() -> bool:
            return ckpt is not None and ckpt.should_stop

        if isinstance(self.loader, ResumableLoader):
            self.loader._stop_when = stop  # the loader is this module's own class
        try:
            with (
                stop_at_boundary(ckpt, self._torn) if ckpt is not None else contextlib.nullcontext()
            ):
                while self.current_epoch < total and not stop():
                    epoch = self.current_epoch
                    yield epoch
                    if stop():
                        break
                    if not isinstance(self.loader, ResumableLoader):
                        self.epoch += 1
                    elif self.loader.epoch == epoch:  # the body left the epoch early
                        self.loader.end_epoch()
        finally:
            if isinstance(self.loader, ResumableLoader):
                self.loader._stop_when = _never
        if ckpt is not None:
            self._ended(ckpt, total, notify, release_when_done)

    def _ended(
        self, ckpt: Checkpointer, total: int, notify: Notify, release_when_done: bool
    ) -> None:
        """The loop of :meth:`epochs` ran to its end: say so, notify, release."""
        details = {
            "run": str(ckpt.location),
            "location": str(ckpt.location),
            "epochs": total,
            "epochs_done": self.current_epoch,
            "step": self.step,
        }
        if ckpt.should_stop:
            post(notify, "deadline", **details)
            return
        say(f"all {total} epochs are done (step {self.step})")
        post(notify, "finished", **details)
        if release_when_done:
            from colabsession._training.finish import release_when_safe

            last = ckpt.last_saved_step
            if last is None or self.step > last:
                ckpt.save(self.step, self.state_dict())
            ckpt.close()  # the final copy to the location, bounded by its close_timeout
            release_when_safe(ckpt)

    def _torn(self) -> None:
        self._hard_stop = True


def _check_part(name: str, part: Any, saved: Any) -> None:
    """Refuse *saved* for *part* where that is cheap to tell (a loader's data, a model's names
    and shapes, an optimizer's groups), before anything is loaded."""
    if isinstance(part, ResumableLoader):
        part.check_state_dict(saved)
        return
    if isinstance(part, torch.nn.Module):
        if not isinstance(saved, dict):
            raise CheckpointError(f"the checkpoint's {name} is not a state_dict: it is damaged")
        own = part.state_dict()
        missing = sorted(set(own) - set(saved))
        unexpected = sorted(set(saved) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"the checkpoint's {name} does not fit this model (missing "
                f"{_few(missing)}; unexpected {_few(unexpected)}): it was saved from another "
                "model. Build the same model, or restart the run (Checkpointer.restart())"
            )
        for key, tensor in own.items():
            shape = tuple(getattr(saved[key], "shape", ()))
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) != shape:
                raise CheckpointError(
                    f"the checkpoint's {name}[{key!r}] has shape {shape}, this model's "
                    f"{tuple(tensor.shape)}: it was saved from another model. Build the same "
                    "model, or restart the run (Checkpointer.restart())"
                )
        return
    if isinstance(part, torch.optim.Optimizer):
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
            raise CheckpointError(f"the checkpoint's {name} is not an optimizer's state: damaged")
        sizes = [len(g["params"]) for g in part.param_groups]
        saved_sizes = [
            len(g["params"]) if isinstance(g, dict) and isinstance(g.get("params"), list) else -1
            for g in groups
        ]
        if sizes != saved_sizes:
            raise CheckpointError(
                f"the checkpoint's {name} has parameter groups of {saved_sizes} parameters, "
                f"this optimizer {sizes}: it was saved for another model. Build the same "
                "model and optimizer, or restart the run (Checkpointer.restart())"
            )


def _own(state: Any, maps: list[tuple[int, int]] | None) -> Any:
    """*state* with a copy of its own of each tensor and numpy array that lies in *maps*
    (views of a mapped checkpoint file: see ``checkpoint_maps``)."""
    if isinstance(state, dict):
        return {k: _own(v, maps) for k, v in state.items()}
    if isinstance(state, list):
        return [_own(v, maps) for v in state]
    if isinstance(state, tuple):
        return tuple(_own(v, maps) for v in state)
    if isinstance(state, torch.Tensor) and in_maps(state, maps):
        return state.clone()
    if isinstance(state, np.ndarray) and in_maps(state, maps):
        return state.copy()
    return state


def _into_optimizer(
    optimizer: Any, saved: dict[str, Any], maps: list[tuple[int, int]] | None
) -> dict[str, Any]:
    """The optimizer state *saved* (a checked ``state_dict()``) with each tensor copied into
    the tensor the optimizer holds for the same parameter and key where that fits (shape,
    dtype), which ``load_state_dict`` then keeps as it is, so its memory is reused; the
    others that lie in *maps* (views of a mapped file) copied once, straight to their
    parameter's device."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    held = optimizer.state_dict()["state"]  # the optimizer's own tensors, not copies
    state: dict[Any, Any] = {}
    for index, values in saved["state"].items():
        if not isinstance(values, dict):
            state[index] = _own(values, maps)
            continue
        mine = held.get(index, {})
        device = params[index].device if isinstance(index, int) and index < len(params) else None
        state[index] = {}
        for key, value in values.items():
            own = mine.get(key)
            if not isinstance(value, torch.Tensor):
                state[index][key] = _own(value, maps)
            elif (
                isinstance(own, torch.Tensor)
                and own.shape == value.shape
                and own.dtype == value.dtype
            ):
                with torch.no_grad():
                    own.copy_(value)
                state[index][key] = own
            elif not in_maps(value, maps):
                state[index][key] = value
            elif device is not None and key != "step":  # the optimizer keeps "step" where it is
                state[index][key] = value.to(device, copy=True)
            else:
                state[index][key] = value.clone()
    return {**saved, "state": state, "param_groups": _own(saved["param_groups"], maps)}


def _is_rng_state(rng: Any) -> bool:
    return isinstance(rng, dict) and {"python", "numpy", "torch"} <= set(rng)


def _few(names: list[str]) -> str:
    return (", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")) or (
        "none"
    )


# Device and precision -----------------------------------------------------------------------


def precision(report: HardwareReport | None = None, *, announce: bool = True) -> Precision:
    """The device to train on and its mixed precision, from ``cs.probe()``: CUDA with bfloat16 on
    GPUs of compute capability 8.0 or more (A100, L4, H100), float16 with a GradScaler on 7.x
    (T4, V100), float32 below and on the CPU. Says what it chose.

    On a TPU runtime PyTorch needs torch-xla; the JAX path (Keras on JAX, ``cs.fit``) is the one
    Colab's TPU images are built for, so this picks the CPU there and says so.
    """
    from colabsession._runtime.probe import probe

    report = report or probe()
    capabilities = [g.capability for g in report.gpus if g.capability is not None]
    if torch.cuda.is_available():
        device = torch.device("cuda")
        weakest = min(capabilities) if capabilities else torch.cuda.get_device_capability(0)
        name = torch.cuda.get_device_name(0)
        if weakest >= (8, 0):
            chosen = Precision("mixed_bfloat16", f"{name}: bfloat16 autocast", device)
        elif weakest >= (7, 0):
            chosen = Precision("mixed_float16", f"{name}: float16 autocast with GradScaler", device)
        else:
            chosen = Precision("float32", f"{name}: float32 (no tensor cores)", device)
    elif report.tpu is not None:
        chosen = Precision(
            "float32",
            "a TPU runtime: PyTorch runs on its CPU here (TPUs take JAX: Keras on JAX, cs.fit)",
            torch.device("cpu"),
        )
    else:
        chosen = Precision("float32", "no GPU: the CPU, float32", torch.device("cpu"))
    if announce:
        say(f"training on {chosen.why}")
    return chosen
