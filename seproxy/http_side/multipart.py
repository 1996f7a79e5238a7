"""``multipart/byteranges`` (RFC 9110 §14.6): several ranges of one body in one answer.

The vectored reads of davix (and of ROOT through it) ask dozens of ranges
in one request. Each part is a small header made here and the range itself
as body pieces (``select``), sent as any body is (large slices by ``sendfile``,
small ones gathered with the part heads around them into one ``sendmsg``),
and the answer's length is known before its first byte.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from seproxy.byte_range import ByteRange
from seproxy.http_side.body import FileSlice, Piece, select


def byteranges(
    body: Sequence[Piece], ranges: Sequence[ByteRange], size: int, content_type: str
) -> tuple[str, list[Piece]]:
    """The ``Content-Type`` and the pieces of a multipart answer with ``ranges`` of ``body``."""
    boundary = secrets.token_hex(16)  # random: it cannot occur in the file by design of the sender
    pieces: list[Piece] = []
    # A vectored read asks dozens of ranges: the constant parts of each part's head are made once.
    opening = f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes "
    closing = f"/{size}\r\n\r\n"
    # One committed file: its slices made at once (dataclasses.replace costs more than a part's head).
    whole = body[0] if len(body) == 1 and type(body[0]) is FileSlice else None
    for number, wanted in enumerate(ranges):
        separator = "\r\n" if number else ""  # ends the previous part's bytes
        pieces.append(f"{separator}{opening}{wanted.start}-{wanted.end}{closing}".encode("ascii"))
        if whole is not None:
            pieces.append(FileSlice(whole.path, whole.offset + wanted.start, wanted.length, whole.se, whole.growing))
        else:
            pieces.extend(select(body, wanted.start, wanted.length))
    pieces.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return f"multipart/byteranges; boundary={boundary}", pieces
