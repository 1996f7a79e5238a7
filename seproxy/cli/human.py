"""Sizes and durations as people read and write them."""

from __future__ import annotations

import argparse
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
