from __future__ import annotations

from datetime import timedelta

import pytest

from colabsession import ConfigError
from colabsession._core.units import format_bytes, format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (7.5, 7.5),
        ("45", 45.0),
        ("45s", 45.0),
        ("100ms", 0.1),
        ("90min", 5400.0),
        ("90 minutes", 5400.0),
        ("12h", 43200.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        (" 1 h 30 m ", 5400.0),
        ("2d", 172800.0),
        ("12H", 43200.0),
        (timedelta(minutes=3), 180.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "abc", "12x", "5 5", "h", "1h 5", "1hh", "-3", "nan", "inf"])
def test_malformed_duration_is_a_clear_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match=r"every.*duration|'90min'") as info:
        parse_duration(value, name="every")
    assert isinstance(info.value, ValueError)  # also catchable as the builtin it refines


@pytest.mark.parametrize("value", [True, None, [1]])
def test_wrong_type_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="number of seconds"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (42.9, "42s"),
        (5400, "1h30m"),
        (90061, "25h1m"),
        (86400, "24h"),
        (39601, "11h"),
        (-60, "-1m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (16106127360, "15.0 GiB"),
        (5 * 2**40, "5.0 TiB"),
        (3 * 2**50, "3072.0 TiB"),
    ],
)
def test_format_bytes(size: int | None, text: str) -> None:
    assert format_bytes(size) == text
