"""``cs.fit``: Keras' ``model.fit`` that survives Colab, resuming at the exact batch."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from colabsession._core.deprecation import warn_renamed
from colabsession._core.errors import ConfigError
from colabsession._core.notify import Notify, webhook_url
from colabsession._core.notify import notify as post
from colabsession._core.optional import require
from colabsession._core.say import say
from colabsession._runtime.runtime import run_again
from colabsession._storage.checkpointer import Checkpointer, RunLike, split_options
from colabsession._training.finish import release_when_safe

logger = logging.getLogger("colabsession")


def fit(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    run: RunLike | Checkpointer,
    epochs: int,
    batch_size: int | None = None,
    validation_split: float = 0.0,
    validation_data: Any = None,
    seed: int | None = None,
    callbacks: Sequence[Any] = (),
    notify: Notify = None,
    verbose: Any = "auto",
    restart: bool = False,
    release_when_done: bool = False,
    **kwargs: Any,
) -> Any:
    """Train *model* like ``model.fit``, checkpointing the *run* and resuming it when the same
    cell runs again after a disconnect.

    *run* is a run name (stored at ``drive:checkpoints/<run>``) or a location, as for
    ``cs.Checkpointer``, or a Checkpointer made beforehand. Keyword arguments that are
    Checkpointer's (``every``, ``every_steps``, ``keep_last``, ``keep_best``, ``clock``,
    ``takeover``, ...) configure the run's Checkpointer, with its defaults (save every 10 min,
    keep the last 3); any other goes to ``model.fit``.

    With arrays as *x* and *y*, cs.fit draws each epoch's order from (*seed*, epoch) and a
    resumed run skips the batches already done, so a run killed at any step ends with the same
    weights and the same History, bit for bit, as an uninterrupted one (same machine,
    deterministic ops). Without a *seed* one is drawn and kept in the checkpoint. Other inputs
    (a tf.data Dataset, a generator) order themselves: those runs are saved at epoch ends only
    and resume after the last saved epoch, as with cs.keras.SessionCheckpoint.

    *batch_size* is the global batch, as in ``model.fit``: under a strategy or distribution over
    N devices each gets batch_size / N (pass ``batch_size=64 * N`` to keep 64 per device). A run
    keeps the batch size it was started with. *validation_split* holds out the last fraction of
    the arrays, taken before any shuffling, as ``model.fit`` does. Before the session deadline
    cs.fit saves, stops, and says how to continue. Returns a keras History with every epoch of
    every session of the run; a run that already has all its *epochs* returns it at once.
    *restart* starts the run over (its earlier checkpoints and history are set aside, never
    deleted); ``takeover=True`` takes the run from another notebook whose lease has not expired.
    *notify* sends a message when the run finishes, fails or stops for the deadline: a webhook's
    URL (Slack, Discord, ntfy or any JSON receiver), True for ``COLABSESSION_WEBHOOK`` from the
    environment or the notebook's secrets, None for the environment variable only, False never.
    *release_when_done*: when every epoch is done and the last checkpoint is confirmed at the
    location (on Drive as Drive itself confirms it), release the Colab runtime
    (``google.colab.runtime.unassign()``), which stops spending compute units; never before
    the run is safe, and never after a deadline stop (the run is not done).

    >>> history = cs.fit(model, x, y, run="digits-cnn", epochs=50,  # doctest: +SKIP
    ...                  batch_size=64, seed=0)
    """
    keras = require("keras", extra="tensorflow", purpose="cs.fit()")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive whole number, not {epochs!r}")
    from colabsession._training.keras import SessionCheckpoint

    # Read now, not when the run ends: a secret store may ask the user to grant access.
    notify = webhook_url(notify) or False

    label = run if isinstance(run, str) else None
    if "location" in kwargs:  # the old way: run= named it, location= put it elsewhere
        warn_renamed("cs.fit(location=...)", "run= (a run name or a location)")
        run = kwargs.pop("location")
    options, fit_kwargs = split_options(kwargs)
    if fit_kwargs.keys() & {"initial_epoch", "shuffle", "steps_per_epoch", "sample_weight"}:
        bad = sorted(
            fit_kwargs.keys() & {"initial_epoch", "shuffle", "steps_per_epoch", "sample_weight"}
        )
        raise ConfigError(
            f"cs.fit sets {', '.join(bad)} itself to resume exactly: leave them out (put sample "
            "weights in a tf.data Dataset, or use model.fit with cs.keras.SessionCheckpoint)"
        )
    _check_scope(model)
    arrays = _is_arrays(x) and (y is None or _is_arrays(y))
    if validation_split:
        x, y, validation_data = _split(x, y, validation_split, validation_data, arrays)
    callback = SessionCheckpoint(run, verbose=verbose != 0, restart=restart, **options)
    name = label or str(callback.location)
    callback.total_epochs = epochs
    callback.exact = arrays  # cs.fit orders arrays itself: their runs resume inside an epoch
    callback.close_on_train_end = False  # cs.fit may call model.fit twice; it closes at the end
    global_batch = batch_size or 32  # global, as model.fit's, under any strategy
    details = {"run": name, "location": str(callback.location), "epochs": epochs}
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
                    run=name,
                    global_batch=global_batch,
                    replicas=_replicas(keras, model),
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
    if release_when_done and not callback.stopped_for_deadline:
        release_when_safe(callback.ckpt)  # closed by the with: its last copy is made
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
    replicas: int,
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
    if callback.exact:
        saved_batch = callback.data.get("batch_size")
        if restored is not None and saved_batch not in (None, global_batch):
            asked, global_batch = global_batch, int(saved_batch)
            logger.warning(
                "colabsession: %s was started with a global batch of %s (%s); it keeps it, so "
                "that its epochs and steps stay as they were: pass batch_size=%s, or train "
                "with another batch size under a new run name (or restart=True)",
                run,
                saved_batch,
                "batch_size was per replica then"
                if saved_batch == asked * replicas
                else f"not {asked}",
                saved_batch,
            )
        fit_args.setdefault("validation_batch_size", global_batch)  # as model.fit's default
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
        callback.samples_per_epoch = count
        if skip and epoch < epochs:  # the rest of the epoch that was cut short
            callback.batch_offset = skip
            sample = slice(0, 1)
            callback.build_metrics(model, _take(x, sample), _take(y, sample))
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
                "replay: the run is saved at epoch ends only, and resumes at epoch %d",
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


def _split(
    x: Any, y: Any, fraction: float, validation_data: Any, arrays: bool
) -> tuple[Any, Any, Any]:
    """(x, y, validation data) with the last *fraction* of the arrays held out, before any
    shuffling, as model.fit's validation_split does (and, like it, only when no
    validation_data is given)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"validation_split must be a fraction between 0 and 1, not {fraction!r}")
    if validation_data is not None:
        return x, y, validation_data
    if not arrays:
        raise ConfigError(
            "validation_split needs NumPy arrays as x (and y): it holds out their last "
            "fraction. With a tf.data Dataset or a generator, hold data out yourself and pass "
            "it as validation_data="
        )
    count = _length(x)
    split_at = math.floor(count * (1.0 - fraction))
    if split_at in (0, count):
        raise ConfigError(
            f"validation_split={fraction} leaves no training or no validation data out of "
            f"{count} samples: use more data or another fraction"
        )
    train, held = slice(0, split_at), slice(split_at, count)
    return (
        _take(x, train),
        _take(y, train),
        (_take(x, held),) if y is None else (_take(x, held), _take(y, held)),
    )


def _replicas(keras: Any, model: Any) -> int:
    """The devices a batch is split over: the tf.distribute strategy's replicas, or the devices
    of the Keras distribution (JAX)."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None:
        return int(getattr(strategy, "num_replicas_in_sync", 1))
    mesh = getattr(keras.distribution.distribution(), "device_mesh", None)
    return int(mesh.devices.size) if mesh is not None else 1


def _progress_bar(keras: Any, epochs: int) -> Any:
    """Keras' progress bar, counting the run's epochs: the rest of an epoch cut short reads
    "Epoch 6/20", not "Epoch 6/6" (that model.fit call trains one epoch)."""

    class RunProgress(keras.callbacks.ProgbarLogger):  # type: ignore[misc]
        def set_params(self, params: dict[str, Any]) -> None:
            super().set_params({**params, "epochs": epochs})

    return RunProgress()


def _check_scope(model: Any) -> None:
    """With TensorFlow, a model built outside the strategy's scope trains on one device only."""
    from colabsession._runtime import strategy as _strategy

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
