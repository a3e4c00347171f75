"""The tf.distribute strategy, the Keras distribution and the precision policy that suit the
accelerator this runtime has."""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from colabsession._core.errors import ConfigError
from colabsession._core.optional import require
from colabsession._runtime.precision import POLICIES, Policy, Precision
from colabsession._runtime.probe import HardwareReport, probe

logger = logging.getLogger("colabsession")

StrategyKind = Literal["tpu", "tpu-node", "mirrored", "one-device", "default"]
last_strategy: Any = None  # what cs.strategy() returned, for cs.fit's scope check


def choose_strategy(report: HardwareReport) -> StrategyKind:
    """Which strategy suits *report*: a TPU VM, the legacy TPU node, two or more GPUs, one GPU,
    or nothing special."""
    if report.tpu is not None:
        return "tpu" if report.tpu.mode == "vm" else "tpu-node"
    if len(report.gpus) >= 2:
        return "mirrored"
    if len(report.gpus) == 1:
        return "one-device"
    return "default"


def strategy(report: HardwareReport | None = None) -> Any:
    """The tf.distribute strategy for this runtime's accelerators.

    Colab TPU VM -> ``TPUStrategy`` over ``TPUClusterResolver(tpu="local")`` (the argument-less
    form fails there); legacy ``COLAB_TPU_ADDR`` -> ``TPUStrategy`` over its gRPC address; two or
    more GPUs -> ``MirroredStrategy``; one GPU -> ``OneDeviceStrategy``; else the default.

    Build and compile the model inside its scope::

        strategy = cs.strategy()
        with strategy.scope():
            model = build_model()
            model.compile(...)
    """
    global last_strategy
    chosen = _make_strategy(report)
    default = type(chosen).__name__ == "_DefaultDistributionStrategy"
    last_strategy = None if default else chosen
    return chosen


def _make_strategy(report: HardwareReport | None) -> Any:
    tf = require("tensorflow", extra="tensorflow", purpose="cs.strategy()")
    report = report or probe()
    kind = choose_strategy(report)
    if kind in ("tpu", "tpu-node"):
        assert report.tpu is not None
        target = "local" if kind == "tpu" else report.tpu.address
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=target)
        if kind == "tpu-node":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    visible = len(tf.config.list_logical_devices("GPU"))
    if kind in ("mirrored", "one-device") and visible < len(report.gpus):
        logger.warning(
            "colabsession: %d GPU(s) attached but TensorFlow sees %d: check that this "
            "TensorFlow build supports the CUDA driver (%s)",
            len(report.gpus),
            visible,
            report.gpus[0].cuda_version,
        )
        kind = "mirrored" if visible >= 2 else "one-device" if visible == 1 else "default"
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "one-device":
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()


def choose_precision(report: HardwareReport, *, bfloat16: bool = False) -> Policy:
    """``mixed_bfloat16`` on TPUs (and on GPUs of compute capability 8.0 or more when
    *bfloat16*), ``mixed_float16`` on GPUs of 7.0 or more, else ``float32``."""
    if report.tpu is not None:
        return "mixed_bfloat16"
    capabilities = [g.capability for g in report.gpus if g.capability is not None]
    if not capabilities:
        return "float32"
    weakest = min(capabilities)
    if bfloat16 and weakest >= (8, 0):
        return "mixed_bfloat16"
    return "mixed_float16" if weakest >= (7, 0) else "float32"


def precision(
    policy: Policy | None = None, *, bfloat16: bool = False, report: HardwareReport | None = None
) -> Precision:
    """Pick and apply the Keras mixed-precision policy for this runtime; returns the
    :class:`Precision` chosen (its ``policy`` the name, its ``why`` the reason).

    Call it before building the model. Mixed float16 pays off on tensor cores (compute
    capability 7.0+: T4, V100, A100, L4); bfloat16 needs 8.0+ on GPUs (``bfloat16=True`` asks for
    it there) and is native on TPUs.

    >>> cs.precision().policy                            # doctest: +SKIP
    'mixed_float16'
    """
    keras = require("keras", extra="tensorflow", purpose="cs.precision()")
    if policy is not None and policy not in POLICIES:
        raise ConfigError(
            f"unknown precision policy {policy!r}: use float32, mixed_float16 or mixed_bfloat16",
            name="policy",
        )
    if policy is not None:
        chosen = Precision(policy, "asked for")
    else:
        chosen = _chosen(report or probe(), bfloat16=bfloat16)
    keras.mixed_precision.set_global_policy(chosen.policy)
    return chosen


def _chosen(report: HardwareReport, *, bfloat16: bool) -> Precision:
    """:func:`choose_precision` with its reason."""
    name = choose_precision(report, bfloat16=bfloat16)
    if report.tpu is not None:
        return Precision(name, "a TPU: bfloat16 is native")
    gpus = [g for g in report.gpus if g.capability is not None]
    if not report.gpus:
        return Precision(name, "no GPU: float32")
    if not gpus:
        return Precision(name, "no GPU whose compute capability is known: float32")
    weakest = min(gpus, key=lambda g: g.capability or (0, 0))
    return Precision(name, f"{weakest.name} (compute capability {weakest.compute_capability})")


def distribution() -> Any:
    """For Keras 3 on JAX (Colab's TPU runtimes ship JAX, not TensorFlow): data parallelism
    over every device, set as the global ``keras.distribution``. Returns it."""
    keras = require("keras", extra="tensorflow", purpose="cs.distribution()")
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(
            f"cs.distribution() is for the JAX backend, and Keras runs on {backend}: use "
            "cs.strategy() with TensorFlow, or set KERAS_BACKEND=jax before importing keras"
        )
    devices = keras.distribution.list_devices()
    setting = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(setting)
    logger.info(
        "colabsession: data parallel over %d devices (%s)",
        len(devices),
        os.environ.get("KERAS_BACKEND", backend),
    )
    return setting
