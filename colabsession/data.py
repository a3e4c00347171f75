"""Datasets from Drive at local-disk speed: pack once, stage in seconds every session.

Reading a dataset of many small files over the Drive mount costs round trips per file, every
epoch. Pack the folder once into a few large shards (WebDataset-style tar, zstd-compressed)
beside it on Drive; then every session copies the shards to the VM's disk, several at once,
verifies them and unpacks them there, in seconds::

    >>> import colabsession as cs
    >>> info = cs.data.pack("drive:datasets/flowers")     # once: drive:datasets/flowers.packed
    colabsession: packed drive:datasets/flowers (8 files, 1.2 KiB) into 1 shard(s) ...
    >>> path = cs.data.stage("drive:datasets/flowers")    # every session: a local folder
    colabsession: staged drive:datasets/flowers.packed (8 files, 1.2 KiB) at ...
    >>> ds = keras.utils.image_dataset_from_directory(path, image_size=(180, 180))  # doctest: +SKIP

:func:`stage` also takes an archive (``.zip``, ``.tar``, ``.tar.gz``, ``.tar.zst``), unpacked
safely on local disk, and a folder that was never packed, copied file by file with many workers.
A second call with an unchanged source returns at once; a copy cut short continues.
"""

from colabsession._data.api import (
    DatasetEntry,
    list,
    pack,
    stage,
    staged,
)
from colabsession._data.dataset import (
    DatasetInfo,
    Member,
    Shard,
)
from colabsession._data.stage import (
    StagedInfo,
)

__all__ = [
    "DatasetEntry",
    "DatasetInfo",
    "Member",
    "Shard",
    "StagedInfo",
    "list",
    "pack",
    "stage",
    "staged",
]
