"""``cs.fit``: Keras' ``model.fit`` that survives Colab, resuming at the exact batch."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ._clock import SessionClock
from ._errors import ConfigError
from ._notify import notify as post
from ._optional import require
from ._runtime import run_again
from ._say import say
from ._units import Duration
from .drive import Location

logger = logging.getLogger("colabsession")


def fit(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    run: str,
    epochs: int,
    batch_size: int | None = None,
    validation_data: Any = None,
    seed: int | None = None,
    every: Duration | None = "10min",
    every_steps: int | None = None,
    location: str | os.PathLike[str] | Location | None = None,
    clock: SessionClock | None = None,
    callbacks: Sequence[Any] = (),
    notify: str | None = None,
    keep_last: int = 3,
    verbose: Any = "auto",
    restart: bool = False,
    takeover: bool = False,
    **fit_kwargs: Any,
) -> Any:
    """Train *model* like ``model.fit``, checkpointing to ``drive:checkpoints/<run>`` (or
    *location*) and resuming there when the same cell runs again after a disconnect.

    With arrays as *x* and *y*, cs.fit draws each epoch's order from (*seed*, epoch) and a
    resumed run skips the batches already done, so a run killed at any step ends with the same
    weights, bit for bit, as an uninterrupted one (same machine, deterministic ops). Without a
    *seed* one is drawn and kept in the checkpoint. Other inputs (a tf.data Dataset, a generator)
    resume at the start of the checkpoint's epoch.

    *batch_size* is per replica: under a strategy with several replicas the global batch is
    that many times larger. Before the session deadline cs.fit saves, stops, and says how to
    continue. Returns a keras History with every epoch of every session of the run; a run that
    already has all its *epochs* returns it at once. *restart* starts the run over (its earlier
    checkpoints and history are set aside, never deleted); *takeover* takes the run from another
    notebook whose lease has not expired.

    >>> history = cs.fit(model, x, y, run="digits-cnn", epochs=50, batch_size=64, seed=0)
    """
    keras = require("keras", extra="tensorflow", purpose="cs.fit()")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive whole number, not {epochs!r}")
    from .keras import SessionCheckpoint

    if fit_kwargs.keys() & {"initial_epoch", "shuffle", "steps_per_epoch", "sample_weight"}:
        bad = sorted(
            fit_kwargs.keys() & {"initial_epoch", "shuffle", "steps_per_epoch", "sample_weight"}
        )
        raise ConfigError(
            f"cs.fit sets {', '.join(bad)} itself to resume exactly: leave them out (put sample "
            "weights in a tf.data Dataset, or use model.fit with cs.keras.SessionCheckpoint)"
        )
    _check_scope(model)
    callback = SessionCheckpoint(
        location if location is not None else run,
        every=every,
        every_steps=every_steps,
        keep_last=keep_last,
        clock=clock,
        verbose=verbose != 0,
        restart=restart,
        takeover=takeover,
    )
    callback.total_epochs = epochs
    callback.close_on_train_end = False  # cs.fit may call model.fit twice; it closes at the end
    replicas = (
        int(getattr(model.distribute_strategy, "num_replicas_in_sync", 1))
        if hasattr(model, "distribute_strategy")
        else 1
    )
    per_replica = batch_size or 32
    global_batch = per_replica * replicas
    details = {"run": run, "location": str(callback.location), "epochs": epochs}
    try:
        with callback.ckpt:  # SIGTERM: save at the next batch and stop
            try:
                _train(
                    keras,
                    model,
                    x,
                    y,
                    callback,
                    epochs=epochs,
                    seed=seed,
                    run=run,
                    global_batch=global_batch,
                    validation_data=validation_data,
                    verbose=verbose,
                    callbacks=callbacks,
                    fit_kwargs=fit_kwargs,
                )
            except KeyboardInterrupt:
                if callback.save_now():
                    say(
                        f"interrupted; saved the run in {callback.location}. To "
                        f"continue, {run_again()}."
                    )
                raise
    except Exception as exc:
        post(notify, "failed", error=f"{type(exc).__name__}: {exc}", **details)
        raise
    history = callback.full_history()
    done = len(history.epoch)
    post(
        notify,
        "deadline" if callback.stopped_for_deadline else "finished",
        epochs_done=done,
        metrics={k: v[-1] for k, v in history.history.items() if v},
        **details,
    )
    return history


def _train(
    keras: Any,
    model: Any,
    x: Any,
    y: Any,
    callback: Any,
    *,
    epochs: int,
    seed: int | None,
    run: str,
    global_batch: int,
    validation_data: Any,
    verbose: Any,
    callbacks: Sequence[Any],
    fit_kwargs: dict[str, Any],
) -> None:
    """Restore the run into *model*, then train its remaining batches in model.fit calls."""
    restored = callback.restore(model)
    epoch, skip = callback.resume_point(restored)
    if restored is not None and epoch >= epochs:
        if verbose != 0:
            say(
                f"{run} is finished: "
                + (
                    f"all {epochs} epochs are done"
                    if epoch == epochs
                    else f"it has {epoch} epochs, more than the {epochs} asked for"
                )
                + ". To train longer, raise epochs; to start it over, pass restart=True"
            )
        return
    callback.ckpt.prepare()  # an unwritable location fails now, not after an epoch
    progress = [_progress_bar(keras, epochs)] if verbose != 0 else []
    fit_args = dict(
        validation_data=validation_data,
        verbose=verbose,
        callbacks=[callback, *progress, *callbacks],
        **fit_kwargs,
    )
    if _is_arrays(x) and (y is None or _is_arrays(y)):
        saved_batch = callback.data.get("batch_size")
        if skip and saved_batch not in (None, global_batch):
            logger.warning(
                "colabsession: %s was saved with a global batch of %s, not %s: resuming at the "
                "start of epoch %d",
                run,
                saved_batch,
                global_batch,
                epoch + 1,
            )
            skip = 0
        stored = callback.data.get("seed")
        if stored is not None and seed is not None and stored != seed:
            logger.warning("colabsession: %s was started with seed %s; keeping it", run, stored)
        seed = int(
            stored
            if stored is not None
            else seed
            if seed is not None
            else int.from_bytes(os.urandom(4), "little")
        )
        callback.data = {"seed": seed, "batch_size": global_batch}
        count = _length(x)
        per_epoch = math.ceil(count / global_batch)
        callback.steps_per_epoch = per_epoch
        if skip and epoch < epochs:  # the rest of the epoch that was cut short
            callback.batch_offset = skip
            data = _batches(keras, x, y, seed, range(epoch, epoch + 1), global_batch, skip)
            model.fit(
                data,
                epochs=epoch + 1,
                initial_epoch=epoch,
                shuffle=False,
                steps_per_epoch=per_epoch - skip,
                **fit_args,
            )
            callback.batch_offset = 0
            epoch += 1
        if epoch < epochs and not callback.stopped_for_deadline:
            data = _batches(keras, x, y, seed, range(epoch, epochs), global_batch, 0)
            model.fit(
                data,
                epochs=epochs,
                initial_epoch=epoch,
                shuffle=False,
                steps_per_epoch=per_epoch,
                **fit_args,
            )
    else:
        if restored is not None:
            logger.warning(
                "colabsession: the input is not arrays, so its order is not cs.fit's to "
                "replay: resuming at the start of epoch %d",
                epoch + 1,
            )
        if hasattr(x, "element_spec"):  # a tf.data Dataset orders itself
            fit_args["shuffle"] = False
        if epoch < epochs:
            model.fit(
                x,
                y,
                batch_size=global_batch if y is not None or _is_arrays(x) else None,
                epochs=epochs,
                initial_epoch=epoch,
                **fit_args,
            )


def _progress_bar(keras: Any, epochs: int) -> Any:
    """Keras' progress bar, counting the run's epochs: the rest of an epoch cut short reads
    "Epoch 6/20", not "Epoch 6/6" (that model.fit call trains one epoch)."""

    class RunProgress(keras.callbacks.ProgbarLogger):  # type: ignore[misc]
        def set_params(self, params: dict[str, Any]) -> None:
            super().set_params({**params, "epochs": epochs})

    return RunProgress()


def _check_scope(model: Any) -> None:
    """With TensorFlow, a model built outside the strategy's scope trains on one device only."""
    from . import _strategy

    chosen = _strategy.last_strategy  # None unless cs.strategy() chose a real one
    if chosen is None or getattr(model, "_distribute_strategy", chosen) is chosen:
        return
    raise ConfigError(
        "the model was built outside the scope of the strategy from cs.strategy(): build and "
        "compile it inside `with strategy.scope():`, then call cs.fit"
    )


def _is_arrays(data: Any) -> bool:
    if data is None:
        return False
    if isinstance(data, dict):
        return bool(data) and all(_is_arrays(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return bool(data) and all(_is_arrays(v) for v in data)
    return (
        hasattr(data, "shape")
        and hasattr(data, "__getitem__")
        and hasattr(data, "dtype")
        and (type(data).__module__.startswith("numpy"))
    )


def _length(data: Any) -> int:
    if isinstance(data, dict):
        return _length(next(iter(data.values())))
    if isinstance(data, (list, tuple)):
        return _length(data[0])
    return int(data.shape[0])


def _take(data: Any, index: Any) -> Any:
    if data is None:
        return None
    if isinstance(data, dict):
        return {k: _take(v, index) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_take(v, index) for v in data)
    return data[index]


def _orders(count: int, seed: int, epochs: range) -> Iterator[Any]:
    import numpy as np

    for epoch in epochs:
        yield np.random.default_rng([seed, epoch]).permutation(count)


def _batches(keras: Any, x: Any, y: Any, seed: int, epochs: range, batch: int, skip: int) -> Any:
    """Every batch of *epochs* in the order drawn from (seed, epoch), the first *skip* batches of
    the first epoch left out: a tf.data pipeline on TensorFlow, a generator elsewhere."""
    import numpy as np

    count = _length(x)
    orders = np.stack(list(_orders(count, seed, epochs)))
    if skip:
        orders = orders[:, skip * batch :]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        xs = tf.nest.map_structure(tf.convert_to_tensor, x)
        ys = None if y is None else tf.nest.map_structure(tf.convert_to_tensor, y)

        def gather(index: Any) -> Any:
            take = lambda a: tf.gather(a, index)  # noqa: E731
            bx = tf.nest.map_structure(take, xs)
            return bx if ys is None else (bx, tf.nest.map_structure(take, ys))

        return (
            tf.data.Dataset.from_tensor_slices(orders)
            .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch))
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    def generate() -> Iterator[Any]:
        for order in orders:
            for start in range(0, len(order), batch):
                index = order[start : start + batch]
                yield _take(x, index) if y is None else (_take(x, index), _take(y, index))

    return generate()
