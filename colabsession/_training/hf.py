"""The code behind :mod:`colabsession.hf` (its public names are listed there)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from colabsession._core.deprecation import renamed_arguments
from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.files import reason, replace_folder
from colabsession._core.notify import Notify, webhook_url
from colabsession._core.notify import notify as post
from colabsession._core.optional import require
from colabsession._core.progress import transfer
from colabsession._core.say import say
from colabsession._data.archive import is_plain
from colabsession._runtime.interrupt import stop_at_boundary
from colabsession._storage import serialize as _serialize
from colabsession._storage.checkpointer import (
    Checkpointer,
    RunLike,
    checkpointer_for,
    split_options,
)
from colabsession._training.finish import release_when_safe

transformers: Any = require("transformers", extra="hf", purpose="colabsession.hf")

logger = logging.getLogger(__name__)


FORMAT = "transformers-checkpoint-folder"
PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
STAGING = ".colabsession-staging"  # in output_dir: links to the files of the save in flight


class SessionCallback(transformers.TrainerCallback):  # type: ignore[misc]
    """Keeps each checkpoint the Trainer writes in a colabsession run, logs its metrics to the
    run's history, and asks the Trainer to save (``every``) and to stop (deadline, SIGTERM).

    :func:`train` adds it and resumes; add it yourself only to keep the Trainer's checkpoints
    without resuming from them.
    """

    def __init__(self, ckpt: Checkpointer, monitor: str | None = None) -> None:
        self.ckpt = ckpt
        self.monitor = monitor  # the Trainer's eval_<metric_for_best_model>, saved with each
        self.stopped_for_deadline = False  # the Trainer was told to stop, its state saved

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        due = self.ckpt.due(state.global_step)
        if due:
            control.should_save = True
        if due == "final":
            control.should_training_stop = True
            self.stopped_for_deadline = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if logs and "train_runtime" in logs:  # the summary at the end, not a step's metrics
            return control
        # Floats all, the epoch too: a float epoch is the Trainer's progress from the start
        # (0.5, ..., 3.0), which the history shows as it is (_history.for_display).
        numbers = {
            k: float(v)
            for k, v in (logs or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers and state.is_world_process_zero:
            self.ckpt.log(state.global_step, **numbers)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if not folder.is_dir():
            logger.warning("colabsession: the Trainer saved no folder %s: nothing kept", folder)
            return control
        # The save before has been written (save would wait for it anyway): its links can go.
        self.ckpt.wait()
        staging = Path(args.output_dir) / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        self.ckpt.save(
            state.global_step,
            hand_over(folder, staging / str(state.global_step)),
            metrics=self._evaluation(state, args),
        )
        if self.ckpt.due(state.global_step) == "final":
            self.ckpt.wait()
            control.should_training_stop = True
            self.stopped_for_deadline = True
            say(
                f"saved step {state.global_step} and stopping: re-run this cell (after "
                "reconnecting) to continue"
            )
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            try:
                self.ckpt.wait()  # the last save has read its files (or failed): the links go
            finally:
                shutil.rmtree(Path(args.output_dir) / STAGING, ignore_errors=True)
        return control

    def _evaluation(self, state: Any, args: Any) -> dict[str, float] | None:
        """The metric that ranks checkpoints, as the Trainer evaluated it at this step (it
        evaluates before it saves): the run's retention keeps the best checkpoint by it."""
        monitor = self.monitor or best_metric_name(args)
        if monitor is None:
            return None
        for entry in reversed(state.log_history):
            if entry.get("step") == state.global_step and monitor in entry:
                value = entry[monitor]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return {monitor: float(value)}
            if entry.get("step", state.global_step) < state.global_step:
                break
        return None


def best_metric_name(args: Any) -> str | None:
    """The metric by which the Trainer picks its best checkpoint, as it logs it (``eval_...``),
    or None when it picks none."""
    name = getattr(args, "metric_for_best_model", None)
    if not isinstance(name, str) or not name:
        return None
    return name if name.startswith("eval_") else f"eval_{name}"


def read_folder(folder: Path) -> dict[str, Any]:
    """A Trainer checkpoint folder as a checkpoint state: each file's bytes by its path."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(folder).as_posix()] = np.fromfile(path, dtype=np.uint8)
    return {"format": FORMAT, "files": files}


def hand_over(folder: Path, staging: Path) -> dict[str, Any]:
    """A Trainer checkpoint folder as a checkpoint state whose files the writer reads in the
    background: each file hard-linked into *staging* (a link survives the Trainer deleting its
    folder when it rotates checkpoints), so the training thread neither reads nor copies them.
    Where links cannot be made (another file system, one without links), the files are read
    now, as :func:`read_folder` does."""
    files: dict[str, Any] = {}
    try:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                name = path.relative_to(folder).as_posix()
                link = staging.joinpath(*name.split("/"))
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, link)
                files[name] = _serialize.FileBytes(link, link.stat().st_size)
    except OSError as exc:
        logger.debug("colabsession: no links in %s (%s): reading %s now", staging, exc, folder)
        shutil.rmtree(staging, ignore_errors=True)
        return read_folder(folder)
    return {"format": FORMAT, "files": files}


def write_folder(state: Any, folder: Path) -> Path:
    """Write what :func:`read_folder` read into *folder* (replacing it), through a temporary
    folder renamed into place. The names are checked first: a name that could leave the folder
    is refused, never written."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            "this run's checkpoints were not saved by cs.hf (no Trainer folder in them): use "
            "another run name for the Trainer"
        )
    files = state.get("files")
    if not isinstance(files, dict):
        raise CheckpointError("this checkpoint's list of files is damaged")
    for name, data in files.items():
        if (
            not isinstance(name, str)
            or not is_plain(name)
            or not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
        ):
            raise CheckpointError(f"this checkpoint holds the unsafe file name {name!r}: refused")
    # What a restore killed mid-write left beside the folder.
    for left in [*folder.parent.glob(f".{folder.name}.*.partial")]:
        shutil.rmtree(left, ignore_errors=True)
    for left in [*folder.parent.glob(f".{folder.name}.old-*")]:
        shutil.rmtree(left, ignore_errors=True)
    temporary = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.partial")
    try:
        temporary.mkdir(parents=True)
        total = sum(data.nbytes for data in files.values())
        with transfer(total, f"writing {folder.name}") as bar:
            for name, data in files.items():
                target = temporary.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                data.tofile(target)
                bar.update(data.nbytes)
        # The Trainer's own copy there, maybe cut short: the verified one replaces it.
        replace_folder(temporary, folder)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the checkpoint into {folder} ({reason(exc)}): free disk space "
            "(!df -h) or give the Trainer an output_dir elsewhere"
        ) from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return folder


@renamed_arguments("cs.hf.train", ckpt="run")
def train(
    trainer: Any,
    run: RunLike | Checkpointer,
    *,
    restart: bool = False,
    notify: Notify = None,
    release_when_done: bool = False,
    **kwargs: Any,
) -> Any:
    """Run ``trainer.train()`` so that it survives the session: resume from the run's newest
    valid checkpoint, keep each checkpoint the Trainer writes (and one every ``every``), and
    stop cleanly before the deadline. Returns what ``trainer.train`` returns (a finished run
    trains no further steps).

    >>> cs.hf.train(trainer, "bert-imdb", keep_last=2)  # doctest: +SKIP

    Args:
        trainer: a ``transformers.Trainer`` (or subclass) whose ``output_dir`` is on the local
            disk (``/content/...``): colabsession copies its checkpoints to Drive itself.
        run: the run: a name (``drive:checkpoints/<run>``) or a location, as for
            ``cs.Checkpointer``; or a Checkpointer made beforehand (then give no options; give
            it ``keep_best=1, monitor="eval_<metric>"`` to keep the best checkpoint).
        restart: start the run over (its checkpoints are set aside, never deleted).
        notify: a message when the run finishes, fails or stops for the deadline: a webhook's
            URL, True (``COLABSESSION_WEBHOOK`` from the environment or the notebook's secrets),
            None (the environment only) or False, as ``cs.fit``'s.
        release_when_done: when training is done and its last checkpoint is confirmed at the
            location (on Drive as Drive confirms it), release the Colab runtime
            (``google.colab.runtime.unassign()``); never before the run is safe.
        **kwargs: Checkpointer's keyword arguments configure the run, with its defaults:
            ``every`` (also save at most this often, whatever ``save_steps`` says),
            ``keep_last`` (how many of the Trainer's checkpoints the run keeps: each is a whole
            Trainer folder, the model and the optimizer's state, about three times the model's
            size with Adam, kept on the local disk and at the location: pass ``keep_last=2``
            or 1 for a large model), ``takeover``, ... With ``metric_for_best_model``
            (``load_best_model_at_end`` sets it) the best checkpoint by it is kept too
            (``keep_best=1``), and comes back with the newest on a new runtime, so that
            ``load_best_model_at_end`` loads the same weights as a run never interrupted. The
            other keyword arguments go to ``trainer.train`` (not ``resume_from_checkpoint``).
    """
    notify = webhook_url(notify) or False  # now: a secret's access prompt comes at the start
    options, train_kwargs = split_options(kwargs)
    if "resume_from_checkpoint" in train_kwargs:
        raise ConfigError("cs.hf.train resumes by itself: leave out resume_from_checkpoint")
    output_dir = Path(trainer.args.output_dir)
    if str(output_dir).startswith("/content/drive"):
        raise ConfigError(
            f"output_dir={output_dir} is on the Drive mount, where every file costs round trips "
            "and a stalled mount stalls training: use a local folder (/content/out); "
            "colabsession copies each checkpoint to Drive in the background"
        )
    monitor = best_metric_name(trainer.args)
    if getattr(trainer.args, "save_total_limit", 0) is None:
        say(
            f"the Trainer keeps every checkpoint it writes in {output_dir} (save_total_limit="
            "None), which can fill the runtime's disk: TrainingArguments(save_total_limit=2) "
            "keeps the newest and the best there; the run keeps its own copies"
        )
    if monitor is not None and not isinstance(run, Checkpointer) and "monitor" not in options:
        mode = "max" if trainer.args.greater_is_better else "min"
        options = {"keep_best": 1, "monitor": monitor, "mode": mode, **options}
    ckpt = checkpointer_for(run, options, who="cs.hf.train")
    callback = SessionCallback(ckpt, monitor)
    trainer.add_callback(callback)
    details = {"run": str(ckpt.location), "location": str(ckpt.location)}
    try:
        # The Trainer's state is saved only at its step boundaries: a hard stop tears nothing.
        with ckpt, stop_at_boundary(ckpt, on_hard_stop=lambda: None):
            resume = None
            if restart:
                ckpt.restart()
            else:
                resume = _restore(ckpt, output_dir, monitor, trainer.args)
            ckpt.prepare()
            result = trainer.train(resume_from_checkpoint=resume, **train_kwargs)
    except Exception as exc:
        post(notify, "failed", error=f"{type(exc).__name__}: {exc}", **details)
        raise
    finally:
        trainer.remove_callback(callback)
    post(
        notify,
        "deadline" if callback.stopped_for_deadline else "finished",
        step=ckpt.last_saved_step,
        **details,
    )
    if release_when_done and not callback.stopped_for_deadline:
        release_when_safe(ckpt)  # after the with: ckpt is closed, its last copy made
    return result


def _restore(ckpt: Checkpointer, output_dir: Path, monitor: str | None, args: Any) -> str | None:
    """Write the run's newest valid checkpoint into *output_dir* (and, with a best metric, the
    best checkpoint before it, as the Trainer left it there) and return the folder to resume
    from, or None for a new run."""
    best = _best_step(ckpt, monitor, args)
    best_folder = None
    if best is not None:
        try:
            restored_best = ckpt.restore(best)
        except CheckpointError as exc:
            logger.warning("colabsession: the best checkpoint cannot be restored: %s", exc)
        else:
            if restored_best is not None:
                best_folder = write_folder(restored_best.state, output_dir / f"{PREFIX}{best}")
    # The newest last: it is what the run continues from (and the Trainer's newest by mtime).
    restored = ckpt.restore()
    if restored is None:
        say(f"no checkpoint in {ckpt.location}: training starts at step 0")
        return None
    state = restored.state
    if best_folder is not None and best != restored.step:
        state = _pointing_at(state, best_folder, args)
    folder = write_folder(state, output_dir / f"{PREFIX}{restored.step}")
    say(
        f"resuming {ckpt.location} at step {restored.step}, saved "
        f"{restored.created:%Y-%m-%d %H:%M} UTC"
        + (f" (the best so far, step {best}, restored too)" if best_folder is not None else "")
    )
    return str(folder)


def _best_step(ckpt: Checkpointer, monitor: str | None, args: Any) -> int | None:
    """The step of the run's best checkpoint by *monitor*, as the Trainer ranks them (the first
    of equals), if it is not the newest; None otherwise."""
    if monitor is None:
        return None
    infos = ckpt.checkpoints()
    scored: dict[int, float] = {}
    for info in infos:
        value = info.metrics.get(monitor)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            scored[info.step] = float(value)
    if not scored:
        return None
    sign = -1.0 if args.greater_is_better else 1.0
    best = min(scored, key=lambda step: (sign * scored[step], step))
    newest = max(info.step for info in infos)
    return None if best == newest else best


def _pointing_at(state: dict[str, Any], best_folder: Path, args: Any) -> dict[str, Any]:
    """*state* (a Trainer folder) whose ``trainer_state.json`` names *best_folder* as the best
    checkpoint, where it lies now: the one saved may name another runtime's output_dir."""
    files = state.get("files")
    if not isinstance(files, dict):
        return state
    raw = files.get(TRAINER_STATE)
    if not isinstance(raw, np.ndarray):
        return state
    try:
        trainer_state = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return state  # the Trainer says what it makes of it
    if not isinstance(trainer_state, dict):
        return state
    recorded = trainer_state.get("best_model_checkpoint")
    here = os.path.join(str(args.output_dir), best_folder.name)
    if not isinstance(recorded, str) or Path(recorded).name != best_folder.name:
        return state  # it names another best: leave the Trainer's own record as it is
    if recorded == here:
        return state
    trainer_state["best_model_checkpoint"] = here
    data = np.frombuffer(json.dumps(trainer_state, indent=2).encode(), dtype=np.uint8)
    return {**state, "files": {**files, TRAINER_STATE: data.copy()}}
