"""A response body as pieces: bytes made in memory, and slices of cache files.

The server writes ``bytes`` pieces as they are and hands ``FileSlice`` pieces
to ``sendfile``, so file contents never pass through Python. Because the
pieces are known before the first byte is sent, the total length (for
``Content-Length``) and any byte range of the body (for ``Range``) are cheap
to compute, for one file and for a tar archive of many alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class FileSlice:
    """``length`` bytes of the file at ``path``, from ``offset``.

    ``se`` (the storage element the file was staged from; None for an
    upload) and ``growing`` (the file is still being staged) say how the
    bytes sent are counted: a hit, or a stream-through, of that element."""

    path: Path
    offset: int
    length: int
    se: str | None = None
    growing: bool = False


Piece = bytes | FileSlice


def piece_length(piece: Piece) -> int:
    return piece.length if isinstance(piece, FileSlice) else len(piece)


def body_length(body: Iterable[Piece]) -> int:
    return sum(piece_length(piece) for piece in body)


def select(body: Sequence[Piece], start: int, length: int) -> list[Piece]:
    """The pieces of bytes ``start`` to ``start + length - 1`` of ``body``."""
    selected: list[Piece] = []
    position = 0
    end = start + length
    for piece in body:
        size = piece_length(piece)
        low, high = max(start, position), min(end, position + size)
        if low < high:
            skip, count = low - position, high - low
            if isinstance(piece, FileSlice):
                selected.append(replace(piece, offset=piece.offset + skip, length=count))
            else:
                selected.append(piece[skip : skip + count])
        position += size
        if position >= end:
            break
    return selected
