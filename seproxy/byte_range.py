"""HTTP ``Range`` requests (RFC 9110 §14) for a file of known size.

Both the RPC stream and the HTTP side server let a client resume a broken
download with ``Range: bytes=a-b``. The rules follow what nginx does, since
that is what curl, wget, davix and gfal are used to: a header that is not a
byte range at all is ignored (the whole file is sent), several ranges get
the whole file, and a range that cannot be satisfied (starting past the end,
inverted, or an empty suffix) gets 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ASCII digits only (Python's \d also takes other scripts' digits); blanks are SP and HTAB (RFC 9110 OWS).
_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_BLANKS = " \t"
# More digits than any file size; longer numbers are answered, not parsed.
_MAX_DIGITS = 19


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
    digits = text.lstrip("0")  # 1*DIGIT: leading zeros are allowed and say nothing
    return int(digits or "0") if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range to send, or ``None`` for the whole file.

    Raises ``RangeNotSatisfiable`` for a well-formed range outside the file.
    """
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip(_BLANKS).lower() != "bytes" or not specs or "," in specs:
        return None
    match = _SPEC.fullmatch(specs)
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # suffix: the last N bytes
        count = _number(last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"cannot send the last {last[:20]} bytes of a {size}-byte file")
        return ByteRange(max(0, size - count), size - 1)
    start = _number(first)
    end = _number(last) if last else size - 1
    if last and end < start:  # an open range ("a-") past the end is told as such, below
        raise RangeNotSatisfiable(f"range {first[:20]}-{last[:20]} ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {first[:20]}, the file has {size} bytes")
    return ByteRange(start, min(end, size - 1))
