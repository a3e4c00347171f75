"""The classic Colab speed test, done right: the same work timed on the CPU and each GPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colabsession._core.optional import require


@dataclass(frozen=True)
class BenchmarkResult:
    """Median seconds per run on one device."""

    device: str
    conv_seconds: float
    matmul_seconds: float
    matmul_size: int

    @property
    def matmul_tflops(self) -> float:
        return 2 * self.matmul_size**3 / self.matmul_seconds / 1e12


@dataclass(frozen=True)
class BenchmarkReport:
    """What :func:`benchmark` measured: one result per device, the CPU's first, and a note
    on what it could not measure (a TPU); printing it prints :meth:`table`.

    >>> report = cs.benchmark()  # doctest: +SKIP
    >>> conv, matmul = report.speedup("GPU:0")  # doctest: +SKIP
    """

    results: tuple[BenchmarkResult, ...]
    note: str | None = None

    def speedup(self, device: str) -> tuple[float, float]:
        """(convolution, matmul) speedup of *device* over the CPU."""
        cpu, other = self._get("CPU:0"), self._get(device)
        return cpu.conv_seconds / other.conv_seconds, cpu.matmul_seconds / other.matmul_seconds

    def _get(self, device: str) -> BenchmarkResult:
        return next(r for r in self.results if r.device == device)

    def table(self) -> str:
        """The results as a table: seconds per run, matmul TFLOP/s and speedups."""
        lines = [
            f"{'device':<8} {'conv (s)':>10} {'matmul (s)':>11} {'TFLOP/s':>8} {'speedup':>14}"
        ]
        for r in self.results:
            conv, mm = self.speedup(r.device)
            lines.append(
                f"{r.device:<8} {r.conv_seconds:>10.4f} {r.matmul_seconds:>11.4f} "
                f"{r.matmul_tflops:>8.2f} {f'{conv:.1f}x / {mm:.1f}x':>14}"
            )
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def benchmark(
    *, repeats: int = 5, image_batch: int = 100, image_size: int = 100, matmul_size: int = 2048
) -> BenchmarkReport:
    """Time a convolution (32 filters of 7x7x3 over a batch of 100 images of 100x100x3) and a
    square matmul on the CPU and on each GPU TensorFlow sees, after a warm-up run, and report
    the median seconds and the speedup over the CPU. Needs TensorFlow.

    >>> print(cs.benchmark())  # doctest: +SKIP
    device     conv (s)  matmul (s)  TFLOP/s        speedup
    CPU:0        2.8140      0.4102     0.04    1.0x / 1.0x
    GPU:0        0.0541      0.0031     5.61  52.0x / 132.3x
    """
    tf = require("tensorflow", extra="tensorflow", purpose="cs.benchmark()")
    images = tf.random.uniform((image_batch, image_size, image_size, 3), seed=1)
    filters = tf.random.uniform((7, 7, 3, 32), seed=2)
    matrix = tf.random.uniform((matmul_size, matmul_size), seed=3)

    devices = ["CPU:0"] + [f"GPU:{i}" for i in range(len(tf.config.list_logical_devices("GPU")))]
    results = tuple(
        BenchmarkResult(
            device, *_time_on(tf, device, images, filters, matrix, repeats), matmul_size
        )
        for device in devices
    )
    note = None
    if tf.config.list_logical_devices("TPU") or _has_tpu():
        note = "a TPU is attached: this TensorFlow benchmark measures the CPU and GPUs only"
    return BenchmarkReport(results, note)


def _time_on(
    tf: Any, device: str, images: Any, filters: Any, matrix: Any, repeats: int
) -> tuple[float, float]:
    with tf.device(device):
        x, k, m = tf.identity(images), tf.identity(filters), tf.identity(matrix)  # copy over once
        conv = _median(
            lambda: tf.reduce_sum(tf.nn.conv2d(x, k, strides=1, padding="SAME")), repeats
        )
        matmul = _median(lambda: tf.reduce_sum(tf.linalg.matmul(m, m)), repeats)
    return conv, matmul


def _median(work: Callable[[], Any], repeats: int) -> float:
    work().numpy()  # warm-up: kernel selection, memory pools, autotuning
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        work().numpy()  # .numpy() waits for the device to finish
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _has_tpu() -> bool:
    from colabsession._runtime.probe import _tpu

    try:
        return _tpu() is not None
    except OSError:
        return False
