"""The code behind :mod:`colabsession.lightning` (its public names are listed there)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.notify import Notify, webhook_url
from colabsession._core.notify import notify as post
from colabsession._core.optional import require
from colabsession._core.say import say
from colabsession._runtime.interrupt import StopOnSigterm, stop_at_boundary
from colabsession._runtime.runtime import run_again
from colabsession._storage.checkpointer import Checkpointer, RunLike, checkpointer_for
from colabsession._training.finish import release_when_safe
from colabsession._training.torch import rng_state, set_rng_state

pl: Any = require("lightning.pytorch", extra="lightning", purpose="colabsession.lightning")

logger = logging.getLogger(__name__)

SCHEME = "colabsession:"  # the ckpt_path of a run's checkpoint: "colabsession:<run>@<step>"


class SessionCheckpoint(pl.Callback):  # type: ignore[misc]
    """Gives a Lightning ``Trainer`` what ``cs.fit`` gives Keras: saves local-first and in the
    background through a :class:`~colabsession.Checkpointer` (copied to Drive), a stop before
    the session's deadline (and on SIGTERM or a first Ctrl-C), an exact resume, mid-epoch
    included, and the run's history.

    >>> session = cs.lightning.SessionCheckpoint("mnist-lit", every="10min")  # doctest: +SKIP
    >>> trainer = L.Trainer(max_epochs=10, callbacks=[session])  # doctest: +SKIP
    >>> trainer.fit(model, loader, ckpt_path=session.ckpt_path())  # doctest: +SKIP

    :meth:`ckpt_path` restores the run's newest valid checkpoint and names it for
    ``trainer.fit`` (None for a new run: Lightning starts afresh). During ``fit`` the callback
    is the Trainer's CheckpointIO for the run's checkpoints (its own ``ModelCheckpoint`` files
    go where they always went). A save happens after an optimizer step when
    ``ckpt.due(step)`` says so; near the deadline it saves, waits for the local write and sets
    ``trainer.should_stop``. Each checkpoint is Lightning's own (model, optimizers,
    schedulers, loops, callbacks, the data loaders' positions) plus every random state
    (Python, NumPy, torch), so a run resumes exactly where Lightning can resume exactly: inside
    an epoch when the train loader has ``state_dict()`` (torchdata's ``StatefulDataLoader``,
    :class:`~colabsession.torch.ResumableLoader`), else at the next epoch's start with a
    warning from Lightning. At each epoch's end the logged metrics go to the run's history
    (``cs.history(run)``), with the step and the epoch.

    Args:
        run: a run name (``drive:checkpoints/<run>``) or a location, or a Checkpointer.
        restart: start the run over (its checkpoints are set aside, never deleted).
        notify: a message when the run finishes, fails or stops for the deadline, as
            ``cs.fit``'s (a webhook's URL, True, None or False).
        release_when_done: when training is done and its last checkpoint is confirmed at the
            location (on Drive as Drive confirms it), release the Colab runtime
            (``google.colab.runtime.unassign()``); never before the run is safe.
        **options: Checkpointer's keyword arguments (``every``, ``keep_last``, ...).
    """

    def __init__(
        self,
        run: RunLike | Checkpointer,
        *,
        restart: bool = False,
        notify: Notify = None,
        release_when_done: bool = False,
        **options: Any,
    ) -> None:
        self.ckpt = checkpointer_for(run, options, who="cs.lightning.SessionCheckpoint")
        self.notify: Notify = webhook_url(notify) or False
        self.release_when_done = release_when_done
        self.restart = restart
        self._restored: dict[str, Any] | None = None
        self._restored_step: int | None = None
        self._rng: dict[str, Any] | None = None  # restored with the callback, set at train start
        self._previous_io: Any = None
        self._signals = contextlib.ExitStack()  # the signal handlers while training
        self._last_step: int | None = None
        self._stopped_for_deadline = False
        self._metrics: dict[str, float] | None = None  # given with the save under way

    # The resume ------------------------------------------------------------------------------

    def ckpt_path(self) -> str | None:
        """Restore the run's newest valid checkpoint and return its name for
        ``trainer.fit(ckpt_path=...)``; None when the run has none (or with ``restart``)."""
        if self.restart:
            self.ckpt.restart()
            return None
        restored = self.ckpt.restore()
        if restored is None:
            say(f"no checkpoint in {self.ckpt.location}: training starts at step 0")
            return None
        if not isinstance(restored.state, dict) or "state_dict" not in restored.state:
            raise CheckpointError(
                f"{self.ckpt.location} holds no Lightning checkpoint (it was saved by another "
                "trainer): use another run name, or pass restart=True"
            )
        self._restored, self._restored_step = restored.state, restored.step
        epoch = restored.state.get("epoch")  # Lightning's index, from 0
        say(
            f"resuming {self.ckpt.location} at step {restored.step}"
            + (f" (epoch {epoch + 1})" if isinstance(epoch, int) else "")
            + f", saved {restored.created:%Y-%m-%d %H:%M} UTC"
        )
        return f"{SCHEME}{self.ckpt.location}@{restored.step}"

    # Lightning's hooks ----------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if self.ckpt.closed:
            raise CheckpointError(
                "this SessionCheckpoint's run was closed when its fit ended: make a new "
                "cs.lightning.SessionCheckpoint for another fit"
            )
        strategy = trainer.strategy
        self._previous_io = strategy.checkpoint_io
        strategy.checkpoint_io = RunCheckpointIO(self, self._previous_io)
        if trainer.is_global_zero:
            self.ckpt.prepare()  # an unwritable location fails now, not after an epoch

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rng = state_dict.get("rng") if isinstance(state_dict, dict) else None
        self._rng = rng if isinstance(rng, dict) else None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # SIGTERM and a first Ctrl-C: save at the next step and stop. Installed after
        # Lightning took note of the handlers it puts back at its teardown, and removed
        # before it (on_train_end, on_exception), so that the handlers of the notebook
        # before fit() are what is left.
        if trainer.is_global_zero:
            sigterm = StopOnSigterm(self.ckpt.request_stop)
            sigterm.install()
            self._signals.callback(sigterm.uninstall)
            self._signals.enter_context(stop_at_boundary(self.ckpt, on_hard_stop=_nothing))
        # The random states as they were at the save, put back after everything Lightning
        # does between restoring the callbacks and the first batch (its train loader's
        # iterator, made before this hook, draws from torch's generator).
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:  # accumulating gradients: no optimizer step yet
            return
        self._last_step = step
        due = self.ckpt.due(step) if trainer.is_global_zero else None
        if _broadcast(trainer, due is not None):
            self._metrics = _numbers(trainer.callback_metrics)
            trainer.save_checkpoint(f"{SCHEME}{self.ckpt.location}@{step}")
        if _broadcast(trainer, self.ckpt.should_stop):
            self._stopped_for_deadline = True
            trainer.should_stop = True
            if trainer.is_global_zero:
                say(f"saved step {step} and stopping: to continue, {run_again()}")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = _numbers(trainer.callback_metrics)
        # The epoch's index from 0, as Keras' (cs.history shows it from 1).
        self.ckpt.log(int(trainer.global_step), epoch=int(trainer.current_epoch), **metrics)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._signals.close()
        step = int(trainer.global_step)
        last = self.ckpt.last_saved_step  # rank zero's counts: it is the one that saves
        newer = not self._stopped_for_deadline and (last is None or step > last)
        if _broadcast(trainer, newer):  # every rank calls save_checkpoint, or none does
            trainer.save_checkpoint(f"{SCHEME}{self.ckpt.location}@{step}")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning calls no teardown hook after an exception: the run is closed here.
        self._signals.close()
        sigterm = type(exception).__name__ == "SIGTERMException" and self.ckpt.should_stop
        self._finish(trainer, None if sigterm else exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._finish(trainer, None)

    def _finish(self, trainer: Any, exception: BaseException | None) -> None:
        """Put Lightning's CheckpointIO back, close the run (its last copy to the location,
        bounded by ``close_timeout``), notify, and release the runtime if asked and safe."""
        if self._previous_io is None:
            return  # done already, or fit never set up
        trainer.strategy.checkpoint_io = self._previous_io
        self._previous_io = None
        try:
            self.ckpt.close()
        finally:
            if trainer.is_global_zero:
                self._report(trainer, exception)

    def _report(self, trainer: Any, exception: BaseException | None) -> None:
        details = {
            "run": str(self.ckpt.location),
            "location": str(self.ckpt.location),
            "epochs": trainer.max_epochs,
        }
        if exception is not None:
            error = f"{type(exception).__name__}: {exception}"
            post(self.notify, "failed", error=error, **details)
            return
        stopped = self._stopped_for_deadline or self.ckpt.should_stop
        post(
            self.notify,
            "deadline" if stopped else "finished",
            epochs_done=int(trainer.current_epoch),
            step=int(trainer.global_step),
            metrics=_numbers(trainer.callback_metrics),
            **details,
        )
        if self.release_when_done and not stopped:
            release_when_safe(self.ckpt)

    # What the CheckpointIO calls ---------------------------------------------------------------

    def _save(self, checkpoint: dict[str, Any], step: int) -> None:
        metrics, self._metrics = self._metrics, None
        self.ckpt.maybe_save(step, checkpoint, metrics=metrics)
        if not self.ckpt.should_stop and self.ckpt.last_saved_step != step:
            # Not due by the Checkpointer's clock (the end of training, or a save the user
            # asked for): saved all the same.
            self.ckpt.save(step, checkpoint, metrics=metrics)

    def _load(self, path: str) -> dict[str, Any]:
        if self._restored is None or not path.endswith(f"@{self._restored_step}"):
            raise ConfigError(
                f"ckpt_path={path!r} names a colabsession checkpoint this callback did not "
                "restore: pass ckpt_path=session.ckpt_path()"
            )
        state, self._restored = self._restored, None
        return state


class RunCheckpointIO(pl.plugins.CheckpointIO):  # type: ignore[misc]
    """The Trainer's CheckpointIO while :class:`SessionCheckpoint` trains: the run's checkpoints
    (``colabsession:...`` paths) go to and come from its Checkpointer, any other path to the
    CheckpointIO it replaced (a ``ModelCheckpoint``'s files)."""

    def __init__(self, owner: SessionCheckpoint, inner: Any) -> None:
        self.owner = owner
        self.inner = inner

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        name = str(path)
        if not name.startswith(SCHEME):
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        self.owner._save(checkpoint, int(name.rpartition("@")[2]))

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        name = str(path)
        if not name.startswith(SCHEME):
            return self.inner.load_checkpoint(path, *args, **kwargs)  # type: ignore[no-any-return]
        return self.owner._load(name)

    def remove_checkpoint(self, path: Any) -> None:
        if not str(path).startswith(SCHEME):
            self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def _nothing() -> None:
    """A second Ctrl-C stops at once: Lightning's state is saved only between steps."""


def _broadcast(trainer: Any, flag: bool) -> bool:
    """Rank zero's *flag* on every rank (one process: *flag*)."""
    if trainer.world_size == 1:
        return flag
    return bool(trainer.strategy.broadcast(flag, src=0))


def _numbers(metrics: Any) -> dict[str, float]:
    numbers: dict[str, float] = {}
    for key, value in dict(metrics or {}).items():
        if hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[str(key)] = float(value)
    return numbers
