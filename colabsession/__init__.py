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

    from . import cache, data, drive, env, hf, keras, lightning, torch
    from ._core.errors import (
        AcceleratorNotFoundError,
        CacheError,
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
    from ._core.secrets import secret
    from ._runtime.benchmark import BenchmarkReport, benchmark
    from ._runtime.clock import SessionClock, clock
    from ._runtime.precision import Precision
    from ._runtime.probe import HardwareReport, probe, require_accelerator
    from ._runtime.runtime import Runtime, runtime
    from ._runtime.strategy import distribution, precision, strategy
    from ._session.start import PartReport, SessionReport, session
    from ._storage.checkpointer import Checkpoint, Checkpointer, CheckpointInfo, CheckpointStatus
    from ._storage.history import History, history, plot_history
    from ._storage.portable import export_checkpoint, import_checkpoint
    from ._storage.tracking import wandb_id, wandb_init
    from ._training.fit import fit
    from .drive import mount

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "AcceleratorNotFoundError": "._core.errors",
    "BenchmarkReport": "._runtime.benchmark",
    "CacheError": "._core.errors",
    "Checkpoint": "._storage.checkpointer",
    "CheckpointError": "._core.errors",
    "CheckpointInfo": "._storage.checkpointer",
    "CheckpointStatus": "._storage.checkpointer",
    "Checkpointer": "._storage.checkpointer",
    "ColabSessionError": "._core.errors",
    "ConfigError": "._core.errors",
    "DataError": "._core.errors",
    "DriveAPIError": "._core.errors",
    "DriveAuthError": "._core.errors",
    "DriveError": "._core.errors",
    "DriveQuotaError": "._core.errors",
    "EnvError": "._core.errors",
    "HardwareReport": "._runtime.probe",
    "History": "._storage.history",
    "Precision": "._runtime.precision",
    "PartReport": "._session.start",
    "LeaseError": "._core.errors",
    "MissingDependencyError": "._core.errors",
    "MountError": "._core.errors",
    "MountTimeoutError": "._core.errors",
    "Runtime": "._runtime.runtime",
    "RunNotFoundError": "._core.errors",
    "SessionClock": "._runtime.clock",
    "SessionReport": "._session.start",
    "benchmark": "._runtime.benchmark",
    "cache": ".cache",
    "clock": "._runtime.clock",
    "data": ".data",
    "distribution": "._runtime.strategy",
    "drive": ".drive",
    "env": ".env",
    "export_checkpoint": "._storage.portable",
    "fit": "._training.fit",
    "history": "._storage.history",
    "hf": ".hf",
    "import_checkpoint": "._storage.portable",
    "keras": ".keras",
    "lightning": ".lightning",
    "mount": ".drive",
    "plot_history": "._storage.history",
    "precision": "._runtime.strategy",
    "probe": "._runtime.probe",
    "require_accelerator": "._runtime.probe",
    "runtime": "._runtime.runtime",
    "secret": "._core.secrets",
    "session": "._session.start",
    "strategy": "._runtime.strategy",
    "torch": ".torch",
    "wandb_id": "._storage.tracking",
    "wandb_init": "._storage.tracking",
}

__all__ = [
    "AcceleratorNotFoundError",
    "BenchmarkReport",
    "CacheError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointStatus",
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
    "History",
    "LeaseError",
    "MissingDependencyError",
    "MountError",
    "MountTimeoutError",
    "PartReport",
    "Precision",
    "RunNotFoundError",
    "Runtime",
    "SessionClock",
    "SessionReport",
    "__version__",
    "benchmark",
    "cache",
    "clock",
    "data",
    "distribution",
    "drive",
    "env",
    "export_checkpoint",
    "fit",
    "hf",
    "history",
    "import_checkpoint",
    "keras",
    "lightning",
    "mount",
    "plot_history",
    "precision",
    "probe",
    "require_accelerator",
    "runtime",
    "secret",
    "session",
    "strategy",
    "torch",
    "wandb_id",
    "wandb_init",
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
