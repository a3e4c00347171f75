"""Persistent environments: pip installs that survive a runtime restart, restored in seconds.

>>> cs.env.install("transformers==4.46.0", "evaluate")  # once: build, persist  # doctest: +SKIP
>>> cs.env.restore()  # the first cell after each restart  # doctest: +SKIP

An environment is a *layer* over the running interpreter: only what the base environment lacks
(or what you asked for at another version) goes into it, so Colab's own TensorFlow, NumPy and the
rest stay as they are. The layer is built on local disk and persisted to Drive as one archive and
one manifest; a restore reads those two files, verifies the archive's sha256, extracts it to local
disk (code never runs from the Drive folder) and puts it ahead of the base on ``sys.path``, on
``PYTHONPATH`` for ``!python`` and its console scripts on ``PATH``.
"""

from colabsession._env.api import (
    install,
    list,
    remove,
    restore,
)
from colabsession._env.local import (
    local_path,
)
from colabsession._env.manifest import (
    EnvInfo,
)

__all__ = ["EnvInfo", "install", "list", "local_path", "remove", "restore"]
