from __future__ import annotations

import sys

import pytest
from pytest_mock import MockerFixture

import colabsession as cs

pytestmark = pytest.mark.tensorflow  # TensorFlow in-process: see isolation.py


def test_without_tensorflow_says_which_extra(mocker: MockerFixture) -> None:
    mocker.patch.dict(sys.modules, {"tensorflow": None})
    with pytest.raises(cs.MissingDependencyError, match=r"colabsession\[tensorflow\]") as info:
        cs.benchmark()
    assert isinstance(info.value, ImportError)


def test_benchmark_on_cpu() -> None:
    pytest.importorskip("tensorflow")
    report = cs.benchmark(repeats=1, image_batch=2, image_size=16, matmul_size=64)
    (cpu,) = [r for r in report.results if r.device == "CPU:0"]
    assert cpu.conv_seconds > 0
    assert cpu.matmul_tflops > 0
    assert report.speedup("CPU:0") == (1.0, 1.0)
    assert "CPU:0" in report.table()


def test_probe_with_frameworks() -> None:
    pytest.importorskip("tensorflow")
    report = cs.probe(frameworks=True)
    assert report.frameworks is not None
    tf = report.frameworks["tensorflow"]
    assert tf.error is None
    assert "CPU:0" in tf.devices
