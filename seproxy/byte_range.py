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
from typing import NamedTuple

# ASCII digits only (Python's \d also takes other scripts' digits); blanks are SP and HTAB (RFC 9110 OWS).
_BLANKS = " \t"
# A whole list of specs, empty elements allowed. No two parts of it can take the same blanks, and every
# quantifier is possessive (never gives back what it took): a long list matches, or fails, in linear time.
_ELEMENT = r"[ \t]*+(?:(?:[0-9]++[ \t]*+)?+-(?:[ \t]*+[0-9]++)?+[ \t]*+)?+"
_LIST = re.compile(rf"{_ELEMENT}(?:,{_ELEMENT})*+")
_PAIR = re.compile(r"([0-9]*)[ \t]*-[ \t]*([0-9]*)")
# More digits than any file size; longer numbers are answered, not parsed.
_MAX_DIGITS = 19
# Ranges in one request: davix sends at most a 3900-byte Range line, some 200 short ranges.
MAX_RANGES = 512


class RangeNotSatisfiable(ValueError):
    """416: the client asked for bytes the file does not have."""


class ByteRange(NamedTuple):
    """A range of a file; a tuple, since a vectored read makes dozens per request."""

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
    pairs = None if specs is None or "," in specs else _pairs(specs)
    return ByteRange(*_bounds(*pairs[0], size)) if pairs else None


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The ranges to send, ascending and merged where they overlap or touch; ``None`` for the whole file.

    A malformed list, or one of more than ``MAX_RANGES`` ranges, gets the
    whole file (RFC 9110 lets a server ignore ``Range``). Ranges outside the
    file are left out; ``RangeNotSatisfiable`` if no range is left.
    """
    specs = _specs(header)
    pairs = None if specs is None or specs.count(",") >= MAX_RANGES else _pairs(specs)
    if pairs is None:
        return None
    bounds: list[tuple[int, int]] = []
    refusal: RangeNotSatisfiable | None = None
    for first, last in pairs:
        # The common "first-last" inside the file without the calls below: a vectored read sends dozens.
        if first and last and len(first) <= _MAX_DIGITS and len(last) <= _MAX_DIGITS:
            start, end = int(first), int(last)
            if start <= end and start < size:
                bounds.append((start, end if end < size else size - 1))
                continue
        try:
            bounds.append(_bounds(first, last, size))
        except RangeNotSatisfiable as exc:
            refusal = exc
    if not bounds:
        if refusal is None:
            return None  # no range at all
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


def _pairs(specs: str) -> list[tuple[str, str]] | None:
    """The ``first-last`` pairs of a list of specs (empty elements left out), or None if one is
    malformed (a lone ``-`` included): the list matched once as a whole, then taken apart."""
    if _LIST.fullmatch(specs) is None:
        return None
    pairs: list[tuple[str, str]] = _PAIR.findall(specs)
    return None if ("", "") in pairs else pairs


def _bounds(first: str, last: str, size: int) -> tuple[int, int]:
    """The first and last byte one ``first-last`` spec designates in a file of ``size`` bytes."""
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
    bounds.sort()
    merged = []
    first, last = bounds[0]
    for start, end in bounds:
        if start > last + 1:
            merged.append(ByteRange(first, last))
            first, last = start, end
        elif end > last:
            last = end
    merged.append(ByteRange(first, last))
    return merged
