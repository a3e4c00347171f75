"""On-disk records: one JSON reader that validates into a typed, versioned dataclass.

Everything colabsession reads back (a checkpoint's manifest, a lease, a history line, an env or
dataset manifest) may come from Drive, which other notebooks and people can write, so it is
untrusted. :func:`read_json` is the one way JSON read back is decoded: its size and its nesting
are bounded (a few KB of ``[[[[...`` must not raise RecursionError here, or later when the value
is written again), and every fault is :class:`InvalidRecord`. Sizes and durations read back go
through :func:`read_count` and :func:`read_duration`, names through ``_archive.is_plain``.
:func:`parse_record` builds on it: a record that misses a field, has a field of the wrong type,
or was written by a newer format version raises :class:`InvalidRecord` too, and the caller skips
it with a warning.

>>> @dataclass(frozen=True)
... class Point(Record):
...     KIND: ClassVar[str] = "point"
...     x: int
>>> parse_record(Point, b'{"kind": "point", "version": 1, "x": 3}')
Point(version=1, x=3)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union


class InvalidRecord(ValueError):
    """A record read back is malformed: skip it, never use it."""


class NotJSON(InvalidRecord):
    """What was read back is not JSON at all (often a write cut short)."""


@dataclass(frozen=True)
class Record:
    """Base of the on-disk records: ``KIND`` names the record, ``VERSION`` its newest format."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    version: int = dataclasses.field(default=1, kw_only=True)

    def to_json(self, *, indent: int | None = None) -> bytes:
        body = {"kind": self.KIND, **dataclasses.asdict(self)}
        return json.dumps(body, indent=indent, allow_nan=False, default=_encode).encode()


R = TypeVar("R", bound=Record)
T = TypeVar("T")
MAX_DEPTH = 256  # nesting of a record read back; colabsession writes far shallower ones
MAX_BYTES = 256 << 20  # size of a record read back (a dataset of a million files is ~150 MB)


def read_json(
    data: bytes | str,
    *,
    what: str,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    constants: bool = False,
) -> Any:
    """The JSON value *data* holds, read back from somewhere untrusted: at most *max_bytes*
    long and *max_depth* deep, NaN and Infinity only with *constants*. Any fault (too large,
    too deep, not JSON, not UTF-8) raises :class:`InvalidRecord`, never RecursionError.

    >>> read_json(b'{"a": [1, 2]}', what="a note")
    {'a': [1, 2]}
    >>> try:
    ...     read_json(b"[" * 5000 + b"]" * 5000, what="a note")
    ... except InvalidRecord as exc:
    ...     print(exc)
    a note is nested too deeply to be a record
    """
    if len(data) > max_bytes:
        raise InvalidRecord(f"{what} is larger than {max_bytes:,} bytes")
    try:
        value = json.loads(data, parse_constant=None if constants else _no_constant)
    except RecursionError:
        raise InvalidRecord(f"{what} is nested too deeply to be a record") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise NotJSON(f"{what} is not valid JSON ({str(exc)[:200]})") from None
    if _depth(value) > max_depth:
        raise InvalidRecord(f"{what} is nested too deeply to be a record")
    return value


def read_count(value: Any) -> int | None:
    """A size or count read back (an int, or digits in a string, as Drive's listings give
    sizes), or None when it is anything else: negative, not a number, absurdly long.

    >>> read_count("1024"), read_count(-1), read_count("1e3")
    (1024, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    return None


def read_duration(value: float, *, at_most: float) -> float:
    """A duration read back (a ttl, a pause), bounded by the reader's own setting *at_most*:
    a value written elsewhere never makes this process wait longer than it would itself.

    >>> read_duration(1e12, at_most=120), read_duration(-5, at_most=120)
    (120, 0.0)
    """
    return min(max(value, 0.0), at_most)


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in *value*, found without recursion."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_record(
    cls: type[R],
    data: bytes | str | dict[str, Any],
    *,
    what: str = "",
    max_bytes: int = MAX_BYTES,
) -> R:
    """Decode (with :func:`read_json`) and validate *data* (JSON, or a dict already decoded by
    it) as a *cls* record, or raise :class:`InvalidRecord`."""
    label = what or cls.KIND
    if not isinstance(data, (bytes, str)):
        raw: Any = data  # decoded already (and maybe not even a dict)
    else:
        raw = read_json(data, what=label, max_bytes=max_bytes)
    if not isinstance(raw, dict):
        raise InvalidRecord(f"{label} is a JSON {type(raw).__name__}, not an object")
    if raw.get("kind") != cls.KIND:
        raise InvalidRecord(f"{label} is not a {cls.KIND} record (kind {raw.get('kind')!r})")
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidRecord(f"{label} has no valid format version")
    if version > cls.VERSION:
        raise InvalidRecord(
            f"{label} was written by a newer colabsession (format {version}, this one reads up "
            f"to {cls.VERSION}): upgrade colabsession"
        )
    return _build(cls, raw, label)


def _build(cls: type[T], raw: dict[str, Any], where: str) -> T:
    """*cls* from the fields of *raw* it declares, each checked; a field without a default
    that *raw* lacks is an error."""
    record: type = cls
    hints = _hints(record)
    values: dict[str, Any] = {}
    for field in _fields(record):
        if field.name in raw:
            values[field.name] = _check(raw[field.name], hints[field.name], f"{where}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise InvalidRecord(f"{where} lacks the field {field.name!r}")
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A record's field types, worked out once (a dataset's manifest holds thousands of
    records)."""
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def _check(value: Any, hint: Any, where: str) -> Any:
    """*value* if it matches the type *hint*; the supported hints are the ones records use."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(value, option, where)
            except InvalidRecord:
                continue
        raise InvalidRecord(f"{where} has the wrong type ({type(value).__name__})")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, list):
            item = typing.get_args(hint)[0]
            return tuple(_check(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            _, item = typing.get_args(hint)
            return {str(k): _check(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, dict):
            return _build(hint, value, where)
    else:  # pragma: no cover - a record declared with a type this reader does not know
        raise TypeError(f"records cannot hold {hint!r}")
    raise InvalidRecord(f"{where} has the wrong type ({type(value).__name__})")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a record")


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be written in a record")
