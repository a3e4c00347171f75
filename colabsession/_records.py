"""On-disk records: one JSON reader that validates into a typed, versioned dataclass.

Everything colabsession reads back (a checkpoint's manifest, a lease) may come from Drive, which
other notebooks and people can write, so it is untrusted: a record that is not valid JSON, misses
a field, has a field of the wrong type, or was written by a newer format version raises
:class:`InvalidRecord`, and the caller skips it.

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


def parse_record(cls: type[R], data: bytes | str | dict[str, Any], *, what: str = "") -> R:
    """Decode and validate *data* (JSON, or a dict already decoded) as a *cls* record, or raise
    :class:`InvalidRecord`."""
    label = what or cls.KIND
    if not isinstance(data, (bytes, str)):
        raw: Any = data  # decoded already (and maybe not even a dict)
    else:
        try:
            raw = json.loads(data, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRecord(f"{label} is not valid JSON ({exc})") from None
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
