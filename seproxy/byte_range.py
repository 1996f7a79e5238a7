"""HTTP ``Range`` requests (RFC 9110 §14) for a file of known size.

Both the RPC stream and the HTTP side server let a client resume a broken
download with ``Range: bytes=a-b``. The rules follow what nginx does, since
that is what curl, wget, davix and gfal are used to: a header that is not a
byte range at all is ignored (the whole file is sent), and a range that
cannot be satisfied (starting past the end, inverted, or an empty suffix)
gets 416.

``parse_range`` serves one range (several get the whole file: the RPC
stream has no multipart answer); ``parse_ranges`` serves the vectored reads
of davix and ROOT, with a bounded amount of work whatever the header holds:
more than ``MAX_RANGES`` ranges are not even parsed (the whole file is
sent), and overlapping or adjacent ranges are merged, so that no byte is
sent twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ASCII digits only (Python's \d also takes other scripts' digits); blanks are SP and HTAB (RFC 9110 OWS).
_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_BLANKS = " \t"
# More digits than any file size; longer numbers are answered, not parsed.
_MAX_DIGITS = 19
# Ranges in one request: davix sends at most a 3900-byte Range line, some 200 short ranges.
MAX_RANGES = 512


class RangeNotSatisfiable(ValueError):
    """416: the client asked for bytes the file does not have."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def _number(text: str) -> int:
    if len(text) <= _MAX_DIGITS:
        return int(text)
    digits = text.lstrip("0")  # 1*DIGIT: leading zeros are allowed and say nothing
    return int(digits or "0") if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range to send, or ``None`` for the whole file.

    Raises ``RangeNotSatisfiable`` for a well-formed range outside the file.
    """
    specs = _specs(header)
    if specs is None or "," in specs:
        return None
    match = _spec(specs)
    return None if match is None else ByteRange(*_bounds(match, size))


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The ranges to send, ascending and merged where they overlap or touch; ``None`` for the whole file.

    A malformed list, or one of more than ``MAX_RANGES`` ranges, gets the
    whole file (RFC 9110 lets a server ignore ``Range``). Ranges outside the
    file are left out; ``RangeNotSatisfiable`` if no range is left.
    """
    specs = _specs(header)
    if specs is None or specs.count(",") >= MAX_RANGES:
        return None
    matches = [_spec(spec) for spec in specs.split(",") if spec.strip(_BLANKS)]
    if not matches or not all(matches):
        return None
    bounds: list[tuple[int, int]] = []
    refusal: RangeNotSatisfiable | None = None
    for match in matches:
        try:
            bounds.append(_bounds(match, size))  # type: ignore[arg-type]
        except RangeNotSatisfiable as exc:
            refusal = exc
    if not bounds:
        assert refusal is not None
        raise refusal
    return _merged(bounds)


def _specs(header: str | None) -> str | None:
    """What follows ``bytes=``, or None if the header asks no byte range at all."""
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip(_BLANKS).lower() != "bytes" or not specs:
        return None
    return specs


def _spec(text: str) -> re.Match[str] | None:
    """One ``first-last`` spec, None if malformed (a lone ``-`` included)."""
    match = _SPEC.fullmatch(text)
    return None if match is None or match.groups() == ("", "") else match


def _bounds(match: re.Match[str], size: int) -> tuple[int, int]:
    """The first and last byte one ``first-last`` spec designates in a file of ``size`` bytes."""
    first, last = match.groups()
    if not first:  # suffix: the last N bytes
        count = _number(last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"cannot send the last {last[:20]} bytes of a {size}-byte file")
        return max(0, size - count), size - 1
    start = _number(first)
    end = _number(last) if last else size - 1
    if last and end < start:  # an open range ("a-") past the end is told as such, below
        raise RangeNotSatisfiable(f"range {first[:20]}-{last[:20]} ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {first[:20]}, the file has {size} bytes")
    return start, min(end, size - 1)


def _merged(bounds: list[tuple[int, int]]) -> list[ByteRange]:
    merged: list[list[int]] = []
    for start, end in sorted(bounds):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [ByteRange(start, end) for start, end in merged]
