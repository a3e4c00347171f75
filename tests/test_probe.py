from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

import colabsession as cs
from colabsession._runtime import probe as _probe

T4 = "0, Tesla T4, 15360, 0, 15101, 550.54.15, 0, 44, 7.5\n"
A100 = "0, NVIDIA A100-SXM4-40GB, 40960, 3, 40523, 535.104.05, 0, 32, 8.0\n"
TWO_GPUS = (
    "0, Tesla V100-SXM2-16GB, 16384, 1024, 15360, 525.85.12, 87, 61, 7.0\n"
    "1, Tesla V100-SXM2-16GB, 16384, [N/A], [N/A], 525.85.12, [Not Supported], [N/A], 7.0\n"
)
HEADER = (
    "+-----------------------------------------------------------------------------+\n"
    "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4       |\n"
)
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)


@pytest.fixture
def no_nvml(mocker: MockerFixture) -> None:
    mocker.patch.dict(sys.modules, {"pynvml": None})  # as if nvidia-ml-py were not installed


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None) -> Any:
    """Put a scripted nvidia-smi first on PATH, answering with captured outputs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()

    def install(query: str, *, rc: int = 0, old_driver: bool = False, hang: bool = False) -> None:
        (tmp_path / "query.txt").write_text(query)
        (tmp_path / "header.txt").write_text(HEADER)
        reject = (
            'case "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to '
            "query.'; exit 2;; esac\n"
            if old_driver
            else ""
        )
        script = bindir / "nvidia-smi"
        script.write_text(
            "#!/bin/sh\n"
            + ("sleep 30 & wait\n" if hang else "")  # a child that would hold the pipes open
            + reject
            + f'case "$1" in --query-gpu=*) cat {tmp_path}/query.txt; exit {rc};; esac\n'
            + f"cat {tmp_path}/header.txt\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    return install


def test_real_probe_on_this_machine() -> None:
    report = cs.probe()
    assert report.cpu.logical_cores
    assert report.cpu.logical_cores >= 1
    assert report.ram
    assert report.ram.total > report.ram.available > 0
    assert report.disk
    assert report.disk.total >= report.disk.free > 0
    assert report.os.python == ".".join(map(str, sys.version_info[:3]))
    assert report.runtime.kind == "local"
    assert report.accelerator in ("cpu", "gpu", "tpu")
    data = json.loads(json.dumps(report.to_dict()))
    for key in ("model", "physical_cores", "logical_cores"):
        assert key in data["cpu"]
    assert {"total", "available"} <= set(data["ram"])
    assert {"total", "free"} <= set(data["disk"])
    assert data["accelerator"] == report.accelerator
    assert "accelerator" in repr(report)
    assert "<table>" in report._repr_html_()


def test_probe_imports_no_framework() -> None:
    code = (
        "import sys, colabsession as cs; cs.probe(); "
        "print([m for m in ('tensorflow', 'keras', 'jax', 'torch', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_t4_from_nvidia_smi(fake_smi: Any) -> None:
    fake_smi(T4)
    report = cs.probe()
    assert report.accelerator == "gpu"
    (gpu,) = report.gpus
    assert gpu.name == "Tesla T4"
    assert gpu.memory_total == 15360 * 2**20
    assert gpu.memory_free == 15101 * 2**20
    assert gpu.compute_capability == "7.5"
    assert gpu.capability == (7, 5)
    assert gpu.driver_version == "550.54.15"
    assert gpu.cuda_version == "12.4"
    assert gpu.temperature == 44
    assert gpu.source == "nvidia-smi"
    assert "gpus" not in report.reasons
    assert report.to_dict()["gpus"][0]["memory_total"] == 15360 * 2**20


def test_a100(fake_smi: Any) -> None:
    fake_smi(A100)
    (gpu,) = cs.probe().gpus
    assert gpu.name == "NVIDIA A100-SXM4-40GB"
    assert gpu.capability == (8, 0)


def test_two_gpus_with_missing_values(fake_smi: Any) -> None:
    fake_smi(TWO_GPUS)
    first, second = cs.probe().gpus
    assert (first.index, second.index) == (0, 1)
    assert first.utilization == 87
    assert second.memory_used is None
    assert second.utilization is None  # [Not Supported]
    assert second.temperature is None  # [N/A]
    assert second.memory_total == 16384 * 2**20


def test_old_driver_without_compute_cap(fake_smi: Any) -> None:
    fake_smi(T4.rsplit(",", 1)[0] + "\n", old_driver=True)
    (gpu,) = cs.probe().gpus
    assert gpu.name == "Tesla T4"
    assert gpu.compute_capability is None


def test_no_driver(fake_smi: Any) -> None:
    fake_smi(NO_DRIVER, rc=9)
    report = cs.probe()
    assert report.gpus == ()
    assert report.accelerator == "cpu"
    assert "couldn't communicate with the NVIDIA driver" in report.reasons["gpus"]
    assert "exit 9" in report.reasons["gpus"]


def test_hanging_nvidia_smi_is_killed(fake_smi: Any) -> None:
    fake_smi(T4, hang=True)
    start = time.monotonic()
    report = cs.probe(timeout=0.5)
    assert time.monotonic() - start < 5
    assert report.gpus == ()
    assert "did not answer within 0.5 s" in report.reasons["gpus"]


def test_nvidia_smi_missing(no_nvml: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    report = cs.probe()
    assert report.gpus == ()
    assert report.reasons["gpus"] == "no NVIDIA driver: nvidia-smi is not installed"


def test_nvidia_smi_not_executable(fake_smi: Any, tmp_path: Path) -> None:
    fake_smi(T4)
    (tmp_path / "bin" / "nvidia-smi").write_bytes(b"\x7fELF garbage")
    report = cs.probe()
    assert report.gpus == ()
    assert "nvidia-smi" in report.reasons["gpus"]


def _fake_nvml(mocker: MockerFixture, *, count: int = 1, fail_init: bool = False) -> Any:
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    def not_supported(*args: Any) -> Any:
        raise NVMLError("Not Supported")

    memory = types.SimpleNamespace(total=16 * 2**30, used=2**30, free=15 * 2**30)
    nvml.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = mocker.Mock()  # type: ignore[attr-defined]
    nvml.nvmlSystemGetDriverVersion = lambda: "550.54.15"  # type: ignore[attr-defined]
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12040  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: b"Tesla T4"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: memory  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (7, 5)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=3)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetTemperature = not_supported  # type: ignore[attr-defined]
    mocker.patch.dict(sys.modules, {"pynvml": nvml})
    return nvml


def test_nvml_preferred(mocker: MockerFixture) -> None:
    nvml = _fake_nvml(mocker, count=2)
    gpus = cs.probe().gpus
    assert [g.index for g in gpus] == [0, 1]
    gpu = gpus[0]
    assert gpu.source == "nvml"
    assert gpu.name == "Tesla T4"  # bytes from old bindings decoded
    assert gpu.memory_total == 16 * 2**30
    assert gpu.cuda_version == "12.4"
    assert gpu.compute_capability == "7.5"
    assert gpu.utilization == 3
    assert gpu.temperature is None  # a query the GPU does not support
    nvml.nvmlShutdown.assert_called_once()


def test_nvml_failure_falls_back_to_nvidia_smi(mocker: MockerFixture, fake_smi: Any) -> None:
    fake_smi(A100)
    _fake_nvml(mocker, fail_init=True)
    (gpu,) = cs.probe().gpus
    assert gpu.source == "nvidia-smi"


def test_nvml_and_smi_both_fail_give_both_reasons(mocker: MockerFixture, fake_smi: Any) -> None:
    fake_smi(NO_DRIVER, rc=9)
    _fake_nvml(mocker, fail_init=True)
    reason = cs.probe().reasons["gpus"]
    assert "Driver Not Loaded" in reason
    assert "couldn't communicate" in reason


@pytest.fixture
def fake_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    pci, dev = tmp_path / "pci", tmp_path / "dev"
    pci.mkdir()
    dev.mkdir()
    monkeypatch.setattr(_probe, "PCI_DEVICES", str(pci))
    monkeypatch.setattr(_probe, "DEV", str(dev))
    intel = pci / "0000:00:01.0"
    intel.mkdir()
    (intel / "vendor").write_text("0x8086\n")
    (intel / "device").write_text("0x1237\n")
    return pci, dev


@pytest.mark.parametrize(
    ("device", "generation"),
    [("0x0063", "v5e"), ("0x0056", "plc"), ("0x007c", "tpu8t"), ("0x0083", "tpu8i")],
)
def test_tpu_vm_from_pci(
    fake_sys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, device: str, generation: str
) -> None:
    pci, dev = fake_sys
    for i in range(4):
        chip = pci / f"0000:00:0{i + 4}.0"
        chip.mkdir()
        (chip / "vendor").write_text("0x1ae0\n")
        (chip / "device").write_text(f"{device}\n")
        (dev / "vfio").mkdir(exist_ok=True)
        (dev / "vfio" / str(i)).write_text("")
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    report = cs.probe()
    assert report.tpu is not None
    assert report.tpu.mode == "vm"
    assert report.tpu.generation == generation
    assert report.tpu.chips == 4
    assert len(report.tpu.device_nodes) == 4
    assert report.accelerator == "tpu"


def test_tpu_v2_device_nodes_and_env_hint(
    fake_sys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dev = fake_sys
    (dev / "accel0").write_text("")
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v2-8")
    tpu = cs.probe().tpu
    assert tpu is not None
    assert (tpu.generation, tpu.chips) == ("v2", 0)


def test_legacy_tpu_node(fake_sys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    tpu = cs.probe().tpu
    assert tpu is not None
    assert tpu.mode == "node"
    assert tpu.address == "grpc://10.0.0.2:8470"


def test_no_tpu(fake_sys: tuple[Path, Path]) -> None:
    assert cs.probe().tpu is None


def test_unreadable_proc_files_leave_fields_empty(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mocker: MockerFixture
) -> None:
    monkeypatch.setattr(_probe, "CPUINFO", str(tmp_path / "missing-cpuinfo"))
    mocker.patch("psutil.virtual_memory", side_effect=PermissionError("/proc/meminfo"))
    report = cs.probe()
    assert report.ram is None
    assert "PermissionError" in report.reasons["ram"]
    assert report.cpu.logical_cores  # psutil still counts the cores


def test_hanging_drive_stat_does_not_hang_the_probe(isolated: Path, mocker: MockerFixture) -> None:
    drive = isolated / "drive"
    drive.mkdir(parents=True)
    real = shutil.disk_usage

    def disk_usage(path: str) -> Any:
        if str(path) == str(drive):
            time.sleep(3)  # a stat on a dead FUSE mount
        return real(path)

    mocker.patch("shutil.disk_usage", side_effect=disk_usage)
    start = time.monotonic()
    report = cs.probe(timeout=0.3)
    assert time.monotonic() - start < 2
    assert report.drive_disk is None
    assert "did not finish within 0.3 s" in report.reasons["drive_disk"]
    assert report.disk is not None


def test_drive_disk_reported_when_present(isolated: Path) -> None:
    (isolated / "drive").mkdir(parents=True)
    report = cs.probe()
    assert report.drive_disk is not None
    assert report.drive_disk.path == str(isolated / "drive")


def test_require_accelerator_on_cpu_colab(
    fake_colab: types.SimpleNamespace, no_nvml: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(cs.AcceleratorNotFoundError, match=r"Runtime > Change runtime type > GPU"):
        cs.require_accelerator("gpu")


def test_require_accelerator_local_message(no_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(cs.AcceleratorNotFoundError, match="needs a TPU") as info:
        cs.require_accelerator("tpu")
    assert (info.value.wanted, info.value.found) == ("tpu", "cpu")
    assert isinstance(info.value, cs.ColabSessionError)
    with pytest.raises(cs.ConfigError):
        cs.require_accelerator("npu")


def test_require_accelerator_passes(fake_smi: Any) -> None:
    fake_smi(T4)
    assert cs.require_accelerator("gpu").gpus[0].name == "Tesla T4"
    assert cs.require_accelerator("GPU").gpus[0].name == "Tesla T4"  # any case


def test_cli_probe(capsys: pytest.CaptureFixture[str], fake_smi: Any) -> None:
    from colabsession._cli import main

    fake_smi(T4)
    assert main(["probe"]) == 0
    out = capsys.readouterr().out
    assert "Tesla T4, 15.0 GiB, compute 7.5" in out
    assert main(["probe", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][0]["name"] == "Tesla T4"
