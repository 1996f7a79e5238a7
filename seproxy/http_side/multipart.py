"""``multipart/byteranges`` (RFC 9110 §14.6): several ranges of one body in one answer.

The vectored reads of davix (and of ROOT through it) ask dozens of ranges
in one request. Each part is a small header made here and the range itself
as body pieces (``select``), so file bytes still go by ``sendfile`` and the
answer's length is known before its first byte.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from seproxy.byte_range import ByteRange
from seproxy.http_side.body import Piece, select


def byteranges(
    body: Sequence[Piece], ranges: Sequence[ByteRange], size: int, content_type: str
) -> tuple[str, list[Piece]]:
    """The ``Content-Type`` and the pieces of a multipart answer with ``ranges`` of ``body``."""
    boundary = secrets.token_hex(16)  # random: it cannot occur in the file by design of the sender
    pieces: list[Piece] = []
    opening = b""
    for wanted in ranges:
        part_head = f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {wanted.content_range(size)}\r\n\r\n"
        pieces.append(opening + part_head.encode("ascii"))
        pieces.extend(select(body, wanted.start, wanted.length))
        opening = b"\r\n"
    pieces.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return f"multipart/byteranges; boundary={boundary}", pieces
