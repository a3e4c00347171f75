"""A run's checkpoint in formats other tools read: safetensors plus JSON, or a torch.save file.

``export_checkpoint`` writes one checkpoint of a run out; ``import_checkpoint`` takes such a file
(or one another tool wrote) into a run as a colabsession checkpoint. Both go through the
checkpoint's own tree (:mod:`._serialize`): the safetensors file holds the arrays, each under the
dotted path of its place in the state (``model.fc.weight``, ``optimizer.state.0.exp_avg``), and
the JSON beside it holds everything else: the tree, with each array's index into ``tensors``
(the names in the safetensors file), numbers, strings, tuples, dicts of integer keys, and the
step and metrics. The safetensors file is written and read here (its format is a length, a JSON
header and the raw bytes), so every dtype colabsession keeps goes through bit-exact (bfloat16,
float8, ...), and an imported file is checked before anything of it is used: offsets inside the
file, no overlaps, known dtypes, sizes that match. A ``torch.save`` file is read with
``torch.load(weights_only=True)``, which runs no code.

Files are written under a temporary name and renamed into place, the JSON last.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.files import reason
from colabsession._core.optional import require
from colabsession._core.records import InvalidRecord, Record, parse_record, read_json
from colabsession._drive.location import Location
from colabsession._storage.frameworks import to_frameworks
from colabsession._storage.serialize import MARK, check_tree, dtype_of, flatten, host_arrays

Format = Literal["safetensors", "torch"]
FORMATS: tuple[str, ...] = ("safetensors", "torch")
MAX_HEADER = 100 << 20  # a safetensors header's size; the format's own readers refuse larger

# safetensors' dtype names by the name numpy, ml_dtypes and torch give the dtype
_TO_SAFETENSORS = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "bfloat16": "BF16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "uint64": "U64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
}
_FROM_SAFETENSORS = {v: k for k, v in _TO_SAFETENSORS.items()}
_INTEGER_OF_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


@dataclass(frozen=True)
class ExportRecord(Record):
    """The JSON written beside an exported safetensors file: the state's tree, the names of its
    arrays in the safetensors file (``tensors[i]`` is array ``i`` of the tree), its step and
    metrics."""

    KIND: ClassVar[str] = "colabsession-export"
    step: int
    metrics: dict[str, Any]
    tree: Any
    tensors: list[str]


def json_beside(path: str | os.PathLike[str]) -> Path:
    """The JSON that goes with a safetensors file: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def format_of(path: str | os.PathLike[str], format: str | None) -> Format:
    """*format*, or the one *path*'s suffix says (``.safetensors``; else a torch.save file)."""
    if format is None:
        return "safetensors" if Path(path).suffix == ".safetensors" else "torch"
    if format not in FORMATS:
        raise ConfigError(f"format must be 'safetensors' or 'torch', not {format!r}", name="format")
    return format  # type: ignore[return-value]


def export_checkpoint(
    run: str | os.PathLike[str] | Location,
    path: str | os.PathLike[str],
    *,
    step: int | None = None,
    format: Format | None = None,
) -> Path:
    """Write the *run*'s newest checkpoint (or that of *step*) to *path*, for tools other than
    colabsession; returns *path*. *format* (default: from the suffix): ``"safetensors"``
    writes the arrays to *path* and the rest of the state (its structure, numbers, strings,
    step, metrics) to a JSON beside it (``model.json`` for ``model.safetensors``);
    ``"torch"`` writes one ``torch.save`` file of the state as :meth:`Checkpointer.restore`
    gives it, numpy arrays turned into tensors (``torch.load(path, weights_only=True)``
    reads it). :func:`import_checkpoint` takes either back, bit for bit.

    >>> cs.export_checkpoint("my-run", "model.safetensors")        # doctest: +SKIP
    PosixPath('model.safetensors')
    >>> from safetensors.torch import load_file                     # doctest: +SKIP
    >>> load_file("model.safetensors")["model.fc.weight"].dtype     # doctest: +SKIP
    torch.bfloat16
    """
    from colabsession._storage.checkpointer import Checkpointer
    from colabsession._storage.runs import require_run

    kind = format_of(path, format)
    out = Path(path)
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: the folder {out.parent} does not exist")
    if kind == "torch":
        require("torch", extra="torch", purpose="exporting to a torch.save file")
    ckpt = Checkpointer(run, every=None)
    try:
        found = ckpt.restore(step)
        if found is None:
            require_run(ckpt.location)
            raise CheckpointError(
                f"{ckpt.location} has no checkpoint to export (only its history)",
                path=str(ckpt.location),
            )
        state = found.state
        if _is_job_checkpoint(state):
            # A torchrun job's: its state names the ranks' DCP files, which hold the model and
            # optimizer, sharded. (The job checkpointer's module needs torch.)
            from colabsession._training.distributed import export_job_checkpoint

            torch_out = out if kind == "torch" else out.with_name(f".{out.name}.pt")
            export_job_checkpoint(found, torch_out, local_dir=ckpt.local_dir, remote=ckpt.remote)
            if kind == "torch":
                return out
            try:
                _write_safetensors(_read_torch(torch_out), found.step, dict(found.metrics), out)
            finally:
                torch_out.unlink(missing_ok=True)
            return out
    finally:
        ckpt.close()
    if kind == "torch":
        _write_torch(state, out)
    else:
        _write_safetensors(state, found.step, dict(found.metrics), out)
    return out


def _is_job_checkpoint(state: Any) -> bool:
    """Whether *state* is a JobCheckpointer's (told for sure once torch is imported)."""
    if not (isinstance(state, dict) and str(state.get("kind", "")).startswith("colabsession-dcp")):
        return False
    require("torch", extra="torch", purpose="exporting a torchrun job's checkpoint")
    from colabsession._training.distributed import is_job_checkpoint

    return is_job_checkpoint(state)


def import_checkpoint(
    path: str | os.PathLike[str],
    run: str | os.PathLike[str] | Location,
    *,
    step: int | None = None,
    format: Format | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    """Save the state in *path* as a checkpoint of *run* (a new run, or one without
    checkpoints: an import never sets aside what a run holds); returns its step. *path* is
    a safetensors file, with the JSON :func:`export_checkpoint` writes beside it or alone (its
    tensors as a flat dict of PyTorch tensors, by name), or a ``torch.save`` file, read with
    ``weights_only=True``. *step* defaults to the exported one (0 for a file without it);
    *metrics* to the exported ones. Everything is checked before it is used: a file that is
    not what it says is a CheckpointError, and nothing is written.

    >>> cs.import_checkpoint("model.safetensors", "fine-tune")     # doctest: +SKIP
    1200
    >>> cs.Checkpointer("fine-tune").restore().step                # doctest: +SKIP
    1200
    """
    from colabsession._storage.checkpointer import Checkpointer

    source = Path(path)
    kind = format_of(source, format)
    if not source.is_file():
        raise ConfigError(f"cannot import {source}: there is no such file")
    saved_step: int | None = None
    saved_metrics: dict[str, Any] = {}
    if kind == "torch":
        state = _read_torch(source)
    else:
        state, saved_step, saved_metrics = _read_safetensors(source)
    chosen = step if step is not None else (saved_step if saved_step is not None else 0)
    ckpt = Checkpointer(run, every=None, async_save=False)
    try:
        existing = ckpt.steps()
        if existing:
            raise CheckpointError(
                f"{ckpt.location} has checkpoints already (steps {existing[0]}..{existing[-1]}): "
                "import into a new run, so that none of them is set aside",
                path=str(ckpt.location),
            )
        ckpt.save(chosen, state, metrics=saved_metrics if metrics is None else metrics)
    finally:
        ckpt.close()
    return chosen


# safetensors -------------------------------------------------------------------------------


def _write_safetensors(state: Any, step: int, metrics: dict[str, Any], out: Path) -> None:
    import numpy as np

    tree, leaves = flatten(state, copy=False)
    arrays = host_arrays(leaves)
    kinds = _array_dtypes(tree, len(arrays))
    names = _array_names(tree, len(arrays))
    header: dict[str, Any] = {"__metadata__": {"format": "colabsession"}}
    offset = 0
    blobs: list[Any] = []
    for index, array in enumerate(arrays):
        dtype = kinds[index] or array.dtype.name
        code = _TO_SAFETENSORS.get(dtype)
        if code is None:
            raise CheckpointError(
                f"the array {names[index]} is of {dtype}, which safetensors does not hold: "
                "export to a torch.save file instead (format='torch')"
            )
        # The array's own bytes, little-endian as the format wants, copied only if not so
        data = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        header[names[index]] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        blobs.append(data.reshape(-1).view(np.uint8))
        offset += data.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data at 8 bytes with spaces
    record = ExportRecord(step=step, metrics=metrics, tree=tree, tensors=names)
    side = json_beside(out)
    _replace(out, lambda f: _write_all(f, [struct.pack("<Q", len(head)), head, *blobs]))
    _replace(side, lambda f: f.write(record.to_json(indent=1)))


def _read_safetensors(path: Path) -> tuple[Any, int | None, dict[str, Any]]:
    try:
        with open(path, "rb") as f:  # into a buffer the arrays are views of, without a copy
            data = bytearray(os.fstat(f.fileno()).st_size)
            data = data[: f.readinto(data)]
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {reason(exc)}", path=str(path)) from None
    try:
        tensors = _parse_safetensors(data)
    except ValueError as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}); nothing was imported",
            path=str(path),
        ) from None
    side = json_beside(path)
    if not side.exists():  # another tool's file: a flat dict of tensors
        state = {name: _as_torch_node(code, raw) for name, (code, raw) in tensors.items()}
        return to_frameworks(state), None, {}
    try:
        record = parse_record(ExportRecord, side.read_bytes(), what=str(side))
        check_tree(record.tree, len(record.tensors))
        if not all(isinstance(n, str) for n in record.tensors):
            raise InvalidRecord("its tensors are not all names")
        missing = [n for n in record.tensors if n not in tensors]
        if missing:
            raise InvalidRecord(f"it names {missing[0]!r}, which {path.name} does not hold")
    except (InvalidRecord, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{side} does not describe {path.name} ({exc}); nothing was imported", path=str(side)
        ) from None
    kinds = _array_dtypes(record.tree, len(record.tensors))
    frameworks = _array_frameworks(record.tree, len(record.tensors))
    arrays = []
    for index, name in enumerate(record.tensors):
        code, raw = tensors[name]
        arrays.append(_array(code, raw, kinds[index], frameworks[index]))
    from colabsession._storage.serialize import unflatten

    return to_frameworks(unflatten(record.tree, arrays)), record.step, dict(record.metrics)


def _parse_safetensors(data: bytearray) -> dict[str, tuple[str, Any]]:
    """name -> (dtype code, numpy array of the raw values) of a safetensors file, checked."""
    import numpy as np

    if len(data) < 8:
        raise ValueError("it is shorter than its header's length")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER, len(data) - 8):
        raise ValueError(f"its header says it is {size} bytes long")
    try:
        header = read_json(bytes(data[8 : 8 + size]), what="its header", max_depth=8)
    except InvalidRecord as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    body = memoryview(data)[8 + size :]
    spans = []
    out: dict[str, tuple[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"the entry {name!r} is not an object")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if code not in _FROM_SAFETENSORS:
            raise ValueError(f"{name!r} has the dtype {code!r}, which colabsession does not know")
        if not (
            isinstance(shape, list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        ):
            raise ValueError(f"{name!r} has no valid shape and data_offsets")
        begin, end = offsets
        stored = np.dtype(_INTEGER_OF_SIZE[_SIZES[code]]).newbyteorder("<")
        if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * stored.itemsize:
            raise ValueError(f"{name!r} does not fit its place in the file")
        spans.append((begin, end))
        raw = np.frombuffer(body[begin:end], dtype=stored).reshape(shape)
        out[name] = (code, raw)
    spans.sort()
    for (_, end), (begin, _) in itertools.pairwise(spans):
        if begin < end:
            raise ValueError("two tensors overlap")
    return out


_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def _array(code: str, raw: Any, dtype: str | None, framework: str | None) -> Any:
    """The array a checkpoint's tree expects at a place: *raw* (integers of the dtype's size)
    seen as the dtype the file says, as numpy (or ml_dtypes) has it, or for a PyTorch tensor
    whose dtype numpy lacks, as the integers its restore views."""
    name = _FROM_SAFETENSORS[code]
    if dtype is not None and _TO_SAFETENSORS.get(dtype) != code:
        raise CheckpointError(f"an array of {dtype} is stored as {code}: the export is damaged")
    if framework == "torch" and name in ("bfloat16", "float8_e5m2", "float8_e4m3fn"):
        return raw
    return raw.view(dtype_of(name))


def _as_torch_node(code: str, raw: Any) -> Any:
    from colabsession._storage.frameworks import FrameworkArray

    return FrameworkArray("torch", _array(code, raw, None, "torch"), _FROM_SAFETENSORS[code], None)


def _array_places(tree: Any, count: int) -> list[tuple[str, dict[str, Any] | None]]:
    """(dotted path, framework node or None) of each array of *tree*, by index."""
    places: list[tuple[str, dict[str, Any] | None]] = [("", None)] * count

    def visit(node: Any, path: list[str]) -> None:
        if isinstance(node, list):
            for i, value in enumerate(node):
                visit(value, [*path, str(i)])
            return
        if not isinstance(node, dict):
            return
        if len(node) == 1:
            ((key, value),) = node.items()
            if key in (f"{MARK}a", f"{MARK}s"):
                places[value] = (".".join(path), None)
                return
            if key == f"{MARK}x":
                places[value["array"]] = (".".join(path), value)
                return
            if key == f"{MARK}t":
                visit(value, path)
                return
            if key == f"{MARK}d":
                for k, v in value:
                    visit(v, [*path, str(k)])
                return
            if key == f"{MARK}f":
                return
        for key, value in node.items():
            visit(value, [*path, key[1:] if key.startswith(MARK * 2) else key])

    visit(tree, [])
    return places


def _array_names(tree: Any, count: int) -> list[str]:
    """A unique name for each array: its dotted path in the state."""
    names: list[str] = []
    seen: set[str] = set()
    for index, (path, _) in enumerate(_array_places(tree, count)):
        name = path or "state"
        if name in seen:
            name = f"{name}#{index}"
        seen.add(name)
        names.append(name)
    return names


def _array_dtypes(tree: Any, count: int) -> list[str | None]:
    """The framework dtype of each array of *tree* (None: a numpy array, its own dtype)."""
    return [str(node["dtype"]) if node else None for _, node in _array_places(tree, count)]


def _array_frameworks(tree: Any, count: int) -> list[str | None]:
    return [str(node["framework"]) if node else None for _, node in _array_places(tree, count)]


# torch.save ----------------------------------------------------------------------------------


def _write_torch(state: Any, out: Path) -> None:
    torch = require("torch", extra="torch", purpose="exporting to a torch.save file")
    tensors = _as_tensors(state, torch)
    _replace(out, lambda f: torch.save(tensors, f))


def _as_tensors(node: Any, torch: Any) -> Any:
    """*node* with numpy arrays and scalars (and JAX arrays) as tensors, which
    ``torch.load(weights_only=True)`` reads (it refuses numpy's)."""
    import numpy as np

    if isinstance(node, dict):
        return {k: _as_tensors(v, torch) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_tensors(v, torch) for v in node]
    if isinstance(node, tuple):
        return tuple(_as_tensors(v, torch) for v in node)
    if isinstance(node, torch.Tensor) or node is None or isinstance(node, (bool, int, float, str)):
        return node
    array = np.asarray(node)
    name = array.dtype.name
    if name in ("bfloat16", "float8_e5m2", "float8_e4m3fn"):
        size = array.dtype.itemsize
        return torch.from_numpy(array.view(_INTEGER_OF_SIZE[size]).copy()).view(
            getattr(torch, name)
        )
    return torch.from_numpy(np.array(array, copy=True))


def _read_torch(path: Path) -> Any:
    torch = require("torch", extra="torch", purpose="importing a torch.save file")
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a torch.save file of tensors, numbers, strings and containers "
            f"that torch.load(weights_only=True) reads ({first}); nothing was imported",
            path=str(path),
        ) from None


# Files ---------------------------------------------------------------------------------------


def _replace(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write *path* whole with ``write(f)`` under a temporary name, then rename it into place."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_all(f: IO[bytes], parts: list[Any]) -> None:
    for part in parts:
        f.write(part)
