"""A checkpoint's state on disk: the arrays in one uncompressed ``.npz`` (loaded with
``allow_pickle=False``, so loading never runs code) and the rest of the tree as JSON."""

from __future__ import annotations

import json
import math
from typing import Any

from ._errors import CheckpointError

ARRAY = "__colabsession_array__"


def flatten(state: Any, reuse: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Split *state* into a JSON tree and host copies of its arrays.

    Arrays are anything numpy can turn into an array (numpy, TensorFlow, JAX, CPU torch tensors);
    they are copied now, so the caller may go on changing its own. Other leaves must be JSON
    values: numbers, strings, booleans, None, lists and dicts with string keys.

    *reuse* holds the copies of an earlier call that nothing uses any more: arrays of the same
    place, shape and dtype are copied into them, which spares allocating (and page-faulting)
    hundreds of megabytes on every save.
    """
    import numpy as np

    arrays: dict[str, Any] = {}

    def visit(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            for key in node:
                if not isinstance(key, str):
                    raise CheckpointError(f"state{where} has the key {key!r}: keys must be strings")
            return {key: visit(value, f"{where}[{key!r}]") for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [visit(value, f"{where}[{i}]") for i, value in enumerate(node)]
        if node is None or isinstance(node, (bool, str)):
            return node
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            if isinstance(node, float) and not math.isfinite(node):
                return {"__float__": repr(node)}  # JSON has no nan/inf
            return node
        if isinstance(node, np.generic) or hasattr(node, "__array__"):
            name = f"a{len(arrays)}"
            source = np.asarray(node)
            spare = (reuse or {}).get(name)
            if spare is not None and spare.shape == source.shape and spare.dtype == source.dtype:
                np.copyto(spare, source)
                array = spare
            else:
                array = np.array(source, copy=True)
            if array.dtype.hasobject:
                raise CheckpointError(
                    f"state{where} is an array of Python objects, which cannot be saved without "
                    "pickle: convert it to a numeric array"
                )
            arrays[name] = array
            return {ARRAY: name}
        raise CheckpointError(
            f"state{where} is a {type(node).__name__}: a checkpoint holds arrays, numbers, "
            "strings, booleans, None, and lists and dicts of them"
        )

    return visit(state, ""), arrays


def unflatten(tree: Any, arrays: Any) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {ARRAY}:
            return arrays[tree[ARRAY]]
        if set(tree) == {"__float__"}:
            return float(tree["__float__"])
        return {key: unflatten(value, arrays) for key, value in tree.items()}
    if isinstance(tree, list):
        return [unflatten(value, arrays) for value in tree]
    return tree


def dumps(tree: Any) -> bytes:
    return json.dumps(tree, separators=(",", ":"), allow_nan=False).encode()
