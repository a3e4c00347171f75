"""Optional dependencies, imported on first use with an error that says how to install them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from colabsession._core.errors import MissingDependencyError
from colabsession._version import INSTALL_URL


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import *module*, or raise MissingDependencyError naming ``colabsession[extra]``.

    >>> tf = require("tensorflow", extra="tensorflow", purpose="cs.benchmark()")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = (exc.name or "").split(".")[0]
        if missing and missing != top and installed(top):
            # Installed, but without what it needs: Colab ships PyDrive2 without its fsspec
            # extra (funcy, appdirs), so `import pydrive2.fs` fails on funcy.
            raise MissingDependencyError(
                f"{purpose} needs {missing} for {module}: {package or top} is installed, but "
                f'without {missing}. Run `pip install "colabsession[{extra}] @ {INSTALL_URL}"`, '
                "which adds what is missing and changes nothing installed",
                package=missing,
                extra=extra,
                name=exc.name,
            ) from exc
        raise MissingDependencyError(
            f"{purpose} needs {package or top}, which is not installed here: "
            f'run `pip install "colabsession[{extra}] @ {INSTALL_URL}"`'
            + (
                " (Colab's CPU and GPU images have it preinstalled; its TPU images have no "
                "TensorFlow, and PyPI's cannot drive a TPU: train with Keras on JAX there)"
                if extra == "tensorflow"
                else ""
            ),
            package=package or top,
            extra=extra,
            name=exc.name or module,
        ) from exc


def installed(module: str) -> bool:
    """Whether *module* can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
