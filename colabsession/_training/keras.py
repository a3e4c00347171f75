"""The code behind :mod:`colabsession.keras` (its public names are listed there)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

from colabsession._core.deprecation import renamed_arguments
from colabsession._core.errors import CheckpointError
from colabsession._core.optional import require
from colabsession._core.say import say
from colabsession._core.units import format_duration
from colabsession._runtime.runtime import run_again
from colabsession._storage.checkpointer import (
    Checkpoint,
    Checkpointer,
    RunLike,
    checkpointer_for,
)
from colabsession._storage.history import metric_names, read_history

keras = require("keras", extra="tensorflow", purpose="colabsession.keras")
_Callback: Any = keras.callbacks.Callback
logger = logging.getLogger("colabsession")


class SessionCheckpoint(_Callback):  # type: ignore[misc]
    """Save a training run periodically and before the session deadline, and resume it.

    At the start of ``fit`` it restores the newest valid checkpoint of the run (all model
    variables, the dropout seed-generator state included, the optimizer's variables, the epoch)
    and continues after that epoch, and it logs each epoch's metrics to the run's history.

    With plain ``model.fit`` the data order is Keras', which no checkpoint can replay, so only
    epoch ends are saved: at the first epoch end after *every* (or *every_steps* batches) has
    passed, and at the epoch end after which the next epoch (timed from the ones before) would
    not end before the session deadline; then training stops. A stop inside an epoch (SIGTERM, a
    deadline the epochs' times did not foresee) saves nothing: the run resumes after its last
    saved epoch, and no batch is trained twice. ``cs.fit`` saves and resumes at the exact batch.

    >>> callback = SessionCheckpoint("my-run", every="5min")  # doctest: +SKIP
    >>> model.fit(x, y, epochs=20, callbacks=[callback])  # doctest: +SKIP

    Args:
        run: the run: a name (stored at ``drive:checkpoints/<name>``) or a location, as for
            :class:`colabsession.Checkpointer`; or a Checkpointer made beforehand (then give no
            options). The callback closes it when training ends.
        verbose: print the resume and the per-epoch time estimate.
        restart: start the run over instead of resuming it: its checkpoints and history so far
            are set aside (renamed ``parked-...``), never deleted.
        **options: :class:`colabsession.Checkpointer`'s keyword arguments (``every``,
            ``every_steps`` (batches here), ``keep_last``, ``clock``, ...), with its defaults.
            Its ``save_on_interrupt`` is off under this callback: ``cs.fit`` saves the exact
            batch at a Ctrl-C itself, and plain ``model.fit`` saves only at epoch ends.
    """

    @renamed_arguments("cs.keras.SessionCheckpoint", run_or_location="run")
    def __init__(
        self,
        run: RunLike | Checkpointer,
        *,
        verbose: bool = True,
        restart: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.restart = restart
        self.verbose = verbose
        self._given = isinstance(run, Checkpointer)
        self._options = {**options, "save_on_interrupt": False}
        self._monotonic = options.get("_monotonic", time.monotonic)
        self.ckpt = checkpointer_for(run, options, who="SessionCheckpoint")
        self.ckpt.save_on_interrupt = False  # see Args
        self.location = self.ckpt.location
        self.clock = self.ckpt.clock
        self.close_on_train_end = True
        # cs.fit sets these: whether it controls the data order (then mid-epoch states resume
        # exactly), the batches and samples of its epochs, the run's epochs when a fit() call
        # does fewer, and the batches already done in the epoch that the call resumes.
        self.exact = False
        self.steps_per_epoch: int | None = None
        self.samples_per_epoch: int | None = None
        self.total_epochs: int | None = None
        self.batch_offset = 0
        self.data: dict[str, Any] = {}
        self.restored: Checkpoint | None = None
        self.stopped_for_deadline = False
        self._restore_done = False
        self._epoch = 0
        self._batches_done = 0
        self._in_step = False
        self._resumed_logs: dict[str, Any] | None = None
        self._resumed_metrics: list[Any] | None = None
        self._seen_per_epoch: int | None = None
        self._epoch_ended = False
        self._stopped_inside_epoch = False
        self._epoch_started = 0.0
        self._epoch_seconds: list[float] = []
        self._epochs = 0
        self._pending_line: str | None = None
        self._epoch_metrics: dict[str, Any] | None = None
        self._iteration_offset: int | None = None

    # Restoring -----------------------------------------------------------------------------

    def restore(self, model: Any) -> Checkpoint | None:
        """Load the newest valid checkpoint into *model* (and its optimizer); None if none.

        Raises CheckpointError, before anything is loaded, when the run was written by another
        API, or when its newest state is from the middle of an epoch and this fit does not
        control the data order (plain ``model.fit``): resuming there would train batches twice.
        """
        self._restore_done = True
        if self.restart:
            self.restart = False  # once: the next fit() of this callback resumes
            self.ckpt.restart()  # it says what it sets aside
            return None
        checkpoint = self.ckpt.restore()
        self.restored = checkpoint
        if checkpoint is None:
            return None
        state = checkpoint.state
        _check_written_here(state, self.location)
        epoch, batch = self.resume_point(checkpoint)
        if batch and not self.exact:
            raise CheckpointError(
                f"the newest checkpoint of {self.location} is from the middle of epoch "
                f"{epoch + 1} (after batch {batch}), and model.fit decides the data order "
                "itself, so it cannot continue from there without training batches twice. Only "
                "cs.fit, which controls the order, resumes inside an epoch: continue this run "
                "with cs.fit and the same arrays, or start it over with restart=True"
            )
        _assign(model.variables, state["model"], "model")
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and state.get("optimizer"):
            if not optimizer.built:
                strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's
                with strategy.scope() if strategy is not None else contextlib.nullcontext():
                    optimizer.build(model.trainable_variables)
            _assign(optimizer.variables, state["optimizer"], "optimizer")
        self.data = dict(state.get("data") or {})
        self._resumed_logs = state.get("logs") or None
        self._resumed_metrics = state.get("metrics") or None
        finished = self.total_epochs is not None and epoch >= self.total_epochs
        if self.verbose and not finished:  # cs.fit says a finished run is finished
            per_epoch = state.get("steps_per_epoch")
            where = (
                f"in epoch {epoch + 1}, after batch {batch}"
                + (f" of {per_epoch}" if per_epoch else "")
                if batch
                else f"after epoch {epoch}"
            )
            say(
                f"resumed {self.location} {where} (step {checkpoint.step}, saved "
                f"{checkpoint.created:%Y-%m-%d %H:%M} UTC)"
            )
        return checkpoint

    @staticmethod
    def resume_point(checkpoint: Checkpoint | None) -> tuple[int, int]:
        """(epoch, batches already done in it) at which training continues."""
        if checkpoint is None:
            return 0, 0
        state = checkpoint.state
        epoch, batch, per_epoch = int(state["epoch"]), int(state["batch"]), state["steps_per_epoch"]
        if per_epoch and batch >= int(per_epoch):
            return epoch + 1, 0
        return epoch, batch

    def build_metrics(self, model: Any, x: Any, y: Any) -> None:
        """Build *model*'s compiled metrics from a sample (*x*, *y*) of the data when the epoch
        that resumes needs their saved totals before its first step: Keras on TensorFlow
        (without a strategy) builds them only in that step. An inference call: the weights and
        the seed generators are left as they are."""
        saved = self._resumed_metrics
        if saved is None or y is None or len(model.metrics_variables) >= len(saved):
            return
        model.compute_metrics(x, y, model(x, training=False))
        model.reset_metrics()

    # Callback hooks -------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.ckpt.closed:  # a second fit() with the same callback
            if self._given:
                raise CheckpointError(
                    "the Checkpointer given to this SessionCheckpoint was closed at the end of "
                    "the last fit(): give the callback a new Checkpointer, or the run's name "
                    "and options (then it makes a new one for each fit)"
                )
            self.ckpt = Checkpointer(self.location, **self._options)
        self.stopped_for_deadline = False
        self._stopped_inside_epoch = False
        self._epochs = self.total_epochs or int(self.params.get("epochs") or 0)
        if not self._restore_done:
            try:
                checkpoint = self.restore(self.model)
            except BaseException:
                self.ckpt.close()
                raise
            if checkpoint is not None:
                epoch, _ = self.resume_point(checkpoint)
                self.model._initial_epoch = epoch  # what Keras' BackupAndRestore does too

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._print_pending()
        self._epoch = epoch
        self._batches_done = self.batch_offset
        self._epoch_ended = False
        self._epoch_started = self._monotonic()
        # The rest of an epoch cut short: Keras has just reset the metrics; give them back the
        # totals of the batches already done, so that the epoch's loss and metrics are what an
        # uninterrupted epoch reports (to the bit), not a mean of two means.
        if (
            self.batch_offset
            and self._resumed_metrics is not None
            and _assign_metrics(self.model.metrics_variables, self._resumed_metrics)
        ):
            self._resumed_logs = None
        self._resumed_metrics = None
        iterations = self._iterations()
        if iterations is not None:  # the optimizer counts applied steps: see save_now()
            self._iteration_offset = iterations - self._step()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._in_step = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._in_step = False
        self._batches_done = self.batch_offset + batch + 1
        self._last_logs = dict(logs or {})
        if not self.exact:
            # Keras orders the data: only epoch ends are saved (on_epoch_end). A stop asked for
            # inside the epoch (SIGTERM, a deadline the epoch times did not foresee) drops the
            # epoch's batches; the run resumes after its last saved epoch.
            last = self._batches_done == self._per_epoch()
            if self.ckpt.due(self._step()) == "final" and not last:
                self._stopped_inside_epoch = True
                self.stopped_for_deadline = True
                self.model.stop_training = True
            return
        step = self._step()
        # Mid-epoch saves carry the epoch's running metrics, for the checkpoint list.
        metrics = self._running_metrics() if self.ckpt.due(step) else None
        self.ckpt.maybe_save(step, self._state, metrics=metrics)
        if self.ckpt.should_stop:
            self.stopped_for_deadline = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.stopped_for_deadline:
            return  # a cut-short epoch: its metrics come when it is finished, next session
        logs = self._merge_resumed(dict(logs or {}))
        metrics = {k: float(v) for k, v in logs.items() if _is_number(v)}
        metrics["epoch"] = epoch
        self._epoch_metrics = metrics
        if self._per_epoch() is None:  # a dataset of unknown length: now it is known
            self._seen_per_epoch = self._batches_done
        self._batches_done = self._per_epoch() or self._batches_done
        self._epoch_seconds.append(self._monotonic() - self._epoch_started)
        self._epoch_ended = True
        step = self._step()
        if self.exact:
            self.ckpt.maybe_save(step, self._state, metrics=metrics)
            stop = self.ckpt.should_stop
        else:
            due = self.ckpt.due(step)
            stop = due == "final" or self._next_epoch_ends_too_late(epoch)
            if stop or due:
                self.ckpt.save(step, self._state(), metrics=metrics)
                if stop:
                    self.ckpt.wait()
            else:
                self.ckpt.log(step, **metrics)
        if stop:
            self.stopped_for_deadline = True
            self.model.stop_training = True
        # Printed at the next epoch's start, after Keras' own line for this epoch.
        self._pending_line = self.estimate(epoch) if self.verbose else None

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._print_pending()
        self.model._initial_epoch = None
        keep = self.exact or self._epoch_ended  # model.fit: never a state inside an epoch
        if keep and self.ckpt.last_saved_step != self._step() and not self._in_step:
            # The end of training is always kept.
            self.ckpt.save(self._step(), self._state(), metrics=self._metrics_now())
        if self.close_on_train_end:
            self.ckpt.close()  # uploads what is left, releases the lease
        else:
            self.ckpt.wait()
        if self.stopped_for_deadline and self.verbose:
            if self._stopped_inside_epoch:
                saved = self.ckpt.last_saved_step
                say(
                    f"stopped in epoch {self._epoch + 1} before the session deadline (or a "
                    "SIGTERM); model.fit decides the data order, so the batches of this epoch "
                    "are not saved: the run resumes "
                    + (
                        f"from its last checkpoint (step {saved}), in {self.location}"
                        if saved is not None
                        else "from the start: nothing was saved yet"
                    )
                    + f". Reconnect (or start a new runtime) and {run_again()} to continue "
                    "(cs.fit resumes at the exact batch)."
                )
            else:
                where = (
                    f"after epoch {self._epoch + 1}"
                    if self._epoch_ended
                    else f"at epoch {self._epoch + 1}, batch {self._batches_done}"
                )
                say(
                    f"stopped {where} before the session deadline; the run is saved in "
                    f"{self.location}. "
                    f"Reconnect (or start a new runtime) and {run_again()} to continue."
                )

    def _next_epoch_ends_too_late(self, epoch: int) -> bool:
        """Whether another epoch, as long as the longest of the last three, would end inside
        the Checkpointer's margin before the deadline: then this epoch end is the last one
        that can be saved in this session."""
        if epoch + 1 >= self._epochs or not self._epoch_seconds:
            return False
        return self.clock.remaining - max(self._epoch_seconds[-3:]) <= self.ckpt.margin

    # Helpers ---------------------------------------------------------------------------------

    def _metrics_now(self) -> dict[str, Any]:
        """The metrics of the state saved now: the epoch's, at its end, else the running ones."""
        epoch_end = self._batches_done == self._per_epoch()
        if epoch_end and self._epoch_metrics and self._epoch_metrics.get("epoch") == self._epoch:
            return dict(self._epoch_metrics)
        return self._running_metrics()

    def _running_metrics(self) -> dict[str, float]:
        logs = getattr(self, "_last_logs", {})
        return {k: float(v) for k, v in logs.items() if _is_number(v) and not k.startswith("val_")}

    def _print_pending(self) -> None:
        line, self._pending_line = self._pending_line, None
        if line:
            print(line, flush=True)

    def estimate(self, epoch: int) -> str:
        """The per-epoch line: time per epoch, epochs that still fit, sessions still needed."""
        recent = self._epoch_seconds[-3:]
        per_epoch = sum(recent) / len(recent) if recent else 0.0
        left = max(0, self._epochs - epoch - 1)
        remaining = self.clock.remaining
        if not left:
            return (
                f"colabsession: epoch {epoch + 1}/{self._epochs} took "
                f"{format_duration(per_epoch, precise=True)}; training is complete"
            )
        fit = int(remaining // per_epoch) if per_epoch else left
        per_session = self.clock.max_session / per_epoch if per_epoch else float("inf")
        sessions = 0 if left <= fit else 1 + math.ceil((left - fit) / max(per_session, 1e-9))
        return (
            f"colabsession: epoch {epoch + 1}/{self._epochs or '?'} took "
            f"{format_duration(per_epoch, precise=True)}; {min(fit, left)} of the {left} epochs "
            f"left fit in the {format_duration(remaining)} left in this session"
            + (f"; about {sessions} more session(s) needed" if sessions else "")
        )

    def save_now(self) -> bool:
        """Save the current state when training is interrupted (Ctrl-C).

        The interrupt usually lands between a step's update and its on_train_batch_end, so the
        step is read from the optimizer's iteration counter, which the update advances
        atomically; without an optimizer, a half-done step is not saved. On JAX an interrupt
        inside a step finds the model's variables donated to it (Keras hands the new ones back
        only at the callbacks): nothing of that step is left to save, and it says so."""
        if not self.exact:
            return self._save_epoch_end_now()
        if self._donated():
            logger.warning(
                "colabsession: the interrupt came inside a JAX step, which had taken the model's "
                "variables: this step is not saved; the run resumes from %s",
                f"step {self.ckpt.last_saved_step}"
                if self.ckpt.last_saved_step is not None
                else "the start",
            )
            return False
        iterations = self._iterations()
        per_epoch = self._per_epoch()
        if iterations is not None and self._iteration_offset is not None and per_epoch:
            step = iterations - self._iteration_offset
            self._epoch, self._batches_done = divmod(step, per_epoch)
        elif self._in_step:
            return False
        if self._step() == 0 or self._step() == self.ckpt.last_saved_step:
            return self._step() != 0
        self.ckpt.save(self._step(), self._state(), metrics=self._metrics_now())
        self.ckpt.wait()
        return True

    def _save_epoch_end_now(self) -> bool:
        """save_now() when Keras orders the data: only a finished epoch is saved."""
        if self._epoch_ended and not self._donated():
            if self._step() != self.ckpt.last_saved_step:
                self.ckpt.save(self._step(), self._state(), metrics=self._metrics_now())
                self.ckpt.wait()
            return True
        saved = self.ckpt.last_saved_step
        logger.warning(
            "colabsession: interrupted inside epoch %d; the data order is model.fit's, so its "
            "batches are not saved: the run resumes from %s",
            self._epoch + 1,
            f"step {saved}" if saved is not None else "the start",
        )
        return False

    def _donated(self) -> bool:
        for variable in self.model.variables:
            deleted = getattr(getattr(variable, "value", None), "is_deleted", None)
            if callable(deleted) and deleted():
                return True
        return False

    def _iterations(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        try:
            return int(optimizer.iterations.numpy()) if optimizer is not None else None
        except (AttributeError, TypeError, ValueError):
            return None

    def full_history(self) -> Any:
        """A keras History holding every epoch once, from all sessions of the run."""
        history = keras.callbacks.History()
        history.set_model(self.model)
        records = [r for r in read_history(self.location, self.ckpt.local_dir) if "epoch" in r]
        by_epoch = {int(r["epoch"]): r for r in records}
        history.epoch = sorted(by_epoch)
        names = sorted(metric_names(list(by_epoch.values())))
        history.history = {n: [by_epoch[e].get(n) for e in history.epoch] for n in names}
        return history

    def _per_epoch(self) -> int | None:
        return self.steps_per_epoch or self.params.get("steps") or self._seen_per_epoch

    def _step(self) -> int:
        return self._epoch * (self._per_epoch() or 0) + self._batches_done

    def _state(self) -> dict[str, Any]:
        optimizer = getattr(self.model, "optimizer", None)
        return {
            "model": [_snapshot(v) for v in self.model.variables],
            "optimizer": [_snapshot(v) for v in optimizer.variables] if optimizer else [],
            "epoch": self._epoch,
            "batch": self._batches_done,
            "steps_per_epoch": self._per_epoch(),
            "data": self.data,
            "logs": self._running_metrics(),
            # The metrics' running totals (Mean's total and count, ...): a resumed epoch goes
            # on from them (on_epoch_begin).
            "metrics": [_snapshot(v) for v in self.model.metrics_variables],
        }

    def _merge_resumed(self, logs: dict[str, Any]) -> dict[str, Any]:
        """The epoch that resumed mid-way from a checkpoint without the metrics' totals (saved
        by an earlier colabsession) reports the mean over all its samples, as Keras' Mean does,
        from the running means of the two sessions."""
        before, self._resumed_logs = self._resumed_logs, None
        done, batch = self.batch_offset, self.data.get("batch_size")
        samples = self.samples_per_epoch
        if not before or not done or not batch or not samples:
            return logs
        first = min(samples, done * int(batch))  # the partial batch, if any, is the last
        for key, value in logs.items():
            if key in before and not key.startswith("val_") and _is_number(value):
                logs[key] = (before[key] * first + float(value) * (samples - first)) / samples
        return logs


def _snapshot(variable: Any) -> Any:
    """The variable's value now, without copying it in the training thread where the backend
    allows: TensorFlow's ``read_value()`` is a tensor that later updates leave alone (they copy
    on write), and JAX arrays never change; the checkpoint converts both in the background.
    Other backends' values (torch) are copied now."""
    backend = keras.backend.backend()
    value = variable.value
    if backend == "tensorflow" and hasattr(value, "read_value"):
        return value.read_value()
    if backend == "jax":
        return value
    return variable.numpy()


def _assign(variables: list[Any], values: list[Any], what: str) -> None:
    if len(variables) != len(values):
        raise CheckpointError(
            f"the checkpoint holds {len(values)} {what} variables and the {what} has "
            f"{len(variables)}: was the model changed since it was saved? Train the new model "
            "under a new run name"
        )
    for variable, value in zip(variables, values, strict=True):
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointError(
                f"{what} variable {variable.path} has shape {tuple(variable.shape)}, the "
                f"checkpoint {tuple(value.shape)}: was the model changed? Use a new run name"
            )
        variable.assign(value)


def _assign_metrics(variables: list[Any], values: list[Any]) -> bool:
    """Give the metrics the saved totals; False (nothing assigned) when they do not match, as
    when the model was compiled with other metrics."""
    if len(variables) != len(values):
        return False
    pairs = list(zip(variables, values, strict=True))
    if any(tuple(v.shape) != tuple(getattr(w, "shape", ())) for v, w in pairs):
        return False
    for variable, value in pairs:
        variable.assign(value)
    return True


_STATE_KEYS = ("model", "optimizer", "epoch", "batch", "steps_per_epoch")


def _check_written_here(state: Any, location: Any) -> None:
    """A run written by another API (a TrainingState, cs.hf, a loop of one's own) is refused
    with what to do, before anything is loaded."""
    if (
        isinstance(state, dict)
        and all(key in state for key in _STATE_KEYS)
        and isinstance(state["model"], list)
    ):
        return
    raise CheckpointError(
        f"{location} holds checkpoints written by another API (a cs.Checkpointer loop, "
        "colabsession.torch's TrainingState or cs.hf), not by cs.fit or "
        "cs.keras.SessionCheckpoint: train this model under another run name, or pass "
        "restart=True to start this run over (its checkpoints are set aside, not deleted)"
    )


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bool))
