"""Optional dependencies, imported on first use with an error that says how to install them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ._errors import MissingDependencyError
from ._version import INSTALL_URL


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import *module*, or raise MissingDependencyError naming ``colabsession[extra]``.

    >>> tf = require("tensorflow", extra="tensorflow", purpose="cs.benchmark()")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {package or module.split('.')[0]}, which is not installed here: "
            f'run `pip install "colabsession[{extra}] @ {INSTALL_URL}"`'
            + (
                " (on Colab it is preinstalled: restart the runtime if you removed it)"
                if extra == "tensorflow"
                else ""
            )
        ) from exc


def installed(module: str) -> bool:
    """Whether *module* can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
