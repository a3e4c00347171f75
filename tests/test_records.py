"""The one reader of records read back from Drive: every malformed record is InvalidRecord."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from colabsession._core.records import (
    InvalidRecord,
    NotJSON,
    Record,
    parse_record,
    read_count,
    read_duration,
    read_json,
)


@dataclass(frozen=True)
class Part(Record):
    KIND: ClassVar[str] = "part"
    name: str
    size: int


@dataclass(frozen=True)
class Box(Record):
    KIND: ClassVar[str] = "box"
    VERSION: ClassVar[int] = 2
    label: str
    weight: float
    sealed: bool
    parts: list[Part]
    shape: tuple[int, ...]
    tags: dict[str, int]
    note: str | None = None
    extras: list[str] = field(default_factory=list)


def box(**changes: Any) -> dict[str, Any]:
    """A valid box as JSON would hold it, with *changes*."""
    raw: dict[str, Any] = {
        "kind": "box",
        "version": 2,
        "label": "a",
        "weight": 1.5,
        "sealed": False,
        "parts": [{"name": "p", "size": 3}],
        "shape": [2, 3],
        "tags": {"x": 1},
    }
    raw.update(changes)
    return raw


def encoded(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw).encode()


def test_a_record_round_trips() -> None:
    written = Box(
        label="a",
        weight=2.0,
        sealed=True,
        parts=[Part(name="p", size=3)],
        shape=(2, 3),
        tags={"x": 1},
        note="n",
    )
    assert parse_record(Box, written.to_json()) == written
    assert parse_record(Box, written.to_json(indent=2)) == written


def test_an_int_is_a_float_where_a_float_is_declared() -> None:
    record = parse_record(Box, encoded(box(weight=3)))
    assert record.weight == 3.0 and isinstance(record.weight, float)  # noqa: PT018


def test_missing_fields_with_defaults_take_them_and_others_are_refused() -> None:
    record = parse_record(Box, encoded(box()))
    assert record.note is None and record.extras == []  # noqa: PT018
    raw = box()
    del raw["label"]
    with pytest.raises(InvalidRecord, match="lacks the field 'label'"):
        parse_record(Box, encoded(raw))
    raw = box()
    del raw["parts"][0]["size"]
    with pytest.raises(InvalidRecord, match=r"box\.parts\[0\] lacks the field 'size'"):
        parse_record(Box, encoded(raw))


def test_extra_fields_are_ignored() -> None:
    """A newer writer of the same format version may add fields: the reader keeps its own."""
    record = parse_record(Box, encoded(box(colour="red", parts=[{"name": "p", "size": 1, "z": 0}])))
    assert record.parts == [Part(name="p", size=1)]
    assert not hasattr(record, "colour")


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"label": 3}, "box.label"),
        ({"weight": "1.5"}, "box.weight"),
        ({"weight": True}, "box.weight"),  # a bool is not a number
        ({"sealed": 1}, "box.sealed"),
        ({"parts": {"name": "p"}}, "box.parts"),
        ({"parts": [{"name": "p", "size": 1.0}]}, r"box.parts\[0\].size"),
        ({"parts": [{"name": "p", "size": False}]}, r"box.parts\[0\].size"),
        ({"parts": ["p"]}, r"box.parts\[0\]"),
        ({"shape": [2, "3"]}, r"box.shape\[1\]"),
        ({"shape": "2x3"}, "box.shape"),
        ({"tags": {"x": "1"}}, r"box.tags\['x'\]"),
        ({"tags": [1]}, "box.tags"),
        ({"note": 5}, "box.note"),
        ({"label": None}, "box.label"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused(changes: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRecord, match=f"{where} has the wrong type"):
        parse_record(Box, encoded(box(**changes)))


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(NotJSON, match="NaN is not allowed"):
        parse_record(Box, b'{"kind": "box", "version": 2, "weight": NaN}')
    with pytest.raises(NotJSON, match="Infinity is not allowed"):
        read_json(b"[-Infinity]", what="a list")
    assert math.isnan(read_json(b"[NaN]", what="a list", constants=True)[0])
    # Decoded already (with constants allowed): a float field still refuses them.
    for value in (math.nan, math.inf):
        with pytest.raises(InvalidRecord, match=r"box\.weight has the wrong type"):
            parse_record(Box, box(weight=value))
    nan_box = Box(label="a", weight=math.nan, sealed=True, parts=[], shape=(), tags={})
    with pytest.raises(ValueError, match="JSON compliant"):  # nor are they ever written
        nan_box.to_json()


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (3, r"written by a newer colabsession \(format 3, this one reads up to 2\)"),
        (0, "no valid format version"),
        (-1, "no valid format version"),
        (True, "no valid format version"),
        ("2", "no valid format version"),
        (2.0, "no valid format version"),
        (None, "no valid format version"),
    ],
)
def test_a_version_this_reader_does_not_know_is_refused(version: Any, message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        parse_record(Box, encoded(box(version=version)), what="the box on Drive")


def test_an_older_version_is_read() -> None:
    assert parse_record(Box, encoded(box(version=1))).version == 1


def test_another_kind_or_no_object_is_refused() -> None:
    with pytest.raises(InvalidRecord, match=r"not a box record \(kind 'part'\)"):
        parse_record(Box, encoded(box(kind="part")))
    raw = box()
    del raw["kind"]
    with pytest.raises(InvalidRecord, match=r"kind None"):
        parse_record(Box, encoded(raw))
    with pytest.raises(InvalidRecord, match="is a JSON list, not an object"):
        parse_record(Box, b"[1, 2]")
    with pytest.raises(InvalidRecord, match="is a JSON str, not an object"):
        parse_record(Box, '"box"')


def test_a_record_cut_short_or_not_text_is_not_json() -> None:
    whole = encoded(box())
    with pytest.raises(NotJSON, match="the box on Drive is not valid JSON"):
        parse_record(Box, whole[: len(whole) // 2], what="the box on Drive")
    with pytest.raises(NotJSON):
        read_json(b"\xff\xfe{}", what="a note")
    with pytest.raises(NotJSON):
        read_json(b"", what="a note")


def test_oversize_records_are_refused_before_decoding() -> None:
    data = encoded(box(label="x" * 1000))
    with pytest.raises(InvalidRecord, match="larger than 100 bytes"):
        parse_record(Box, data, max_bytes=100)
    assert parse_record(Box, data, max_bytes=len(data)).label == "x" * 1000


def test_deep_nesting_is_refused_without_recursion_errors() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than the interpreter's recursion
    with pytest.raises(InvalidRecord, match="nested too deeply"):
        read_json(deep, what="a note")
    shallow = b"[" * 10 + b"]" * 10
    assert read_json(shallow, what="a note", max_depth=10) == [[[[[[[[[[]]]]]]]]]]
    with pytest.raises(InvalidRecord, match="nested too deeply"):
        read_json(shallow, what="a note", max_depth=9)
    with pytest.raises(InvalidRecord, match="nested too deeply"):
        read_json(b'{"a": ' * 20 + b"1" + b"}" * 20, what="a note", max_depth=19)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("1" * 20, int("1" * 20)),
        ("1" * 21, None),  # absurdly long
        (-1, None),
        ("-1", None),
        ("1e3", None),
        ("١٢", None),  # digits, but not ASCII ones
        (1.0, None),
        (True, None),
        (None, None),
        ([1], None),
    ],
)
def test_read_count(value: Any, count: int | None) -> None:
    assert read_count(value) == count


def test_read_duration_is_bounded_by_the_reader_s_own() -> None:
    assert read_duration(30, at_most=120) == 30
    assert read_duration(1e12, at_most=120) == 120
    assert read_duration(-5, at_most=120) == 0.0
    assert read_duration(math.inf, at_most=120) == 120
