"""Make long training jobs on Google Colab survive disconnects, restarts and session limits.

>>> import colabsession as cs
>>> cs.runtime().kind in ("colab", "kaggle", "local")
True

Every public name is imported on first use (PEP 562), so ``import colabsession`` stays instant and
pulls in neither TensorFlow, Keras, NumPy nor the Drive API client.
"""

from __future__ import annotations

from importlib import import_module

from ._version import __version__

# Not `from typing import ...`: importing typing would double the cost of `import colabsession`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import data, drive, env, hf, keras, torch
    from ._benchmark import BenchmarkReport, benchmark
    from ._checkpoint import Checkpoint, Checkpointer
    from ._clock import SessionClock, clock
    from ._errors import (
        AcceleratorNotFoundError,
        CheckpointError,
        ColabSessionError,
        ConfigError,
        DataError,
        DriveAPIError,
        DriveAuthError,
        DriveError,
        DriveQuotaError,
        EnvError,
        LeaseError,
        MissingDependencyError,
        MountError,
        MountTimeoutError,
        RunNotFoundError,
    )
    from ._fit import fit
    from ._history import history, plot_history
    from ._probe import HardwareReport, probe, require_accelerator
    from ._runtime import Runtime, runtime
    from ._strategy import distribution, precision, strategy
    from .drive import mount

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "AcceleratorNotFoundError": "._errors",
    "BenchmarkReport": "._benchmark",
    "Checkpoint": "._checkpoint",
    "CheckpointError": "._errors",
    "Checkpointer": "._checkpoint",
    "ColabSessionError": "._errors",
    "ConfigError": "._errors",
    "DataError": "._errors",
    "DriveAPIError": "._errors",
    "DriveAuthError": "._errors",
    "DriveError": "._errors",
    "DriveQuotaError": "._errors",
    "EnvError": "._errors",
    "HardwareReport": "._probe",
    "LeaseError": "._errors",
    "MissingDependencyError": "._errors",
    "MountError": "._errors",
    "MountTimeoutError": "._errors",
    "Runtime": "._runtime",
    "RunNotFoundError": "._errors",
    "SessionClock": "._clock",
    "benchmark": "._benchmark",
    "clock": "._clock",
    "data": ".data",
    "distribution": "._strategy",
    "drive": ".drive",
    "env": ".env",
    "fit": "._fit",
    "history": "._history",
    "hf": ".hf",
    "keras": ".keras",
    "mount": ".drive",
    "plot_history": "._history",
    "precision": "._strategy",
    "probe": "._probe",
    "require_accelerator": "._probe",
    "runtime": "._runtime",
    "strategy": "._strategy",
    "torch": ".torch",
}

__all__ = [
    "AcceleratorNotFoundError",
    "BenchmarkReport",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "ColabSessionError",
    "ConfigError",
    "DataError",
    "DriveAPIError",
    "DriveAuthError",
    "DriveError",
    "DriveQuotaError",
    "EnvError",
    "HardwareReport",
    "LeaseError",
    "MissingDependencyError",
    "MountError",
    "MountTimeoutError",
    "RunNotFoundError",
    "Runtime",
    "SessionClock",
    "__version__",
    "benchmark",
    "clock",
    "data",
    "distribution",
    "drive",
    "env",
    "fit",
    "hf",
    "history",
    "keras",
    "mount",
    "plot_history",
    "precision",
    "probe",
    "require_accelerator",
    "runtime",
    "strategy",
    "torch",
]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'colabsession' has no attribute {name!r}") from None
    imported = import_module(module, __name__)
    # A public submodule (cs.drive) is the module itself; any other name is defined in it.
    value = imported if module == f".{name}" else getattr(imported, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return list(__all__)
