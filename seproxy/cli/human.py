"""Sizes, durations, counts, moments and column widths as people read and write them."""

from __future__ import annotations

import argparse
import datetime
import unicodedata
from collections.abc import Callable

from seproxy.config import parse_duration, parse_size

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, as the config's ``512M`` means MiB."""
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``93784`` -> ``1d 2h``: the two largest units, enough to judge an age."""
    seconds = max(0, int(seconds))
    parts: list[str] = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= length or (unit == "s" and not parts):
            parts.append(f"{seconds // length}{unit}")
            seconds %= length
    return " ".join(parts[:2])


def format_seconds(seconds: float) -> str:
    """``0.0042`` -> ``4.2 ms``, ``75.3`` -> ``1m 15s``: a measured time, precise when it is short."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return format_duration(seconds)


def plural(count: int, singular: str, several: str | None = None) -> str:
    """``1 entry``, ``2 entries``, ``0 files``."""
    return f"{count} {singular if count == 1 else several or singular + 's'}"


def utc_time(moment: float | datetime.datetime) -> str:
    """An epoch time, or a datetime (naive ones are UTC, as DIRAC sends them), as ISO 8601 with its offset."""
    if isinstance(moment, datetime.datetime):
        aware = moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
    else:
        aware = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return aware.astimezone(datetime.UTC).isoformat()


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (CJK) characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text
    )


def pad(text: str, width: int) -> str:
    """``text`` filled with spaces to ``width`` terminal columns."""
    return text + " " * (width - display_width(text))


def _argument_type(parse: Callable[[str], float], what: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what  # argparse names the type in its error message
    return convert


size_argument = _argument_type(parse_size, "size")
duration_argument = _argument_type(parse_duration, "duration")
