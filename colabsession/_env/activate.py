"""Activating a layer in this kernel: ahead of the base on ``sys.path``, on ``PYTHONPATH`` for
``!python`` and its console scripts on ``PATH``."""

from __future__ import annotations

import importlib
import logging
import os
import site
import sys
from pathlib import Path

from colabsession._env.manifest import EnvInfo

logger = logging.getLogger(__name__)


def activate(layer: Path, info: EnvInfo) -> None:
    """Put *layer* ahead of the base on sys.path (through site.addsitedir, so .pth files work),
    on PYTHONPATH for subprocesses, and its scripts on PATH."""
    entry = str(layer)
    if entry not in sys.path:
        before = list(sys.path)
        site.addsitedir(entry)
        added = [p for p in sys.path if p not in before]
        rest = [p for p in sys.path if p not in added]
        head = 1 if rest and rest[0] in ("", os.getcwd()) else 0  # keep the notebook's folder first
        sys.path[:] = rest[:head] + added + rest[head:]
    _prepend_env("PYTHONPATH", entry)
    scripts = layer / "bin"
    if scripts.is_dir():
        _prepend_env("PATH", str(scripts))
        for script in scripts.iterdir():  # archives on Drive can lose execute bits
            script.chmod(script.stat().st_mode | 0o111)
    importlib.invalidate_caches()
    _warn_imported_elsewhere(layer, info)


def _prepend_env(var: str, entry: str) -> None:
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p and p != entry]
    os.environ[var] = os.pathsep.join([entry, *parts])


def _warn_imported_elsewhere(layer: Path, info: EnvInfo) -> None:
    """Like Colab's own warning: a package already imported from the base keeps its old version
    until the runtime restarts."""
    stale = []
    for dist in layer.glob("*.dist-info"):
        top_level = dist / "top_level.txt"
        modules = (
            top_level.read_text().split()
            if top_level.exists()
            else [dist.name.split("-")[0].lower()]
        )
        for module in modules:
            loaded = sys.modules.get(module)
            where = getattr(loaded, "__file__", None) or ""
            if loaded is not None and where and not where.startswith(str(layer)):
                stale.append(module)
    if stale:
        logger.warning(
            "colabsession: %s %s already imported from the base environment; restart the "
            "runtime (Runtime > Restart session) and run cs.env.restore(%r) before importing "
            "them to use the environment's versions",
            ", ".join(sorted(set(stale))),
            "is" if len(set(stale)) == 1 else "are",
            info.name,
        )
