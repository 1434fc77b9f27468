"""Lenient readers of ffprobe's values: a missing or malformed value is None, never an error."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any


def parse_float(value: Any) -> float | None:
    """A finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_fraction(value: Any) -> Fraction | None:
    """A positive fraction such as ffprobe's ``1/1000`` time base, or None."""
    try:
        number = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return number if number > 0 else None


def parse_int(value: Any) -> int | None:
    """An integer, or None."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_clock(value: Any) -> float | None:
    """Seconds from a ``H:MM:SS.fffffffff`` clock (Matroska's DURATION tag), or None."""
    parts = str(value).split(":") if value is not None else []
    if len(parts) != 3:
        return None
    hours, minutes = parse_int(parts[0]), parse_int(parts[1])
    seconds = parse_float(parts[2])
    if hours is None or minutes is None or seconds is None:
        return None
    return hours * 3600 + minutes * 60 + seconds
