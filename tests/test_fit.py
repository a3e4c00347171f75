"""cs.fit, the Keras callback, strategies and precision, with real TensorFlow on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pytest_mock import MockerFixture

import colabsession as cs
from colabsession._core.notify import TIMEOUT
from colabsession._core.optional import installed
from colabsession._runtime.probe import CPUInfo, GPUInfo, HardwareReport, OSInfo, TPUInfo
from colabsession._runtime.strategy import choose_precision, choose_strategy
from colabsession._storage.history import read_history

pytestmark = pytest.mark.tensorflow  # TensorFlow in-process: see isolation.py

WORKER = str(Path(__file__).with_name("fit_worker.py"))


def run_worker(
    location: Path, kill_after: int, out: Path, *extra: str, backend: str = "tensorflow"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "KERAS_BACKEND": backend}
    return subprocess.run(
        [sys.executable, WORKER, str(location), str(kill_after), str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_killed_mid_epoch_and_rerun_matches_an_uninterrupted_run(
    tmp_path: Path, backend: str
) -> None:
    """On TensorFlow, and on JAX as on Colab's TPU images (which have no TensorFlow)."""
    pytest.importorskip(backend)
    pytest.importorskip("keras")
    reference = run_worker(
        tmp_path / "uninterrupted", -1, tmp_path / "reference.npz", backend=backend
    )
    assert reference.returncode == 0, reference.stderr
    # 10 batches per epoch: killed at the 14th batch, in the middle of the second epoch.
    killed = run_worker(tmp_path / "killed", 14, tmp_path / "never.npz", backend=backend)
    assert killed.returncode == -9
    resumed = run_worker(tmp_path / "killed", -1, tmp_path / "resumed.npz", backend=backend)
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs [0, 1, 2, 3]" in resumed.stdout  # the History of both sessions, once each
    with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])  # bit for bit
    # The epoch cut short reports what the uninterrupted one does, though its last batch is
    # partial (150 rows in 16s): the metrics' totals go on from the checkpoint, not a mean of
    # the two sessions' means.
    expected = json.loads((tmp_path / "reference.npz.json").read_text())
    got = json.loads((tmp_path / "resumed.npz.json").read_text())
    assert got == expected
    records = read_history(tmp_path / "killed")
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps))  # no duplicates after the resume
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_stop_button_saves_the_exact_step(tmp_path: Path, backend: str) -> None:
    pytest.importorskip(backend)
    pytest.importorskip("keras")
    reference = run_worker(
        tmp_path / "uninterrupted", -1, tmp_path / "reference.npz", backend=backend
    )
    assert reference.returncode == 0, reference.stderr
    # Interrupted right after the 17th step, before any callback ran: only the interrupt saves.
    stopped = run_worker(
        tmp_path / "stopped", 17, tmp_path / "never.npz", "--interrupt", backend=backend
    )
    assert stopped.returncode == 130, stopped.stderr
    if backend == "jax":  # the interrupted step held the donated variables: nothing to save
        assert "this step is not saved" in stopped.stderr
        assert cs.Checkpointer(tmp_path / "stopped").latest_step() is None
    else:
        assert cs.Checkpointer(tmp_path / "stopped").latest_step() == 17
    resumed = run_worker(
        tmp_path / "stopped", -1, tmp_path / "resumed.npz", "--interrupt", backend=backend
    )
    assert resumed.returncode == 0, resumed.stderr
    with np.load(tmp_path / "reference.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


# In-process tests ------------------------------------------------------------------------------


@pytest.fixture
def keras() -> Any:
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras.utils.set_random_seed(0)
    return keras


def small_model(keras: Any) -> Any:
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    return model


def data() -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.random((64, 4), dtype=np.float32)
    return x, x.sum(axis=1, keepdims=True)


def test_cs_keras_resolves(keras: Any) -> None:
    assert cs.keras.SessionCheckpoint is not None


def test_fit_returns_history_and_resumes_finished_run(keras: Any, tmp_path: Path) -> None:
    x, y = data()
    h = cs.fit(
        small_model(keras),
        x,
        y,
        run=tmp_path / "r",
        epochs=2,
        batch_size=16,
        seed=0,
        verbose=0,
    )
    assert h.epoch == [0, 1]
    assert len(h.history["loss"]) == 2
    model = small_model(keras)
    again = cs.fit(model, x, y, run=tmp_path / "r", epochs=3, batch_size=16, seed=0, verbose=0)
    assert again.epoch == [0, 1, 2]  # one more epoch, the first two from the earlier session


def _raise_at(keras: Any, batch: int, error: BaseException) -> Any:
    """A callback that raises *error* at the *batch*-th batch: ``KeyboardInterrupt()`` as the
    stop button, ``RuntimeError("killed")`` as a kill would end the fit there."""

    class Fail(keras.callbacks.Callback):  # type: ignore[misc]
        seen = 0

        def on_train_batch_end(self, index: int, logs: Any = None) -> None:
            Fail.seen += 1
            if Fail.seen == batch:
                raise error

    return Fail()


def _stopped_at(keras: Any, batch: int, x: Any, y: Any, model: Any = None, **args: Any) -> None:
    """``cs.fit(model, x, y, **args)`` stopped at its *batch*-th batch as by the stop button;
    *model* is a fresh ``small_model`` unless given.

    Example: ``_stopped_at(keras, 6, x, y, run=tmp_path, epochs=2, verbose=0)``."""
    model = small_model(keras) if model is None else model
    with pytest.raises(KeyboardInterrupt):
        cs.fit(model, x, y, callbacks=[_raise_at(keras, batch, KeyboardInterrupt())], **args)


def test_resume_output_reads_as_the_run_not_the_call(
    keras: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = data()  # 64 rows, batch 16: 4 batches an epoch
    args: dict[str, Any] = {
        "run": tmp_path / "r",
        "epochs": 3,
        "batch_size": 16,
        "seed": 0,
        "verbose": 2,
    }
    _stopped_at(keras, 6, x, y, **args)
    assert "To continue, run the same command again" in capsys.readouterr().out
    cs.fit(small_model(keras), x, y, **args)
    out = capsys.readouterr().out
    assert "in epoch 2, after batch 2 of 4" in out
    assert "Epoch 2/3" in out  # the rest of epoch 2 of 3, not "Epoch 2/2"
    assert "Epoch 2/2" not in out
    assert "epoch 2/3 took" in out
    assert " took 0s" not in out  # milliseconds, not a rounded-down zero
    assert cs.Checkpointer(tmp_path / "r").checkpoints()[-1].metrics["loss"] > 0  # for ckpt list

    history = cs.fit(small_model(keras), x, y, **args)
    out = capsys.readouterr().out
    assert "is finished: all 3 epochs are done" in out
    assert "Epoch" not in out  # no training, and no "resumed" line either
    assert "resumed" not in out
    assert history.epoch == [0, 1, 2]

    again = cs.fit(small_model(keras), x, y, restart=True, **{**args, "epochs": 1})
    assert again.epoch == [0]
    names = os.listdir(tmp_path / "r")
    assert any(n.startswith("parked-ckpt-") for n in names)  # set aside, not deleted
    assert any(n.startswith("parked-history.") for n in names)


def test_callback_with_plain_model_fit(keras: Any, tmp_path: Path) -> None:
    x, y = data()
    model = small_model(keras)
    callback = cs.keras.SessionCheckpoint(
        tmp_path / "plain", every=None, every_steps=2, verbose=False
    )
    model.fit(x, y, epochs=2, batch_size=16, callbacks=[callback], verbose=0)
    assert cs.Checkpointer(tmp_path / "plain").latest_step() == 8
    fresh = small_model(keras)
    callback = cs.keras.SessionCheckpoint(tmp_path / "plain", every=None, verbose=False)
    history = fresh.fit(x, y, epochs=3, batch_size=16, callbacks=[callback], verbose=0)
    assert history.epoch == [2]  # resumed after the two saved epochs
    for a, b in zip(model.variables[:2], fresh.variables[:2], strict=True):
        assert a.shape == b.shape
    epochs = cs.history(tmp_path / "plain").column("epoch")
    # Counted from 1, as Keras prints them; mid-epoch saves add rows of running means, no epoch.
    assert [e for e in epochs if e is not None] == [1, 2, 3]


def test_a_resumed_epoch_of_an_older_checkpoint_averages_by_sample(
    keras: Any, tmp_path: Path
) -> None:
    """A checkpoint saved without the metrics' totals (by an earlier colabsession) has only the
    running means: the epoch cut short weighs them by samples, as Keras' Mean does, so its loss
    is the uninterrupted one's though the last batch is partial (60 rows: 16, 16, 16, 12)."""
    x, y = data()
    x, y = x[:60], y[:60]
    args: dict[str, Any] = {"epochs": 2, "batch_size": 16, "seed": 0, "verbose": 0}
    keras.utils.set_random_seed(0)
    reference = cs.fit(small_model(keras), x, y, run=tmp_path / "ref", **args)
    keras.utils.set_random_seed(0)
    _stopped_at(keras, 6, x, y, run=tmp_path / "new", **args)
    saved = cs.Checkpointer(tmp_path / "new").restore()
    assert saved is not None
    assert saved.step == 6
    older = {k: v for k, v in saved.state.items() if k != "metrics"}
    with cs.Checkpointer(tmp_path / "old", every=None) as ckpt:
        ckpt.save(saved.step, older, metrics=saved.metrics)
    resumed = cs.fit(small_model(keras), x, y, run=tmp_path / "old", **args)
    assert resumed.epoch == [1]  # (the history of epoch 0 stayed in "new")
    assert resumed.history["loss"][0] == pytest.approx(reference.history["loss"][1], rel=1e-6)


def test_plain_fit_saves_epoch_ends_only_and_trains_no_batch_twice(
    keras: Any, tmp_path: Path
) -> None:
    """model.fit decides the data order: a checkpoint from inside an epoch cannot resume it
    without training that epoch's first batches again (issue 21 item 4)."""
    x, y = data()  # 4 batches of 16 an epoch
    model = small_model(keras)
    callback = cs.keras.SessionCheckpoint(tmp_path, every=None, every_steps=1, verbose=False)
    killed = _raise_at(keras, 6, RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback, killed])
    callback.ckpt.close()  # what the end of the process does
    assert cs.Checkpointer(tmp_path).steps() == [4]  # the interval is checked at epoch ends
    fresh = small_model(keras)
    callback = cs.keras.SessionCheckpoint(tmp_path, every=None, every_steps=1, verbose=False)
    history = fresh.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
    assert history.epoch == [1, 2]
    assert int(fresh.optimizer.iterations.numpy()) == 12  # 3 epochs of 4 batches, none twice
    assert cs.Checkpointer(tmp_path, keep_last=3).steps() == [4, 8, 12]
    assert [r["epoch"] for r in read_history(tmp_path) if "epoch" in r] == [0, 1, 2]


def test_plain_fit_stops_at_the_last_epoch_end_before_the_deadline(
    keras: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each batch takes 10 s of an injected clock, an epoch 40 s: after the second epoch a
    third would end inside the 60 s margin, so the run saves there and stops."""
    now = [0.0]

    class Tick(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, index: int, logs: Any = None) -> None:
            now[0] += 10.0

    clock = cs.SessionClock(started=0, max_session=170, _now=lambda: now[0])
    callback = cs.keras.SessionCheckpoint(
        tmp_path, every=None, clock=clock, _monotonic=lambda: now[0], verbose=True
    )
    x, y = data()
    history = small_model(keras).fit(
        x, y, epochs=5, batch_size=16, verbose=0, callbacks=[Tick(), callback]
    )
    assert history.epoch == [0, 1]
    assert callback.stopped_for_deadline
    assert cs.Checkpointer(tmp_path).steps() == [8]  # the end of epoch 2, nothing inside one
    assert "stopped after epoch 2 before the session deadline" in capsys.readouterr().out


def test_plain_fit_stopped_inside_an_epoch_saves_nothing_there(
    keras: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGTERM (or an unforeseen deadline) inside an epoch stops without a save: the run
    resumes after its last saved epoch."""
    callback = cs.keras.SessionCheckpoint(tmp_path, every=None, every_steps=4, verbose=True)

    class Term(keras.callbacks.Callback):  # type: ignore[misc]
        seen = 0

        def on_train_batch_end(self, index: int, logs: Any = None) -> None:
            Term.seen += 1
            if Term.seen == 6:
                callback.ckpt.request_stop("SIGTERM received")

    x, y = data()
    history = small_model(keras).fit(
        x, y, epochs=3, batch_size=16, verbose=0, callbacks=[Term(), callback]
    )
    assert history.epoch == [0, 1]  # Keras ends the epoch it was in
    assert cs.Checkpointer(tmp_path).steps() == [4]
    assert [r["epoch"] for r in read_history(tmp_path) if "epoch" in r] == [0]
    assert "resumes from its last checkpoint (step 4)" in capsys.readouterr().out


def test_plain_fit_refuses_a_checkpoint_from_inside_an_epoch(keras: Any, tmp_path: Path) -> None:
    """cs.fit saved inside an epoch; model.fit cannot go on from there without training
    batches twice, and says what to do."""
    x, y = data()
    _stopped_at(keras, 6, x, y, run=tmp_path, epochs=2, batch_size=16, verbose=0)
    model = small_model(keras)
    before = [v.numpy().copy() for v in model.variables]
    callback = cs.keras.SessionCheckpoint(tmp_path, verbose=False)
    with pytest.raises(
        cs.CheckpointError, match=r"middle of epoch 2.*continue this run with cs\.fit"
    ):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    for a, b in zip(before, model.variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())  # nothing was loaded
    assert callback.ckpt.closed


def test_a_run_of_another_api_is_a_clear_error(keras: Any, tmp_path: Path) -> None:
    with cs.Checkpointer(tmp_path, every=None) as ckpt:
        ckpt.save(3, {"params": {"w": np.ones(3)}, "step": 3})
    x, y = data()
    with pytest.raises(cs.CheckpointError, match=r"another API.*restart=True"):
        cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, verbose=0)
    callback = cs.keras.SessionCheckpoint(tmp_path, verbose=False)
    with pytest.raises(cs.CheckpointError, match="another API"):
        callback.restore(small_model(keras))
    callback.ckpt.close()
    history = cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, restart=True, verbose=0)
    assert history.epoch == [0]


def test_validation_split_holds_out_the_last_rows(keras: Any, tmp_path: Path) -> None:
    x, y = data()  # 64 rows: the last 16 validate, 48 train in 3 batches of 16
    model = small_model(keras)
    history = cs.fit(
        model,
        x,
        y,
        run=tmp_path,
        epochs=2,
        batch_size=16,
        seed=0,
        validation_split=0.25,
        verbose=0,
    )
    assert int(model.optimizer.iterations.numpy()) == 6
    held_out = model.evaluate(x[48:], y[48:], batch_size=16, verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(held_out, rel=1e-6)


def test_validation_split_needs_arrays(keras: Any, tmp_path: Path) -> None:
    import tensorflow as tf

    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(cs.ConfigError, match="validation_data="):
        cs.fit(small_model(keras), dataset, run=tmp_path, epochs=1, validation_split=0.1)
    with pytest.raises(cs.ConfigError, match="between 0 and 1"):
        cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, validation_split=1.5)
    assert not (tmp_path / "history.jsonl").exists()  # refused before anything ran


def test_bfloat16_model_resumes(keras: Any, tmp_path: Path) -> None:
    """bfloat16 variables (and the float32 ones of mixed_bfloat16) come back as they were."""

    def build() -> Any:
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, dtype="mixed_bfloat16"),
                keras.layers.Dense(1, dtype="bfloat16"),
            ]
        )
        model.compile("adam", "mse")
        return model

    x, y = data()
    model = build()
    callback = cs.keras.SessionCheckpoint(tmp_path / "bf16", every=None, verbose=False)
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[callback], verbose=0)
    fresh = build()
    fresh.optimizer.build(fresh.trainable_variables)
    restored = cs.keras.SessionCheckpoint(tmp_path / "bf16", every=None, verbose=False)
    assert restored.restore(fresh) is not None
    assert "bfloat16" in {str(v.dtype) for v in fresh.variables}
    for a, b in zip(model.variables, fresh.variables, strict=True):
        assert str(a.dtype) == str(b.dtype)
        np.testing.assert_array_equal(
            np.asarray(a.numpy(), np.float32), np.asarray(b.numpy(), np.float32)
        )
    restored.ckpt.close()


def test_changed_model_is_a_clear_error(keras: Any, tmp_path: Path) -> None:
    x, y = data()
    cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, verbose=0)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    other.compile("adam", "mse")
    with pytest.raises(cs.CheckpointError, match="new run name"):
        cs.fit(other, x, y, run=tmp_path, epochs=2, verbose=0)


def test_deadline_saves_and_stops(
    keras: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = data()
    clock = cs.SessionClock(started=0, max_session=3600, _now=lambda: 3600 - 30.0)  # 30 s left
    history = cs.fit(
        small_model(keras),
        x,
        y,
        run=tmp_path,
        epochs=5,
        batch_size=16,
        clock=clock,
        every=None,
        verbose=1,
    )
    out = capsys.readouterr().out
    assert "run the same command again to continue" in out  # not in a notebook
    ckpt = cs.Checkpointer(tmp_path)
    assert ckpt.latest_step() == 1  # saved after the first batch, then stopped
    assert history.epoch in ([], [0])


def test_epoch_estimate_line(
    keras: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = data()
    cs.fit(small_model(keras), x, y, run=tmp_path, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert "epoch 1/2 took" in out
    assert "left in this session" in out


def test_fit_refuses_its_own_arguments(keras: Any, tmp_path: Path) -> None:
    x, y = data()
    with pytest.raises(cs.ConfigError, match="shuffle"):
        cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, shuffle=True)


def test_dataset_input_resumes_at_epoch_start(
    keras: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import tensorflow as tf

    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    cs.fit(small_model(keras), dataset, run=tmp_path, epochs=1, verbose=0)
    history = cs.fit(small_model(keras), dataset, run=tmp_path, epochs=2, verbose=0)
    assert history.epoch == [0, 1]
    assert "not arrays" in caplog.text


def test_mirrored_strategy_over_two_cpus(keras: Any, tmp_path: Path) -> None:
    import tensorflow as tf

    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPUs (configured in conftest before TF starts)")
    strategy = tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = small_model(keras)
    x, y = data()
    history = cs.fit(model, x, y, run=tmp_path, epochs=2, batch_size=8, seed=1, verbose=0)
    assert history.epoch == [0, 1]
    restored = cs.Checkpointer(tmp_path).restore()
    assert restored is not None
    # batch_size is the global batch, as in model.fit: 4 per replica, 64 rows in 8 steps.
    assert restored.state["data"]["batch_size"] == 8
    assert restored.state["steps_per_epoch"] == 8
    assert int(model.optimizer.iterations.numpy()) == 16

    # Stopped inside an epoch (the 3rd batch of the 2nd) and resumed under the strategy: the
    # optimizer is built in its scope, and the metrics' totals go back into the replicas.
    args: dict[str, Any] = {"run": tmp_path / "cut", "epochs": 2, "seed": 1}
    keras.utils.set_random_seed(0)  # the model of the first run
    with strategy.scope():
        model = small_model(keras)
    _stopped_at(keras, 11, x, y, model, batch_size=8, verbose=0, **args)
    with strategy.scope():
        model = small_model(keras)
    resumed = cs.fit(model, x, y, batch_size=8, verbose=0, **args)
    assert resumed.epoch == [0, 1]
    assert int(model.optimizer.iterations.numpy()) == 16
    np.testing.assert_allclose(resumed.history["loss"], history.history["loss"], rtol=1e-5)


def test_a_run_keeps_the_batch_size_it_started_with(
    keras: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a run started when batch_size meant per replica (16 stored for 8 over 2 replicas):
    it resumes with its stored global batch, exactly, and says so."""
    x, y = data()
    args: dict[str, Any] = {"run": tmp_path, "epochs": 2, "seed": 0, "verbose": 0}
    _stopped_at(keras, 2, x, y, batch_size=16, **args)
    model = small_model(keras)
    cs.fit(model, x, y, batch_size=8, **args)
    assert "global batch of 16" in caplog.text
    assert int(model.optimizer.iterations.numpy()) == 8  # 4 steps of 16 an epoch, none twice


def test_batch_size_is_global_under_a_jax_distribution(tmp_path: Path) -> None:
    """Keras on JAX with cs.distribution() over two (forced) host devices: batch_size is the
    global batch, as under a tf.distribute strategy and in model.fit."""
    pytest.importorskip("jax")
    if not installed("keras"):  # looked up only: Keras runs in the child
        pytest.skip("needs Keras")
    code = """if True:
        import sys
        import numpy as np, keras, colabsession as cs
        cs.distribution()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        x = np.random.default_rng(0).random((72, 4), dtype=np.float32)
        cs.fit(model, x, x.sum(1), run=sys.argv[1], epochs=2, batch_size=16,
               seed=0, verbose=0)
        print("steps", int(model.optimizer.iterations.numpy()))
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "KERAS_BACKEND": "jax",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["steps", "10"]  # 72 rows in 5 batches of 16, 2 epochs


def test_model_outside_strategy_scope(keras: Any, tmp_path: Path, mocker: MockerFixture) -> None:
    from colabsession._runtime import strategy as _strategy

    mocker.patch.object(_strategy, "last_strategy", object())
    x, y = data()
    with pytest.raises(cs.ConfigError, match=r"strategy\.scope\(\)"):
        cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, verbose=0)


def test_notify(keras: Any, tmp_path: Path, mocker: MockerFixture) -> None:
    post = mocker.patch("requests.post")
    post.return_value.status_code = 200
    x, y = data()
    cs.fit(
        small_model(keras),
        x,
        y,
        run=tmp_path,
        epochs=1,
        verbose=0,
        notify="https://hooks.example/secret",
    )
    payload = post.call_args.kwargs["json"]
    assert payload["event"] == "finished"
    assert payload["run"] == str(tmp_path)
    assert post.call_args.kwargs["timeout"] == TIMEOUT
    assert payload["text"].startswith(f"colabsession: run {tmp_path} finished")


def test_fit_takes_a_checkpointer_as_its_run(keras: Any, tmp_path: Path) -> None:
    x, y = data()
    mine = cs.Checkpointer(tmp_path, every=None, keep_last=1)
    history = cs.fit(small_model(keras), x, y, run=mine, epochs=2, batch_size=32, verbose=0)
    assert history.epoch == [0, 1]
    assert mine.closed  # closed at the end, as cs.fit's own
    assert mine.steps() == [4]  # its keep_last=1
    assert mine.save_on_interrupt is False  # cs.fit saves the exact batch at a Ctrl-C itself
    with pytest.raises(cs.ConfigError, match="Checkpointer and Checkpointer options"):
        cs.fit(small_model(keras), x, y, run=mine, epochs=2, keep_last=2)


def test_fit_location_is_a_deprecated_alias_of_run(keras: Any, tmp_path: Path) -> None:
    x, y = data()
    with pytest.warns(DeprecationWarning, match=r"cs\.fit\(location=\.\.\.\).*use run="):
        history = cs.fit(
            small_model(keras), x, y, run="label", location=tmp_path, epochs=1, verbose=0
        )
    assert history.epoch == [0]
    assert cs.Checkpointer(tmp_path).latest_step() == 2  # kept at the location, as before


def test_session_checkpoint_takes_run_a_checkpointer_or_its_options(
    keras: Any, tmp_path: Path
) -> None:
    with pytest.warns(DeprecationWarning, match=r"run_or_location=.*use run="):
        old = cs.keras.SessionCheckpoint(run_or_location=tmp_path / "a", keep_last=1)  # type: ignore[call-arg]
    assert (old.location.path, old.ckpt.keep_last) == (str(tmp_path / "a"), 1)
    assert old.ckpt.every == 600.0  # Checkpointer's default
    assert old.ckpt.save_on_interrupt is False
    old.ckpt.close()
    mine = cs.Checkpointer(tmp_path / "b", every=None)
    callback = cs.keras.SessionCheckpoint(mine, verbose=False)
    assert callback.ckpt is mine
    assert callback.clock is mine.clock
    x, y = data()
    small_model(keras).fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    assert mine.closed
    assert mine.steps() == [2]
    with pytest.raises(cs.CheckpointError, match="give the callback a new Checkpointer"):
        small_model(keras).fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_notify_failure_is_only_logged(
    caplog: pytest.LogCaptureFixture, mocker: MockerFixture
) -> None:
    import requests

    from colabsession._core.notify import notify

    mocker.patch("requests.post", side_effect=requests.ConnectionError("down"))
    notify("https://hooks.example/T0/B0/secret", "finished", run="x")
    assert "notification" in caplog.text
    assert "secret" not in caplog.text


# Choosing the strategy and the precision ---------------------------------------------------------


def report(gpus: Sequence[str] = (), tpu: TPUInfo | None = None) -> HardwareReport:
    return HardwareReport(
        os=OSInfo("Linux", "12", "6.1", "3.12.0", "CPython"),
        cpu=CPUInfo("CPU", 2, 2, None),
        ram=None,
        disk=None,
        drive_disk=None,
        gpus=tuple(GPUInfo(i, "GPU", compute_capability=c) for i, c in enumerate(gpus)),
        tpu=tpu,
        runtime=cs.runtime(),
    )


@pytest.mark.parametrize(
    ("hardware", "kind"),
    [
        (report(), "default"),
        (report(["7.5"]), "one-device"),
        (report(["8.0", "8.0"]), "mirrored"),
        (report(tpu=TPUInfo("vm", "v5e", 1)), "tpu"),
        (report(tpu=TPUInfo("node", address="grpc://10.0.0.2:8470")), "tpu-node"),
    ],
)
def test_choose_strategy(hardware: HardwareReport, kind: str) -> None:
    assert choose_strategy(hardware) == kind


@pytest.mark.parametrize(
    ("hardware", "bf16", "policy"),
    [
        (report(), False, "float32"),
        (report(["6.0"]), False, "float32"),  # P100: no tensor cores
        (report(["7.5"]), False, "mixed_float16"),  # T4
        (report(["7.5"]), True, "mixed_float16"),  # no bfloat16 before 8.0
        (report(["8.0"]), True, "mixed_bfloat16"),  # A100, when asked
        (report(["8.9"]), False, "mixed_float16"),  # L4
        (report(tpu=TPUInfo("vm", "v2/v3", 8)), False, "mixed_bfloat16"),
    ],
)
def test_choose_precision(hardware: HardwareReport, bf16: bool, policy: str) -> None:
    assert choose_precision(hardware, bfloat16=bf16) == policy


def test_strategy_and_precision_on_this_cpu(keras: Any) -> None:
    strategy = cs.strategy(report())
    assert strategy.num_replicas_in_sync == 1
    try:
        chosen = cs.precision(report=report(["7.5"]))
        assert isinstance(chosen, cs.Precision)
        assert chosen.policy == "mixed_float16"
        assert "7.5" in chosen.why
        assert chosen.device is None
        with pytest.warns(DeprecationWarning, match="policy"):
            assert chosen == "mixed_float16"  # the old string result still compares
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert cs.precision("float32").why == "asked for"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_tpu_vm_strategy_uses_the_local_resolver(keras: Any, mocker: MockerFixture) -> None:
    import tensorflow as tf

    from colabsession._runtime import strategy as _strategy

    # cs.strategy() remembers what it chose for cs.fit's scope check: a mock must not outlive
    # this test (a later cs.fit would take every model as built outside its scope).
    mocker.patch.object(_strategy, "last_strategy", None)
    resolver = mocker.patch.object(tf.distribute.cluster_resolver, "TPUClusterResolver")
    mocker.patch.object(tf.tpu.experimental, "initialize_tpu_system")
    tpu_strategy = mocker.patch.object(tf.distribute, "TPUStrategy")
    assert cs.strategy(report(tpu=TPUInfo("vm", "v5e", 1))) is tpu_strategy.return_value
    resolver.assert_called_once_with(tpu="local")


def test_distribution_needs_jax(keras: Any) -> None:
    with pytest.raises(cs.ConfigError, match="JAX backend"):
        cs.distribution()


def test_release_when_done_waits_for_a_safe_run(
    keras: Any, tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    runtime = types.ModuleType("google.colab.runtime")
    runtime.unassign = mocker.Mock()  # type: ignore[attr-defined]
    mocker.patch.dict(sys.modules, {"google.colab.runtime": runtime})
    x, y = data()
    # A folder on the VM itself: it goes with the runtime, which is kept.
    cs.fit(small_model(keras), x, y, run=tmp_path, epochs=1, verbose=0, release_when_done=True)
    runtime.unassign.assert_not_called()
    assert "not releasing the runtime" in capsys.readouterr().out
    # A location off the VM that received the last checkpoint: released.
    where = f"memory://fit-release/{tmp_path.name}"
    cs.fit(small_model(keras), x, y, run=where, epochs=1, verbose=0, release_when_done=True)
    runtime.unassign.assert_called_once_with()
