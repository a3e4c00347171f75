"""Framework caches kept on Drive, brought back at local-disk speed in every session.

Every Colab session starts from an empty machine, so pretrained models are downloaded again
(several GB for one model), or read file by file from the Drive mount. Save the caches once;
later sessions restore them in seconds, verified, before the first ``from_pretrained``:

>>> cs.cache.restore()       # first, every session: what Drive holds  # doctest: +SKIP
>>> model = AutoModel.from_pretrained("bert-base-uncased")  # doctest: +SKIP
>>> cs.cache.save()          # after a download: only what is new is uploaded  # doctest: +SKIP
>>> keeper = cs.cache.keep()  # or: saved in the background when a cache changes  # doctest: +SKIP

Known caches by name: ``"huggingface"`` (the hub cache: ``HF_HUB_CACHE``, ``HF_HOME/hub``),
``"torch"`` (``TORCH_HOME``), ``"keras"`` (``KERAS_HOME``, ``~/.keras``) and ``"datasets"``
(``HF_DATASETS_CACHE``); any folder by its path. Saving is incremental and content-addressed:
each large file is stored once by its sha256, the rest in one small packed part (the tar shards
of :mod:`colabsession.data`), and a manifest written last commits the save. Failures raise
``cs.CacheError``.
"""

from colabsession._cache.api import (
    CacheInfo,
    CacheReport,
    Keeper,
    keep,
    prune,
    restore,
    save,
    size,
)

__all__ = [
    "CacheInfo",
    "CacheReport",
    "Keeper",
    "keep",
    "prune",
    "restore",
    "save",
    "size",
]
