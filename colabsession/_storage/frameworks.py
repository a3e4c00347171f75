"""PyTorch tensors and JAX arrays in a checkpoint: staged to host memory when saved, given back as
tensors of their framework, dtype and (where asked) device when restored.

Neither framework is imported here unless the state holds its objects: a tensor in a state means
its framework is already loaded (``sys.modules``), and a restore imports the framework only when
the checkpoint holds its arrays.

Saving copies a GPU tensor into a pinned host buffer without waiting (the copy is queued on the
tensor's stream, after the step that computed it and before any later one that changes it); the
background writer waits for the copies to land. PyTorch dtypes that numpy lacks (bfloat16, the
float8 kinds) are stored as integers of their size and viewed back, so no extra package is needed.
"""

from __future__ import annotations

import logging
import mmap
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from colabsession._core.errors import CheckpointError, ConfigError
from colabsession._core.optional import require

logger = logging.getLogger(__name__)

SAVED = "saved"
"""``restore(device="saved")``: each tensor back on the device it was saved from."""


@dataclass
class _Pending:
    """A host buffer that a GPU copy is still filling: ``events`` say when it has."""

    tensor: Any
    events: tuple[Any, ...]

    def wait(self) -> Any:
        for event in self.events:
            event.synchronize()
        return self.tensor


@dataclass(frozen=True)
class FrameworkArray:
    """A framework's array as read back, still a numpy array: this module turns it into
    a tensor of its framework when the checkpoint is restored (not when it is only verified)."""

    framework: str
    array: Any
    dtype: str
    device: str | None


def loaded_torch() -> Any:
    """The torch module if the program imported it, else None (never imports it)."""
    torch = sys.modules.get("torch")
    return torch if hasattr(torch, "Tensor") else None


def is_jax_array(node: Any) -> bool:
    jax = sys.modules.get("jax")
    array = getattr(jax, "Array", None)
    return isinstance(array, type) and isinstance(node, array)


def describe(node: Any, index: int) -> dict[str, Any]:
    """The tree's record of framework array *node*, stored as array *index*."""
    if is_jax_array(node):
        devices = node.devices()
        device = None
        if len(devices) == 1:
            (one,) = devices
            device = f"{one.platform}:{one.id}"
        return {"framework": "jax", "array": index, "dtype": str(node.dtype), "device": device}
    return {
        "framework": "torch",
        "array": index,
        "dtype": str(node.dtype).removeprefix("torch."),
        "device": str(node.device),
    }


def stage_tensor(node: Any, where: str, spare: Any, copy: bool) -> tuple[Any, int | None]:
    """A host copy of tensor *node* (into *spare* when it fits) and the CUDA device whose stream
    still copies into it, if any. Without *copy* the tensor itself where it is on the CPU."""
    tensor = savable_tensor(node, where)
    if not copy:
        return (tensor if tensor.device.type == "cpu" else tensor.cpu()), None
    return copy_tensor(tensor, spare)


def savable_tensor(node: Any, where: str) -> Any:
    """Tensor *node* detached, where it is, its lazy conjugate or negation resolved; raises
    CheckpointError for a tensor that has no one dense array to store."""
    torch = sys.modules["torch"]
    if node.is_nested:
        raise CheckpointError(
            f"state{where} is a nested tensor, which has no one shape to store: save its parts "
            "(list(t.unbind())) or a padded tensor (t.to_padded_tensor(0.0)) and rebuild it "
            "after restoring (torch.nested.nested_tensor(parts))"
        )
    if _is_dtensor(node):
        raise CheckpointError(
            f"state{where} is a DTensor (sharded over a device mesh): colabsession saves whole "
            "tensors. Gather the state first (torch.distributed.checkpoint.state_dict's "
            "get_state_dict(..., options=StateDictOptions(full_state_dict=True))) or save it "
            "with torch.distributed.checkpoint (DCP); sharded states are not supported yet"
        )
    if node.layout != torch.strided or node.is_quantized:
        raise CheckpointError(
            f"state{where} is a {node.layout} tensor{' (quantized)' if node.is_quantized else ''}"
            ": save a dense one (.to_dense(), or .dequantize())"
        )
    if node.device.type == "meta":
        raise CheckpointError(f"state{where} is a tensor on the meta device: it holds no data")
    tensor = node.detach()
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor


def copy_tensor(tensor: Any, spare: Any) -> tuple[Any, int | None]:
    """A host copy of the :func:`savable_tensor` *tensor* (into *spare* when it fits) and the
    CUDA device whose stream still copies into it, if any."""
    torch = sys.modules["torch"]
    cuda = tensor.device.type == "cuda"
    if not (
        isinstance(spare, torch.Tensor)
        and spare.device.type == "cpu"
        and spare.shape == tensor.shape
        and spare.dtype == tensor.dtype
        and spare.is_contiguous()
    ):
        spare = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=cuda)
    spare.copy_(tensor, non_blocking=cuda)
    return spare, (tensor.device.index or 0) if cuda else None


def stage_jax(node: Any) -> Any:
    """A copy of JAX array *node* on its own device(s), queued without waiting.

    A JAX array never changes in place, but a jitted step may donate it (Keras on JAX does),
    which deletes it: the copy is JAX's own, so the step's donation waits for it, and the
    writer fetches the copy to the host in the background. Fetching it here instead (what
    colabsession did before) held the training thread for a full device-to-host transfer."""
    jax = sys.modules["jax"]
    try:
        copy = jax.device_put(node, node.sharding, may_alias=False)
    except TypeError:  # JAX before 0.4.34 has no may_alias: its copy waits for the data
        copy = jax.numpy.array(node, copy=True)
    return _DeviceCopy(copy)


class _DeviceCopy:
    """A JAX array's copy on its device until the writer fetches it: fetching lets go of it,
    so that device memory is not held after the write (the staged leaves outlive it)."""

    def __init__(self, array: Any) -> None:
        self.array: Any = array

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        import numpy as np

        array, self.array = self.array, None
        if array is None:
            raise CheckpointError("a JAX array staged for a save was fetched twice")
        return np.asarray(array, dtype=dtype)


def _is_dtensor(node: Any) -> bool:
    for module in ("torch.distributed.tensor", "torch.distributed._tensor"):
        kind = getattr(sys.modules.get(module), "DTensor", None)
        if isinstance(kind, type) and isinstance(node, kind):
            return True
    return False


def after_device_copies(leaves: list[Any], devices: set[int]) -> list[Any]:
    """*leaves* with their tensors marked as pending until the copies queued on *devices*
    have run (one event per device, recorded now on its current stream)."""
    torch = sys.modules["torch"]
    events = []
    for index in sorted(devices):
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(index))
        events.append(event)
    marked = tuple(events)
    return [_Pending(leaf, marked) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]


def pending(leaf: Any, device: int) -> Any:
    """*leaf*, a host buffer that a copy queued on CUDA *device*'s current stream fills, marked
    as pending until that copy has run."""
    torch = sys.modules["torch"]
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return _Pending(leaf, (event,))


def tensor_bytes(tensor: Any) -> int:
    return int(tensor.numel()) * int(tensor.element_size())


class DeviceArray:
    """A tensor in GPU memory written without a host copy of its own: :meth:`chunks` copies it
    to the host a chunk at a time (for a tensor larger than the memory budget of a save, which
    the caller leaves untouched until it is written)."""

    def __init__(self, tensor: Any) -> None:
        torch = sys.modules["torch"]
        self.tensor = tensor.contiguous()
        size = tensor.element_size()
        try:
            self.dtype = torch.empty(0, dtype=tensor.dtype).numpy().dtype
        except (TypeError, RuntimeError):  # bfloat16, float8_*: stored as integers of their size
            if size not in _INTEGER_OF_SIZE:
                raise CheckpointError(f"cannot save a tensor of {tensor.dtype}") from None
            self.dtype = torch.empty(0, dtype=getattr(torch, _INTEGER_OF_SIZE[size])).numpy().dtype
        self.shape = tuple(tensor.shape)
        self.nbytes = tensor_bytes(tensor)

    def chunks(self, size: int) -> Any:
        torch = sys.modules["torch"]
        flat = self.tensor.reshape(-1).view(torch.uint8)
        for start in range(0, flat.numel(), size):
            yield flat[start : start + size].cpu().numpy()


def unwrap(leaf: Any) -> Any:
    """A staged leaf without its pending mark (to reuse its buffer)."""
    return leaf.tensor if isinstance(leaf, _Pending) else leaf


_INTEGER_OF_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def host_view(leaf: Any) -> Any:
    """A staged leaf as something numpy takes: tensors as numpy views of their host memory
    (dtypes numpy lacks as integers of their size), after any GPU copy into them has landed."""
    if isinstance(leaf, _Pending):
        leaf = leaf.wait()
    torch = loaded_torch()
    if torch is None or not isinstance(leaf, torch.Tensor):
        return leaf
    tensor = leaf.cpu().contiguous()
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError):  # bfloat16, float8_*, ...: numpy has no such dtype
        size = tensor.element_size()
        if size not in _INTEGER_OF_SIZE:
            raise CheckpointError(f"cannot save a tensor of {tensor.dtype}") from None
        return tensor.view(getattr(torch, _INTEGER_OF_SIZE[size])).numpy()


# Restoring ------------------------------------------------------------------------------------


def holds_frameworks(state: Any) -> bool:
    if isinstance(state, FrameworkArray):
        return True
    if isinstance(state, dict):
        return any(holds_frameworks(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(holds_frameworks(v) for v in state)
    return False


def to_frameworks(state: Any, device: Any = None) -> Any:
    """*state* as read, with each framework array turned into its framework's tensor.

    *device*: None puts PyTorch tensors on the CPU (``load_state_dict`` copies them where the
    model is) and JAX arrays on JAX's default device; ``"saved"`` puts each back on the device
    it was saved from where this runtime has it (else as for None, said once); any other value
    is a device for every tensor of the state (``"cuda"``, a ``torch.device``, a JAX device).
    """
    if not holds_frameworks(state):
        return state
    placer = _Placer(device)
    return _convert(state, placer)


def _convert(node: Any, placer: _Placer) -> Any:
    if isinstance(node, FrameworkArray):
        return placer.torch(node) if node.framework == "torch" else placer.jax(node)
    if isinstance(node, dict):
        return {k: _convert(v, placer) for k, v in node.items()}
    if isinstance(node, list):
        return [_convert(v, placer) for v in node]
    if isinstance(node, tuple):
        return tuple(_convert(v, placer) for v in node)
    return node


class _Placer:
    """Turns framework arrays into tensors on the device a restore asked for."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.missing: set[str] = set()

    def torch(self, node: FrameworkArray) -> Any:
        torch = require("torch", extra="torch", purpose="restoring a checkpoint of PyTorch tensors")
        dtype = getattr(torch, node.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(
                f"this checkpoint holds tensors of torch.{node.dtype}, which this PyTorch "
                f"{torch.__version__} does not know: upgrade torch"
            )
        tensor = torch.from_numpy(_native(node.array))
        if tensor.dtype != dtype:
            if tensor.element_size() != dtype.itemsize:
                raise CheckpointError(
                    f"a tensor of torch.{node.dtype} was stored as {node.array.dtype}: the "
                    "checkpoint is damaged"
                )
            tensor = tensor.view(dtype)
        target = self._torch_device(torch, node.device)
        return tensor if target is None else tensor.to(target)

    def _torch_device(self, torch: Any, saved: str | None) -> Any:
        if self.device is None:
            return None
        asked = self.device != SAVED
        wanted = self.device if asked else saved
        if wanted is None or str(wanted) == "cpu":
            return None
        try:
            device = torch.device(wanted)
        except (RuntimeError, TypeError, ValueError):
            return self._absent(str(wanted), asked)
        if device.type == "cpu":
            return device
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if not callable(available) or not available():
            return self._absent(str(wanted), asked)
        count = getattr(backend, "device_count", lambda: 1)()
        if (device.index or 0) >= count:
            return self._absent(str(wanted), asked)
        return device

    def jax(self, node: FrameworkArray) -> Any:
        jax = require("jax", extra="jax", purpose="restoring a checkpoint of JAX arrays")
        array = _native(node.array)
        if str(array.dtype) != node.dtype:
            raise CheckpointError(
                f"a JAX array of {node.dtype} was stored as {array.dtype}: the checkpoint is "
                "damaged"
            )
        device = self.device
        if device == SAVED:
            device = self._jax_device(jax, node.device)
        elif isinstance(device, str):
            device = self._jax_device(jax, device)
        return jax.device_put(array, device)

    def _jax_device(self, jax: Any, saved: str | None) -> Any:
        if saved is None:
            return None
        platform, _, index = saved.partition(":")
        try:
            return next(d for d in jax.devices(platform) if str(d.id) == (index or "0"))
        except (RuntimeError, StopIteration):  # jax.devices raises for a platform it lacks
            return self._absent(saved)

    def _absent(self, device: str, asked: bool = False) -> None:
        """None (the default device), saying once that *device* is not here: as for a
        ``device="saved"`` that this runtime lacks, an asked-for ``device="cuda"`` on a CPU
        runtime restores to the CPU, so a notebook re-run without its GPU still resumes."""
        if device not in self.missing:
            self.missing.add(device)
            logger.warning(
                "colabsession: %s %s, which this runtime does not have: restoring them to the "
                "default device (the CPU for PyTorch) instead",
                "restore(device=...) asked for" if asked else "this checkpoint's tensors were on",
                device,
            )
        return None


def _native(array: Any) -> Any:
    """*array* in this machine's byte order: a checkpoint written on a machine of the other
    order (or by hand) holds valid values that torch and JAX take only in native order."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


# Rebuilding into a template -----------------------------------------------------------------


def into(like: Any, state: Any, where: str = "", *, place: bool = True) -> Any:
    """*state* (plain dicts, lists and tuples, as restored) rebuilt in the structure of *like*:
    its named tuples (optax states), mappings, registered JAX pytree nodes (flax structs), and
    each leaf checked against *like*'s shape and dtype and put where *like*'s leaf lies (its
    device, or its JAX sharding). Without *place* the leaves stay where they are: a check of
    the whole state that moves nothing."""
    if isinstance(like, Mapping) and not isinstance(like, dict) and _is_pytree_node(like):
        # flax FrozenDict and kin: by their own flattening
        return _into_node(like, state, where, place)
    if isinstance(like, Mapping):
        if not isinstance(state, Mapping):
            raise _mismatch(where, "a dict", state)
        missing = [k for k in like if k not in state]
        if missing:
            raise CheckpointError(
                f"the checkpoint's state{where} lacks {missing}: it was saved from another "
                "structure than like="
            )
        items = {k: into(v, state[k], f"{where}[{k!r}]", place=place) for k, v in like.items()}
        try:
            return type(like)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(like, (list, tuple)):
        if not isinstance(state, (list, tuple)) or len(state) != len(like):
            raise _mismatch(where, f"a sequence of {len(like)}", state)
        pairs = enumerate(zip(like, state, strict=True))
        children = [into(a, b, f"{where}[{i}]", place=place) for i, (a, b) in pairs]
        if isinstance(like, tuple) and hasattr(like, "_fields"):
            return type(like)(*children)
        return type(like)(children)
    if like is None or isinstance(like, (bool, int, float, str)):
        return state
    if _is_pytree_node(like):
        return _into_node(like, state, where, place)
    return _place(like, state, where, place)


def _is_pytree_node(node: Any) -> bool:
    jax = sys.modules.get("jax")
    if jax is None or is_jax_array(node):
        return False
    treedef = jax.tree_util.tree_structure(node, is_leaf=lambda x: x is not node)
    return not jax.tree_util.treedef_is_leaf(treedef)


def pytree_children(node: Any) -> list[Any] | None:
    """The children of a registered JAX pytree node (a flax struct, say), or None when *node*
    is not one (JAX not loaded, or a leaf)."""
    if not _is_pytree_node(node):
        return None
    jax = sys.modules["jax"]
    children: list[Any] = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
    return children


def _into_node(like: Any, state: Any, where: str, place: bool) -> Any:
    jax = sys.modules["jax"]
    children, treedef = jax.tree_util.tree_flatten(like, is_leaf=lambda x: x is not like)
    if not isinstance(state, (list, tuple)) or len(state) != len(children):
        raise _mismatch(where, f"{type(like).__name__} of {len(children)} children", state)
    pairs = enumerate(zip(children, state, strict=True))
    rebuilt = [into(c, s, f"{where}[{i}]", place=place) for i, (c, s) in pairs]
    return jax.tree_util.tree_unflatten(treedef, rebuilt)


def _place(like: Any, value: Any, where: str, place: bool = True) -> Any:
    if not _fits(like, value):
        raise CheckpointError(
            f"the checkpoint's state{where} is {_kind(value)}, like= has {_kind(like)}: it was "
            "saved from another model or setting"
        )
    if not place:
        return value
    if is_jax_array(like):
        return sys.modules["jax"].device_put(value, like.sharding)
    torch = loaded_torch()
    if torch is not None and isinstance(like, torch.Tensor) and isinstance(value, torch.Tensor):
        return value.to(like.device)
    return value


def _fits(like: Any, value: Any) -> bool:
    shape, dtype = getattr(like, "shape", None), getattr(like, "dtype", None)
    return shape is None or (
        tuple(getattr(value, "shape", ())) == tuple(shape)
        and str(getattr(value, "dtype", "")) == str(dtype)
    )


# Restoring from a mapped file ---------------------------------------------------------------


def mapped_span(state: Any) -> tuple[int, int] | None:
    """The addresses that the arrays of a lazily loaded *state* (views into a memory map of
    its file: see ``Store.load(lazy=True)``) span, or None when none of them is such a view."""
    import numpy as np

    low, high = None, None
    for array in _arrays(state):
        if not isinstance(array, np.ndarray) or not _views_map(array):
            continue
        start = int(array.__array_interface__["data"][0])
        low = start if low is None else min(low, start)
        high = start + array.nbytes if high is None else max(high, start + array.nbytes)
    return None if low is None or high is None else (low, high)


def _arrays(state: Any) -> Iterator[Any]:
    if isinstance(state, FrameworkArray):
        yield state.array
    elif isinstance(state, dict):
        for value in state.values():
            yield from _arrays(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _arrays(value)
    else:
        yield state


def _views_map(array: Any) -> bool:
    import numpy as np

    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


def checkpoint_maps() -> list[tuple[int, int]] | None:
    """The address ranges where checkpoint files (``*.ckpt``) are mapped into this process
    (from Linux's /proc/self/maps), or None where that cannot be told."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].removesuffix(" (deleted)").endswith(".ckpt"):
            low, _, high = fields[0].partition("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def in_maps(value: Any, maps: list[tuple[int, int]] | None) -> bool:
    """Whether the tensor or numpy array *value* lies in *maps* (:func:`checkpoint_maps`;
    None: it may)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        address = int(value.__array_interface__["data"][0])
    elif getattr(value, "device", None) is not None and str(value.device) == "cpu":
        address = int(value.data_ptr())
    else:
        return False
    return maps is None or any(low <= address < high for low, high in maps)


def unmapped(state: Any, span: tuple[int, int] | None) -> Any:
    """*state* (plain dicts, lists and tuples) with a copy of its own of every array and CPU
    tensor that lies in *span* (a mapping of the file it was read from: see
    :func:`mapped_span`), so that nothing of the file stays alive with it. The arrays of
    PyTorch's :class:`FrameworkArray` are left as they are: they become tensors first, and
    those that go into tensors of their destination (:func:`fill`) are never copied twice."""
    import numpy as np

    if span is None:
        return state
    low, high = span

    def inside(address: int) -> bool:
        return low <= address < high

    def visit(node: Any) -> Any:
        if isinstance(node, FrameworkArray):
            if node.framework == "torch":
                return node
            return FrameworkArray(node.framework, visit(node.array), node.dtype, node.device)
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        if isinstance(node, list):
            return [visit(v) for v in node]
        if isinstance(node, tuple):
            return tuple(visit(v) for v in node)
        if isinstance(node, np.ndarray) and inside(int(node.__array_interface__["data"][0])):
            return np.array(node, copy=True)
        torch = loaded_torch()
        if (
            torch is not None
            and isinstance(node, torch.Tensor)
            and node.device.type == "cpu"
            and node.numel()
            and inside(int(node.data_ptr()))
        ):
            return node.clone()
        return node

    return visit(state)


def fill(like: Any, state: Any, span: tuple[int, int] | None) -> Any:
    """*state* (as restored: plain dicts, lists and tuples of tensors) with the values of each
    PyTorch tensor that fits the tensor of *like* at its place (shape and dtype) copied into
    that tensor, in place, which then stands in the state for it: the destination's memory
    is reused and nothing is allocated for it. Every other array that lies in *span* gets a
    copy of its own (:func:`unmapped`). Check the whole state first (``into(..., place=False)``):
    a state that does not fit must leave *like* as it was."""
    torch = loaded_torch()
    # Plain dicts, lists and tuples are walked here whether JAX is loaded or not (with JAX
    # loaded every one of them is a pytree node too); other containers only when not pytrees.
    if (
        isinstance(like, Mapping)
        and isinstance(state, dict)
        and (type(like) is dict or not _is_pytree_node(like))
    ):
        return {
            k: fill(like[k], v, span) if k in like else unmapped(v, span) for k, v in state.items()
        }
    if (
        isinstance(like, (list, tuple))
        and isinstance(state, (list, tuple))
        and len(like) == len(state)
        and (type(like) in (list, tuple) or not _is_pytree_node(like))
    ):
        children = [fill(a, b, span) for a, b in zip(like, state, strict=True)]
        return tuple(children) if isinstance(state, tuple) else children
    if (
        torch is not None
        and isinstance(like, torch.Tensor)
        and isinstance(state, torch.Tensor)
        and _fits(like, state)
    ):
        if state.data_ptr() != like.data_ptr() or state.device != like.device:
            with torch.no_grad():
                like.copy_(state)
        return like
    return unmapped(state, span)


def _kind(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype} {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _mismatch(where: str, wanted: str, state: Any) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint's state{where} is {_kind(state)}, like= has {wanted} there: it was saved "
        "from another structure"
    )


def check_device(device: Any) -> None:
    """Refuse a ``device=`` that names nothing (a typo of "saved", say) before loading."""
    if isinstance(device, str) and device != SAVED and not device.replace(":", "").isalnum():
        raise ConfigError(f"device={device!r} is not a device: use 'saved', 'cpu', 'cuda:0', ...")
