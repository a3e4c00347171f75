"""Units people type and read: durations ("90min", "12h") and sizes in bytes."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Union

from colabsession._core.errors import ConfigError

#: What every ``every=``, ``timeout=`` or ``margin=`` argument accepts.
Duration = Union[float, int, str, timedelta]

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)"
_PARTS = re.compile(rf"(?:\s*{_PART})+\s*")


def parse_duration(value: Duration, *, name: str = "duration") -> float:
    """Return *value* in seconds.

    Numbers are seconds; strings are one or more number-unit pairs (``"45s"``, ``"90min"``,
    ``"1.5h"``, ``"1h30m"``, ``"2d"``); a bare number in a string is seconds too.

    >>> parse_duration("1h30m")
    5400.0

    Raises:
        ConfigError: *value* is negative, not finite, or not understood; *name* says which
            argument or variable held it.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_string(value, name)
    else:
        raise ConfigError(
            f"{name} must be a number of seconds or a string like '90min' or '12h', "
            f"not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{name} must be a finite, non-negative duration, got {value!r}")
    return seconds


def _parse_string(text: str, name: str) -> float:
    lowered = text.strip().lower()
    try:
        return float(lowered)  # a bare number is seconds; nan and inf are refused by the caller
    except ValueError:
        pass
    pairs = re.findall(_PART, lowered) if _PARTS.fullmatch(lowered) else []
    if pairs and all(unit in _UNITS for _, unit in pairs):
        return sum(float(number) * _UNITS[unit] for number, unit in pairs)
    raise ConfigError(
        f"cannot read {name}={text!r} as a duration: use seconds or a string like "
        "'45s', '90min', '12h' or '1h30m'"
    )


def format_duration(seconds: float, *, precise: bool = False) -> str:
    """A short human form in hours at most (Colab sessions are counted in hours):
    ``5400`` -> ``"1h30m"``, ``42.5`` -> ``"42s"``, ``86400`` -> ``"24h"``; with *precise*, under
    a minute in tenths and under a second in milliseconds: ``4.24`` -> ``"4.2s"``, ``0.34`` ->
    ``"340ms"``."""
    sign = "-" if seconds < 0 else ""
    if precise and abs(seconds) < 1:
        return f"{sign}{abs(seconds) * 1000:.0f}ms"
    if precise and abs(seconds) < 60:
        return f"{sign}{abs(seconds):.1f}s"
    hours, rest = divmod(int(abs(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        text = f"{hours}h" + (f"{minutes}m" if minutes else "")
    elif minutes:
        text = f"{minutes}m" + (f"{secs}s" if secs else "")
    else:
        text = f"{secs}s"
    return sign + text


def format_bytes(size: float | None) -> str:
    """Binary units, as nvidia-smi and ``df -h`` show them: ``16106127360`` -> ``"15.0 GiB"``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_SIZES = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9}
_SIZES.update({"gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})


def parse_bytes(value: int | str, *, name: str = "size") -> int:
    """A size in bytes: an int, or a string such as ``"256MiB"``, ``"1.5GB"`` or ``"4096"``.

    >>> parse_bytes("256MiB")
    268435456
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (
        match := re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", value.lower())
    ):
        if match[2] not in _SIZES:
            raise ConfigError(f"cannot read {name}={value!r}: use a unit such as MiB or GB")
        size = int(float(match[1]) * _SIZES[match[2]])
    else:
        raise ConfigError(
            f"{name} must be a number of bytes or a string like '256MiB', not {value!r}"
        )
    if size <= 0:
        raise ConfigError(f"{name} must be more than 0 bytes, got {value!r}")
    return size
