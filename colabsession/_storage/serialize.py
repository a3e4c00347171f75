"""A checkpoint's state: a JSON tree plus one file of raw array bytes.

The tree keeps the state's structure exactly: dicts (string or integer keys), lists, tuples,
numbers, strings, booleans, None, and arrays, which it names by their index in the arrays file.
PyTorch tensors and JAX arrays are arrays that remember their framework, dtype and device
(``{"$x": {...}}``), so that a restore can give them back as they were (:mod:`._frameworks`);
neither framework is imported unless the state holds its objects.
Keys that begin with the tree's own marker (``$``) are escaped, so no user dict is ever read back
as something else. Arrays are stored raw, each at a 64-byte boundary, with their dtype by name:
every dtype numpy knows and those of ml_dtypes (bfloat16, float8_*, int4, ...) round-trip exactly.
Loading never runs code (no pickle).

The arrays file's CRC32C is computed while it is written, in one pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from colabsession._core.errors import CheckpointError
from colabsession._storage.frameworks import FrameworkArray

MARK = "$"
FRAMEWORKS = ("torch", "jax")
ALIGN = 64
CHUNK = 16 << 20  # hash each chunk right after writing it, while it is in the CPU cache
COPY_CHUNK = 1 << 20  # copied, then hashed from the copy while it is still in the CPU cache


class FileBytes:
    """The bytes of the file *path* (of *size* bytes) as an array of uint8 that the writer
    reads, in the background for an async save: a state may hand over files it will not change
    (cs.hf hands over the Trainer's checkpoint files, hard-linked into a folder of its own)
    instead of reading them into memory in the training thread. A file whose size changed
    meanwhile (rewritten in place) fails the save rather than saving something else.

    >>> FileBytes("/content/out/.colabsession-staging/model.safetensors", 1024)  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], size: int) -> None:
        self.path = os.fspath(path)
        self.size = size

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        import numpy as np

        data = np.fromfile(self.path, dtype=np.uint8)
        if data.size != self.size:
            raise CheckpointError(
                f"{self.path} changed while it was saved ({self.size} bytes, now {data.size}): "
                "save again"
            )
        return data if dtype is None else data.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"FileBytes({self.path!r}, {self.size})"


@dataclass(frozen=True)
class ArrayInfo:
    """Where one array lies in the arrays file."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def flatten(
    state: Any, reuse: list[Any] | None = None, *, copy: bool = True, lazy: bool = False
) -> tuple[Any, list[Any]]:
    """Split *state* into a JSON tree and its arrays.

    Arrays (numpy, torch tensors, JAX arrays, anything with ``__array__``) are copied now, so
    the caller may go on changing (or donating) its own; *reuse* holds the copies of an earlier
    call that nothing uses any more: arrays of the same place, shape and dtype are copied into
    them, which spares allocating (and page-faulting) hundreds of megabytes on every save. GPU
    tensors are copied into pinned buffers without waiting (see :mod:`._frameworks`); TensorFlow
    tensors, which nothing changes or deletes, are kept as they are and converted in the
    background by :func:`host_arrays`; JAX arrays, which a jitted step may delete by donating
    them, are copied on their device (queued, not waited for) and fetched in the background.
    Without *copy* (a synchronous save, during which the caller waits) arrays are taken as
    they are. With *lazy* nothing is copied or moved: tensors stay where they are (detached)
    and JAX arrays stay JAX arrays, for :class:`~.async_writer.AsyncWriter` to copy within its
    memory budget.
    """
    import numpy as np

    from colabsession._storage import frameworks as _frameworks

    leaves: list[Any] = []
    spares = reuse or []
    torch = _frameworks.loaded_torch()
    devices: set[int] = set()  # the GPUs whose streams copy into host buffers

    def tensor(node: Any, where: str) -> dict[str, Any]:
        index = len(leaves)
        if lazy:
            leaves.append(_frameworks.savable_tensor(node, where))
            return {f"{MARK}x": _frameworks.describe(node, index)}
        spare = spares[index] if index < len(spares) else None
        leaf, device = _frameworks.stage_tensor(node, where, _frameworks.unwrap(spare), copy)
        if device is not None:
            devices.add(device)
        leaves.append(leaf)
        return {f"{MARK}x": _frameworks.describe(node, index)}

    def array(node: Any, where: str) -> int:
        index = len(leaves)
        if _immutable(node):
            leaves.append(node)
            return index
        keep = lazy and _frameworks.is_jax_array(node)  # copied to the host when staged
        source = node if keep else np.asarray(node)
        dtype = np.dtype(source.dtype)
        if dtype.hasobject or dtype.fields is not None:
            raise CheckpointError(
                f"state{where} is an array of {dtype}, which cannot be saved without "
                "pickle: convert it to a plain numeric array"
            )
        if not copy or lazy:
            leaves.append(source)
            return index
        spare = spares[index] if index < len(spares) else None
        if isinstance(spare, np.ndarray) and (spare.shape, spare.dtype) == (
            source.shape,
            source.dtype,
        ):
            np.copyto(spare, source)
            leaves.append(spare)
        else:
            leaves.append(np.array(source, copy=True, order="C"))
        return index

    def visit(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {_escape(k): visit(v, f"{where}[{k!r}]") for k, v in node.items()}
            items = []
            for key, value in node.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise CheckpointError(
                        f"state{where} has the key {key!r}: keys must be strings or integers"
                    )
                items.append([key, visit(value, f"{where}[{key!r}]")])
            return {f"{MARK}d": items}
        if isinstance(node, list):
            return [visit(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, tuple):
            return {f"{MARK}t": [visit(v, f"{where}[{i}]") for i, v in enumerate(node)]}
        if node is None or isinstance(node, (bool, str)):
            return node
        if isinstance(node, (int, float)) and not isinstance(node, np.generic):
            if isinstance(node, float) and not math.isfinite(node):
                return {f"{MARK}f": repr(node)}  # JSON has no nan or inf
            return int(node) if isinstance(node, int) else float(node)
        if isinstance(node, np.generic):
            return {f"{MARK}s": array(node, where)}
        if torch is not None and isinstance(node, torch.Tensor):
            return tensor(node, where)
        if _frameworks.is_jax_array(node):
            if node.is_deleted():
                raise CheckpointError(
                    f"state{where} is a JAX array that was deleted (donated to a jitted step): "
                    "save the arrays the step returned"
                )
            index = len(leaves)
            leaves.append(_frameworks.stage_jax(node) if copy else node)
            return {f"{MARK}x": _frameworks.describe(node, index)}
        if hasattr(node, "__array__"):
            return {f"{MARK}a": array(node, where)}
        children = _frameworks.pytree_children(node)  # a flax struct, say: restore(like=...)
        if children is not None:
            return {f"{MARK}t": [visit(v, f"{where}[{i}]") for i, v in enumerate(children)]}
        raise CheckpointError(
            f"state{where} is a {type(node).__name__}: a checkpoint holds arrays, numbers, "
            "strings, booleans, None, and lists, tuples and dicts of them"
        )

    tree = visit(state, "")
    if devices:  # copies from GPU memory run on its streams: the writer waits for them
        leaves = _frameworks.after_device_copies(leaves, devices)
    return tree, leaves


def host_arrays(leaves: list[Any]) -> list[Any]:
    """The leaves of :func:`flatten` as C-contiguous numpy arrays (device arrays fetched now,
    copies from GPU memory waited for)."""
    import numpy as np

    from colabsession._storage import frameworks as _frameworks

    # (np.ascontiguousarray would make 0-d arrays 1-d)
    return [np.asarray(_frameworks.host_view(leaf), order="C") for leaf in leaves]


def uses_frameworks(tree: Any) -> bool:
    """Whether *tree* holds framework arrays (a newer manifest format than plain arrays)."""
    if isinstance(tree, list):
        return any(uses_frameworks(v) for v in tree)
    if isinstance(tree, dict):
        return f"{MARK}x" in tree or any(uses_frameworks(v) for v in tree.values())
    return False


def frameworks_in(tree: Any) -> set[str]:
    """The frameworks (of :data:`FRAMEWORKS` only) whose arrays *tree* holds: what a restore of
    it will import. A manifest read from Drive names no other module here, whatever it says.

    >>> frameworks_in({"w": {"$x": {"framework": "torch", "array": 0, "dtype": "float32"}}})
    {'torch'}
    """
    found: set[str] = set()
    stack = [tree]
    while stack:  # no recursion: a tree from Drive may be deep
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            described = node.get(f"{MARK}x") if len(node) == 1 else None
            if isinstance(described, dict):
                framework = described.get("framework")
                if framework in FRAMEWORKS:
                    found.add(framework)
            else:
                stack.extend(node.values())
    return found


def unflatten(tree: Any, arrays: list[Any]) -> Any:
    """The state that :func:`flatten` split, from its tree and arrays (framework arrays as
    :class:`FrameworkArray`)."""
    if isinstance(tree, list):
        return [unflatten(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        ((key, value),) = tree.items()
        if key == f"{MARK}a":
            return arrays[value]
        if key == f"{MARK}s":
            return arrays[value][()]
        if key == f"{MARK}f":
            return float(value)
        if key == f"{MARK}x":
            return FrameworkArray(
                value["framework"], arrays[value["array"]], value["dtype"], value.get("device")
            )
        if key == f"{MARK}t":
            return tuple(unflatten(v, arrays) for v in value)
        if key == f"{MARK}d":
            return {k: unflatten(v, arrays) for k, v in value}
    return {_unescape(k): unflatten(v, arrays) for k, v in tree.items()}


def array_paths(tree: Any) -> dict[int, tuple[Any, ...]]:
    """Where each array of *tree* (checked: see :func:`check_tree`) lies in the state that
    :func:`unflatten` builds: its index -> the keys and positions that lead to it.

    >>> array_paths({"w": {"$a": 0}, "opt": [{"$a": 1}]})
    {0: ('w',), 1: ('opt', 0)}
    """
    paths: dict[int, tuple[Any, ...]] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, list):
            for position, value in enumerate(node):
                walk(value, (*path, position))
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == f"{MARK}a":
                paths[value] = path
                return
            if key in (f"{MARK}s", f"{MARK}f"):
                return
            if key == f"{MARK}x":
                paths[value["array"]] = path
                return
            if key == f"{MARK}t":
                walk(value, path)
                return
            if key == f"{MARK}d":
                for k, item in value:
                    walk(item, (*path, k))
                return
        for k, item in node.items():
            walk(item, (*path, _unescape(k)))

    walk(tree, ())
    return paths


def check_tree(tree: Any, count: int) -> None:
    """Raise ValueError unless *tree* is a well-formed tree over *count* arrays."""
    if isinstance(tree, list):
        for value in tree:
            check_tree(value, count)
        return
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return
    if not isinstance(tree, dict):
        raise ValueError(f"a {type(tree).__name__} in the tree")
    if len(tree) == 1:
        ((key, value),) = tree.items()
        if key in (f"{MARK}a", f"{MARK}s"):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
                raise ValueError(f"the array reference {value!r} is out of range")
            return
        if key == f"{MARK}f":
            if value not in ("nan", "inf", "-inf"):
                raise ValueError(f"{value!r} is not a non-finite float")
            return
        if key == f"{MARK}x":
            _check_framework_node(value, count)
            return
        if key == f"{MARK}t":
            if not isinstance(value, list):
                raise ValueError("a tuple that is not a list")
            check_tree(value, count)
            return
        if key == f"{MARK}d":
            if not isinstance(value, list) or not all(
                isinstance(p, list)
                and len(p) == 2
                and isinstance(p[0], (int, str))
                and not isinstance(p[0], bool)
                for p in value
            ):
                raise ValueError("a dict of integer keys that is not a list of pairs")
            for _, item in value:
                check_tree(item, count)
            return
    for key, value in tree.items():
        if key.startswith(MARK) and not key.startswith(MARK * 2):
            raise ValueError(f"the unknown marker {key!r}")
        check_tree(value, count)


def _check_framework_node(value: Any, count: int) -> None:
    if not isinstance(value, dict) or not {"framework", "array", "dtype"} <= set(value):
        raise ValueError("a framework array without its framework, array and dtype")
    index, device = value["array"], value.get("device")
    if value["framework"] not in FRAMEWORKS:
        raise ValueError(f"the unknown framework {value['framework']!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ValueError(f"the array reference {index!r} is out of range")
    # Names only: they are looked up as attributes of the framework, never evaluated.
    if not isinstance(value["dtype"], str) or not value["dtype"].isidentifier():
        raise ValueError(f"the framework dtype {value['dtype']!r} is not a name")
    if device is not None and (not isinstance(device, str) or len(device) > 64):
        raise ValueError(f"the device {device!r} is not a device's name")


def dtype_name(dtype: Any) -> str:
    """A dtype's name that :func:`dtype_of` turns back into it."""
    if dtype.type.__module__.startswith("ml_dtypes"):
        return str(dtype.name)  # their .str is a bare void ("<V2") and would lose them
    return str(dtype.str)


def dtype_of(name: str) -> Any:
    """The dtype :func:`dtype_name` named (ml_dtypes' own imported only when needed)."""
    import numpy as np

    try:
        dtype = np.dtype(name)
    except Exception:  # an untrusted name: numpy raises TypeError, ValueError or worse
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError(
                f"this checkpoint holds {name} arrays, which need the ml_dtypes package: "
                "pip install ml_dtypes (TensorFlow and JAX install it)"
            ) from None
        kind = getattr(ml_dtypes, name, None) if name.isidentifier() else None
        if not isinstance(kind, type):
            raise ValueError(f"unknown dtype {name!r}") from None
        dtype = np.dtype(kind)
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"dtype {name!r} is not allowed in a checkpoint")
    if dtype.kind == "V" and not dtype.type.__module__.startswith("ml_dtypes"):
        raise ValueError(f"dtype {name!r} is not allowed in a checkpoint")
    return dtype


def write_arrays(f: IO[bytes], arrays: Iterable[Any]) -> tuple[list[ArrayInfo], int, int]:
    """Write *arrays* to *f*, each at a 64-byte boundary. Returns where each one lies, the
    file's size and its CRC32C, computed while writing."""
    import google_crc32c

    infos: list[ArrayInfo] = []
    offset, crc = 0, 0
    for array in arrays:
        pad = -offset % ALIGN
        if pad:
            zeros = bytes(pad)
            f.write(zeros)
            crc = google_crc32c.extend(crc, zeros)
            offset += pad
        for chunk in _chunks(array):
            f.write(chunk)
            crc = google_crc32c.extend(crc, chunk)
        infos.append(ArrayInfo(dtype_name(array.dtype), tuple(array.shape), offset, array.nbytes))
        offset += array.nbytes
    return infos, offset, crc


def read_arrays_from(
    readinto: Callable[[memoryview], int], size: int, infos: list[ArrayInfo]
) -> tuple[list[Any], int]:
    """The arrays that :func:`write_arrays` wrote, read in one pass through a file of *size*
    bytes of arrays (``readinto(view)`` fills *view* from the file's current position and
    returns the bytes it read), each into an array of its own, uninitialised before (no zero
    fill), so nothing of the file stays alive with any one array. Returns them and the CRC32C
    of the *size* bytes, computed chunk by chunk as they are read. Raises ValueError for a
    layout that does not fit *size*, EOFError for a file cut short."""
    import google_crc32c
    import numpy as np

    order = sorted(range(len(infos)), key=lambda i: infos[i].offset)
    arrays: list[Any] = [None] * len(infos)
    scratch = np.empty(min(CHUNK, size), np.uint8)
    position, crc = 0, 0

    def fill(flat: Any) -> None:
        nonlocal crc
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start : start + CHUNK]
            view, done = memoryview(chunk), 0
            while done < chunk.size:
                got = readinto(view[done:])
                if not got:
                    raise EOFError("the file ends before its arrays do")
                done += got
            chunk = chunk.view()
            chunk.flags.writeable = False  # google_crc32c takes read-only buffers only
            crc = google_crc32c.extend(crc, chunk)

    def skip_to(offset: int) -> None:
        nonlocal position
        while position < offset:
            step = min(offset - position, len(scratch))
            fill(scratch[:step])
            position += step

    dtypes = _check_layout(infos, order, size)  # whole, before anything is read or allocated
    for index in order:
        info = infos[index]
        skip_to(info.offset)
        array = np.empty(info.shape, dtypes[index])
        if info.nbytes:
            fill(array.reshape(-1).view(np.uint8))
        position += info.nbytes
        arrays[index] = array
    skip_to(size)
    return arrays, int(crc)


def _check_layout(infos: list[ArrayInfo], order: list[int], size: int) -> dict[int, Any]:
    """The dtype of each array, once its place is checked to lie in *size* bytes, in *order*
    (by offset) without overlaps. Raises ValueError."""
    dtypes, end = {}, 0
    for index in order:
        info = infos[index]
        dtypes[index] = dtype = dtype_of(info.dtype)
        count = math.prod(info.shape)
        if (
            min(info.shape, default=0) < 0
            or count * dtype.itemsize != info.nbytes
            or info.offset < end
            or info.offset + info.nbytes > size
        ):
            raise ValueError(f"an array of {info.dtype} {info.shape} does not fit its place")
        end = info.offset + info.nbytes
    return dtypes


def map_arrays(
    buffer: Any,
    size: int,
    infos: list[ArrayInfo],
    progress: Callable[[int], object] | None = None,
    own: Collection[int] = (),
    read_at: Callable[[Any, int], int] | None = None,
) -> tuple[list[Any], int]:
    """The arrays that :func:`write_arrays` wrote, as views into *buffer* (a memory map of the
    file, at least *size* bytes long): nothing is copied or allocated, the pages are the page
    cache's. Returns them and the CRC32C of the *size* bytes, computed chunk by chunk first
    (which reads the file in; *progress* hears of each chunk): the caller compares it before
    any view is used. Raises ValueError for a layout that does not fit *size*.

    The arrays whose index is in *own* (those the caller keeps: a fresh optimizer's moments)
    are read into memory of their own instead, in the same pass, and hashed from there: one
    pass over their bytes, not a pass to verify and another to copy. ``read_at(view, offset)``
    (a ``pread`` of the mapped file) reads each in one request; without it each is copied from
    the mapping a piece at a time, hashed from the copy while it is in the CPU cache. Reading
    is steadier: a copy from the mapping faults the file in page by page (0.17-0.37 s for the
    moments of a 256 MB state here, against 0.17 s read). The copies are not used unless the
    CRC matches, as the views are not."""
    import google_crc32c
    import numpy as np

    order = sorted(range(len(infos)), key=lambda i: infos[i].offset)
    dtypes = _check_layout(infos, order, size)
    whole = np.frombuffer(buffer, np.uint8, count=size) if size else np.empty(0, np.uint8)
    crc = 0

    def hashed(region: Any) -> None:
        nonlocal crc
        for chunk in _chunks(region):
            crc = google_crc32c.extend(crc, chunk)
            if progress is not None:
                progress(chunk.size)

    arrays: list[Any] = [None] * len(infos)
    position = 0
    for index in order:
        info = infos[index]
        if index not in own or not info.nbytes:
            continue
        hashed(whole[position : info.offset])
        array = np.empty(info.shape, dtypes[index])
        flat = array.reshape(-1).view(np.uint8)
        source = whole[info.offset : info.offset + info.nbytes]
        if read_at is not None:  # the whole array in one request, as torch.load reads it
            done = 0
            while done < info.nbytes:
                got = read_at(flat[done:], info.offset + done)
                if not got:
                    raise ValueError("the file ends before its arrays do")
                done += got
            hashed(flat)
            arrays[index] = array
            position = info.offset + info.nbytes
            continue
        for start in range(0, info.nbytes, COPY_CHUNK):
            piece = flat[start : start + COPY_CHUNK]
            piece[...] = source[start : start + COPY_CHUNK]
            piece = piece.view()
            piece.flags.writeable = False  # google_crc32c takes read-only buffers only
            crc = google_crc32c.extend(crc, piece)
            if progress is not None:
                progress(piece.size)
        arrays[index] = array
        position = info.offset + info.nbytes
    hashed(whole[position:size])
    for index in order:
        if arrays[index] is None:
            info = infos[index]
            place = whole[info.offset : info.offset + info.nbytes]
            arrays[index] = place.view(dtypes[index]).reshape(info.shape)
    return arrays, int(crc)


def crc32c(data: Any, crc: int = 0) -> int:
    """The CRC32C of *data* (bytes, bytearray or a numpy array), continuing from *crc*."""
    import google_crc32c
    import numpy as np

    view = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    for chunk in _chunks(view):
        crc = google_crc32c.extend(crc, chunk)
    return int(crc)


def _chunks(array: Any) -> Iterator[Any]:
    if hasattr(array, "chunks"):  # a frameworks.DeviceArray: copied from the GPU as written
        for chunk in array.chunks(CHUNK):
            chunk.flags.writeable = False
            yield chunk
        return
    flat = array.reshape(-1).view("uint8")
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        chunk.flags.writeable = False  # google_crc32c takes read-only buffers only
        yield chunk


def _immutable(node: Any) -> bool:
    """TensorFlow tensors (not variables) never change in place (JAX arrays do not either, but
    a jitted step may donate them: see :func:`._frameworks.stage_jax`)."""
    if isinstance(node, FileBytes):  # read by the writer: whoever hands it over keeps it
        return True
    kind = type(node)
    return kind.__module__.startswith("tensorflow") and kind.__name__ == "EagerTensor"


def _escape(key: str) -> str:
    return MARK + key if key.startswith(MARK) else key


def _unescape(key: str) -> str:
    return key[1:] if key.startswith(MARK * 2) else key
