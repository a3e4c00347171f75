"""What hardware did this runtime get: CPU, RAM, disk, GPUs, TPU, OS, in milliseconds.

No framework is imported and no accelerator is opened: libtpu serves one process at a time, so a
probe that initialised it would take the TPU away from the user's own kernel.
"""

from __future__ import annotations

import glob
import html
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from colabsession._core.errors import AcceleratorNotFoundError, ConfigError
from colabsession._core.timeout import call_with_timeout, run_command
from colabsession._core.units import Duration, format_bytes, parse_duration
from colabsession._runtime.runtime import Runtime, runtime

Accelerator = Literal["tpu", "gpu", "cpu"]
T = TypeVar("T")

GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device id -> TPU generation, as JAX's hardware_utils (jax/_src/hardware_utils.py) and
# Google's tpu-info map them. 0x0056 has no public name (JAX calls it "plc"); 0x007c and 0x0083
# are the eighth generation's two chips in JAX's newest table (TPU8t, TPU8i).
TPU_PCI_DEVICES = {
    "0x0027": "v2/v3",
    "0x0056": "plc",
    "0x005e": "v4",
    "0x0062": "v5p",
    "0x0063": "v5e",
    "0x006f": "v6e",
    "0x0076": "v7x",
    "0x007c": "tpu8t",
    "0x0083": "tpu8i",
}
PCI_DEVICES = "/sys/bus/pci/devices"
DEV = "/dev"
CPUINFO = "/proc/cpuinfo"
NVIDIA_SMI_FIELDS = (
    "index,name,memory.total,memory.used,memory.free,driver_version,"
    "utilization.gpu,temperature.gpu,compute_cap"
)
MiB = 1024 * 1024


@dataclass(frozen=True)
class OSInfo:
    name: str | None
    version: str | None
    kernel: str
    python: str
    python_implementation: str


@dataclass(frozen=True)
class CPUInfo:
    model: str | None
    physical_cores: int | None
    logical_cores: int | None
    frequency_mhz: float | None


@dataclass(frozen=True)
class RAMInfo:
    total: int
    available: int


@dataclass(frozen=True)
class DiskInfo:
    path: str
    total: int
    free: int


@dataclass(frozen=True)
class GPUInfo:
    """One NVIDIA GPU; sizes in bytes, utilisation in percent, temperature in degrees Celsius."""

    index: int
    name: str
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    compute_capability: str | None = None
    utilization: int | None = None
    temperature: int | None = None
    source: Literal["nvml", "nvidia-smi"] = "nvml"

    @property
    def capability(self) -> tuple[int, int] | None:
        """``compute_capability`` as numbers for comparisons: ``"7.5"`` -> ``(7, 5)``."""
        try:
            major, minor = (self.compute_capability or "").split(".")
            return int(major), int(minor)
        except ValueError:
            return None


@dataclass(frozen=True)
class TPUInfo:
    """A TPU found without opening it: ``mode`` is ``"vm"`` (attached to this VM, Colab since
    2024) or ``"node"`` (the legacy remote TPU at ``address``)."""

    mode: Literal["vm", "node"]
    generation: str | None = None
    chips: int = 0
    accelerator_type: str | None = None
    device_nodes: tuple[str, ...] = ()
    address: str | None = None


@dataclass(frozen=True)
class FrameworkInfo:
    version: str | None
    devices: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class HardwareReport:
    """Everything :func:`probe` found; empty fields come with a reason in ``reasons``."""

    os: OSInfo
    cpu: CPUInfo
    ram: RAMInfo | None
    disk: DiskInfo | None
    drive_disk: DiskInfo | None
    gpus: tuple[GPUInfo, ...]
    tpu: TPUInfo | None
    runtime: Runtime
    reasons: dict[str, str] = field(default_factory=dict)
    frameworks: dict[str, FrameworkInfo] | None = None

    @property
    def accelerator(self) -> Accelerator:
        """The accelerator attached: ``"tpu"``, ``"gpu"``, or ``"cpu"`` where there is none."""
        return "tpu" if self.tpu else "gpu" if self.gpus else "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values; sizes in bytes."""
        data = asdict(self)
        data["runtime"] = self.runtime.to_dict()
        data["accelerator"] = self.accelerator
        return data

    def _rows(self) -> list[tuple[str, str]]:
        cpu, rows = self.cpu, []
        rows.append(
            (
                "runtime",
                f"{self.runtime.kind}"
                + (f" ({self.runtime.release_tag})" if self.runtime.release_tag else ""),
            )
        )
        rows.append(
            (
                "os",
                " ".join(filter(None, (self.os.name, self.os.version)))
                + f", kernel {self.os.kernel}, Python {self.os.python}",
            )
        )
        rows.append(
            (
                "cpu",
                f"{cpu.model or '?'}, {cpu.physical_cores or '?'} cores / "
                f"{cpu.logical_cores or '?'} threads"
                + (f" @ {cpu.frequency_mhz:.0f} MHz" if cpu.frequency_mhz else ""),
            )
        )
        if self.ram:
            rows.append(
                (
                    "ram",
                    f"{format_bytes(self.ram.available)} free of {format_bytes(self.ram.total)}",
                )
            )
        for name, disk in (("disk", self.disk), ("drive", self.drive_disk)):
            if disk:
                rows.append(
                    (
                        name,
                        f"{format_bytes(disk.free)} free of "
                        f"{format_bytes(disk.total)} ({disk.path})",
                    )
                )
        for gpu in self.gpus:
            rows.append(
                (
                    f"gpu {gpu.index}",
                    f"{gpu.name}, {format_bytes(gpu.memory_total)}, "
                    f"compute {gpu.compute_capability or '?'}, driver "
                    f"{gpu.driver_version or '?'}, CUDA {gpu.cuda_version or '?'}",
                )
            )
        if self.tpu:
            tpu = self.tpu
            rows.append(
                (
                    "tpu",
                    f"{tpu.generation or tpu.accelerator_type or 'TPU'} ({tpu.mode}"
                    + (f", {tpu.chips} chips" if tpu.chips else "")
                    + (f", {tpu.address}" if tpu.address else "")
                    + ")",
                )
            )
        rows.append(("accelerator", self.accelerator))
        for name, info in (self.frameworks or {}).items():
            rows.append((name, info.error or f"{info.version}: {', '.join(info.devices) or '-'}"))
        rows.extend((f"({name})", reason) for name, reason in self.reasons.items())
        return rows

    def table(self) -> str:
        """A readable two-column table, as ``colabsession probe`` prints it."""
        rows = self._rows()
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def __repr__(self) -> str:
        gpus = [f"{g.name} {format_bytes(g.memory_total)}" for g in self.gpus]
        return (
            f"HardwareReport(accelerator={self.accelerator!r}, gpus={gpus}, "
            f"tpu={self.tpu.generation if self.tpu else None!r}, cpu={self.cpu.model!r} "
            f"x{self.cpu.logical_cores}, ram={format_bytes(self.ram.total if self.ram else None)}, "
            f"disk_free={format_bytes(self.disk.free if self.disk else None)})"
        )

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
            f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
            for name, value in self._rows()
        )
        return f"<table>{body}</table>"


def probe(*, frameworks: bool = False, timeout: Duration = "3s") -> HardwareReport:
    """Describe this runtime's hardware. Never raises and never hangs past about *timeout* per
    sub-probe: what cannot be read is left empty, with the reason in ``report.reasons``.

    >>> report = cs.probe()  # doctest: +SKIP
    >>> report.accelerator, report.gpus[0].name, report.ram.total  # doctest: +SKIP
    ('gpu', 'Tesla T4', 13605851136)

    Args:
        frameworks: also ask each installed framework (TensorFlow, JAX, PyTorch) which devices it
            sees. This imports them, and JAX then initialises its backend in this process.
        timeout: the longest wait for ``nvidia-smi`` or for a stat on the Drive mount.
    """
    limit = parse_duration(timeout, name="timeout")
    reasons: dict[str, str] = {}
    rt = runtime()
    os_info = _guard(reasons, "os", _os_info, OSInfo(None, None, "", "", ""))
    cpu = _guard(reasons, "cpu", _cpu_info, CPUInfo(None, None, os.cpu_count(), None))
    ram = _guard(reasons, "ram", _ram_info, None)
    workdir = "/content" if rt.kind == "colab" and os.path.isdir("/content") else os.getcwd()
    disk = _guard(reasons, "disk", lambda: _disk(workdir, limit), None)
    drive_disk = None
    if rt.drive_root is not None and (rt.drive_mounted or rt.drive_root.is_dir()):
        drive_disk = _guard(reasons, "drive_disk", lambda: _disk(str(rt.drive_root), limit), None)
    gpus, gpu_reason = _gpus(limit)
    if gpu_reason:
        reasons["gpus"] = gpu_reason
    tpu = _guard(reasons, "tpu", _tpu, None)
    found = _frameworks() if frameworks else None
    return HardwareReport(os_info, cpu, ram, disk, drive_disk, gpus, tpu, rt, reasons, found)


def require_accelerator(kind: str, report: HardwareReport | None = None) -> HardwareReport:
    """Return the probe report, or raise AcceleratorNotFoundError if no *kind* is attached.

    >>> cs.require_accelerator("gpu")  # doctest: +SKIP
    """
    wanted = kind.lower() if isinstance(kind, str) else kind
    if wanted not in ("gpu", "tpu"):
        raise ConfigError(f"require_accelerator takes 'gpu' or 'tpu', not {kind!r}")
    kind = wanted
    report = report or probe()
    if (kind == "gpu" and report.gpus) or (kind == "tpu" and report.tpu):
        return report
    found = report.accelerator.upper() if report.accelerator != "cpu" else "no accelerator"
    why = report.reasons.get("gpus" if kind == "gpu" else "tpu")
    fix = (
        f"In Colab choose Runtime > Change runtime type > {kind.upper()} (a T4 GPU or a TPU is "
        "free when available), then re-run the notebook"
        if report.runtime.kind == "colab"
        else f"On Kaggle choose Settings > Accelerator > {kind.upper()}"
        if report.runtime.kind == "kaggle"
        else f"run this on a machine with a {kind.upper()}"
    )
    raise AcceleratorNotFoundError(
        f"this code needs a {kind.upper()}, but this runtime has {found}"
        + (f" ({why})" if why else "")
        + f". {fix}.",
        wanted=kind,
        found=report.accelerator,
    )


def _guard(reasons: dict[str, str], name: str, func: Callable[[], T], empty: T) -> T:
    try:
        return func()
    except Exception as exc:  # a probe reports, it never raises
        reasons[name] = f"{type(exc).__name__}: {exc}"
        return empty


def _os_info() -> OSInfo:
    try:
        release = platform.freedesktop_os_release()
        name, version = release.get("NAME"), release.get("VERSION_ID") or release.get("VERSION")
    except OSError:  # not Linux, or no os-release file
        name, version = platform.system() or None, platform.version() or None
    return OSInfo(
        name=name,
        version=version,
        kernel=platform.release(),
        python=platform.python_version(),
        python_implementation=platform.python_implementation(),
    )


def _cpu_info() -> CPUInfo:
    import psutil

    model = mhz = None
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "Hardware", "Processor") and not model:
                    model = value
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(value)
    except (OSError, ValueError):
        pass
    if not model:
        model = platform.processor() or platform.machine() or None
    try:
        freq = psutil.cpu_freq()
        mhz = freq.current if freq and freq.current else mhz
    except (OSError, NotImplementedError, RuntimeError):  # no cpufreq in many VMs
        pass
    return CPUInfo(model, psutil.cpu_count(logical=False), psutil.cpu_count(), mhz)


def _ram_info() -> RAMInfo:
    import psutil

    memory = psutil.virtual_memory()
    return RAMInfo(total=memory.total, available=memory.available)


def _disk(path: str, timeout: float) -> DiskInfo:
    usage = call_with_timeout(lambda: shutil.disk_usage(path), timeout, what=f"statvfs {path}")
    return DiskInfo(path=path, total=usage.total, free=usage.free)


def _gpus(timeout: float) -> tuple[tuple[GPUInfo, ...], str | None]:
    """NVIDIA GPUs via NVML, else via nvidia-smi; with the reason when none could be read."""
    try:
        return _gpus_nvml(), None
    except Exception as exc:  # no nvidia-ml-py, no libnvidia-ml.so, no driver ...
        nvml_reason = f"NVML: {exc}" if str(exc) else f"NVML: {type(exc).__name__}"
    try:
        return _gpus_nvidia_smi(timeout), None
    except _NoGPU as exc:
        return (), str(exc) if "not installed" in nvml_reason else f"{exc}; {nvml_reason}"


class _NoGPU(Exception):
    pass


def _gpus_nvml() -> tuple[GPUInfo, ...]:
    try:
        import pynvml  # the nvidia-ml-py package
    except ImportError:
        raise RuntimeError("nvidia-ml-py is not installed") from None
    pynvml.nvmlInit()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = _optional_call(pynvml.nvmlSystemGetCudaDriverVersion)
        cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = _optional_call(pynvml.nvmlDeviceGetMemoryInfo, handle)
            capability = _optional_call(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
            rates = _optional_call(pynvml.nvmlDeviceGetUtilizationRates, handle)
            gpus.append(
                GPUInfo(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total=int(memory.total) if memory else None,
                    memory_used=int(memory.used) if memory else None,
                    memory_free=int(memory.free) if memory else None,
                    driver_version=driver,
                    cuda_version=cuda_version,
                    compute_capability="{}.{}".format(*capability) if capability else None,
                    utilization=int(rates.gpu) if rates else None,
                    temperature=_optional_call(
                        pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
                    ),
                    source="nvml",
                )
            )
        return tuple(gpus)
    finally:
        _optional_call(pynvml.nvmlShutdown)


def _optional_call(func: Callable[..., Any], *args: Any) -> Any:
    """One NVML query that a GPU or driver may not support (NVMLError_NotSupported ...)."""
    try:
        return func(*args)
    except Exception:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # bytes from old nvidia-ml-py


def _gpus_nvidia_smi(timeout: float) -> tuple[GPUInfo, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise _NoGPU("no NVIDIA driver: nvidia-smi is not installed")
    fields = NVIDIA_SMI_FIELDS
    for _ in range(2):
        result = _smi([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], timeout)
        if result.returncode == 0:
            break
        if "compute_cap" in fields and "compute_cap" in result.stdout + result.stderr:
            fields = fields.replace(",compute_cap", "")  # older drivers reject the field
            continue
        message = (result.stdout + result.stderr).strip().splitlines()
        raise _NoGPU(
            f"nvidia-smi failed (exit {result.returncode}): "
            + (message[0] if message else "no output")
        )
    names = fields.split(",")
    cuda = _cuda_from_header(exe, timeout)
    gpus: list[GPUInfo] = []
    for line in result.stdout.strip().splitlines():
        row = dict(zip(names, (cell.strip() for cell in line.split(",")), strict=False))
        if not row.get("name"):
            continue
        index = _int(row.get("index"))
        gpus.append(
            GPUInfo(
                index=len(gpus) if index is None else index,
                name=row["name"],
                memory_total=_mib(row.get("memory.total")),
                memory_used=_mib(row.get("memory.used")),
                memory_free=_mib(row.get("memory.free")),
                driver_version=_cell(row.get("driver_version")),
                cuda_version=cuda,
                compute_capability=_cell(row.get("compute_cap")),
                utilization=_int(row.get("utilization.gpu")),
                temperature=_int(row.get("temperature.gpu")),
                source="nvidia-smi",
            )
        )
    if not gpus:
        raise _NoGPU("nvidia-smi lists no GPU")
    return tuple(gpus)


def _smi(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return run_command(argv, timeout)
    except subprocess.TimeoutExpired:
        raise _NoGPU(f"nvidia-smi did not answer within {timeout:g} s and was killed") from None
    except OSError as exc:  # permission denied, exec format error ...
        raise _NoGPU(f"nvidia-smi could not run: {exc}") from None


def _cuda_from_header(exe: str, timeout: float) -> str | None:
    """The CUDA version is not a query field; the plain output's header has it."""
    try:
        header = _smi([exe], timeout).stdout
    except _NoGPU:
        return None
    marker = "CUDA Version:"
    if marker not in header:
        return None
    return header.split(marker, 1)[1].split()[0].strip("|") or None


def _cell(value: str | None) -> str | None:
    """None for nvidia-smi's missing values: ``[N/A]``, ``[Not Supported]``, ``N/A``."""
    if value is None or not value or value.startswith("[") or value.upper() == "N/A":
        return None
    return value


def _int(value: str | None) -> int | None:
    try:
        return int(float(_cell(value) or ""))
    except ValueError:
        return None


def _mib(value: str | None) -> int | None:
    mib = _int(value)
    return None if mib is None else mib * MiB


def tpu_attached() -> bool:
    """Whether this machine has a TPU, from its PCI ids, device nodes and environment only (no
    framework is imported and libtpu is never opened)."""
    return _tpu() is not None


def _tpu() -> TPUInfo | None:
    """A TPU VM from its PCI ids and device nodes, or the legacy TPU node from its address."""
    generations: list[str] = []
    for device in sorted(glob.glob(os.path.join(PCI_DEVICES, "*"))):
        try:
            vendor = Path(device, "vendor").read_text().strip()
            if vendor.lower() != GOOGLE_PCI_VENDOR:
                continue
            generations.append(TPU_PCI_DEVICES.get(Path(device, "device").read_text().strip(), "?"))
        except OSError:
            continue
    chips = [g for g in generations if g != "?"]
    nodes = tuple(sorted(glob.glob(f"{DEV}/accel*") + glob.glob(f"{DEV}/vfio/[0-9]*")))
    accelerator_type = os.environ.get("TPU_ACCELERATOR_TYPE") or None
    if chips or (nodes and (accelerator_type or os.environ.get("COLAB_TPU_1VM"))):
        generation = chips[0] if chips else _generation_from_type(accelerator_type)
        return TPUInfo("vm", generation, len(chips), accelerator_type, nodes)
    if address := os.environ.get("COLAB_TPU_ADDR"):
        return TPUInfo("node", address=f"grpc://{address}", accelerator_type=accelerator_type)
    return None


def _generation_from_type(accelerator_type: str | None) -> str | None:
    """``"v5litepod-1"`` -> ``"v5e"``, ``"v2-8"`` -> ``"v2"``."""
    if not accelerator_type:
        return None
    prefix = accelerator_type.split("-")[0].lower()
    return "v5e" if prefix == "v5litepod" else prefix


def _frameworks() -> dict[str, FrameworkInfo]:
    from colabsession._core.optional import installed

    found: dict[str, FrameworkInfo] = {}
    for name, devices in (
        ("tensorflow", _tf_devices),
        ("jax", _jax_devices),
        ("torch", _torch_devices),
    ):
        if not installed(name):
            continue
        try:
            version, listed = devices()
            found[name] = FrameworkInfo(version, tuple(listed))
        except Exception as exc:
            found[name] = FrameworkInfo(None, error=f"{type(exc).__name__}: {exc}")
    return found


def _tf_devices() -> tuple[str, list[str]]:
    import tensorflow as tf

    devices = tf.config.list_physical_devices()
    return tf.__version__, [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in devices]


def _jax_devices() -> tuple[str, list[str]]:
    import jax

    return jax.__version__, [str(d) for d in jax.devices()]


def _torch_devices() -> tuple[str, list[str]]:
    import torch

    listed = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        listed += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count)]
    return str(torch.__version__), listed
