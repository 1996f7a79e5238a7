"""A response body as pieces: bytes made in memory, and slices of cache files.

The server writes ``bytes`` pieces as they are and hands ``FileSlice`` pieces
to ``sendfile``, so file contents never pass through Python; a
``GrowingSlice`` is a file slice whose bytes are still arriving, sent as
they come. Because the
pieces are known before the first byte is sent, the total length (for
``Content-Length``) and any byte range of the body (for ``Range``) are cheap
to compute, for one file and for a tar archive of many alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol


@dataclass(slots=True)
class FileSlice:
    """``length`` bytes of the file at ``path``, from ``offset``.

    ``se`` (the storage element the file was staged from; None for an
    upload) and ``growing`` (the file is still being staged) say how the
    bytes sent are counted: a hit, or a stream-through, of that element.

    Not frozen, though never changed (``replace`` makes the next slice): a
    vectored read's answer makes one per range, and a frozen dataclass
    takes twice as long to make."""

    path: Path
    offset: int
    length: int
    se: str | None = None
    growing: bool = False


class Growth(Protocol):
    """A file still being written, as a body follows it (``seproxy.http_side.growing``)."""

    @property
    def done(self) -> bool:
        """The file is whole: what ``readable`` says is all there will ever be."""

    def readable(self) -> int:
        """Bytes readable from the start of the file now; ``OSError`` once it can never be whole."""

    def fileno(self) -> int:
        """A descriptor of the file, valid for as long as the body is sent."""


@dataclass(slots=True)
class GrowingSlice(FileSlice):
    """A slice of a file still being staged: sent as its bytes arrive.

    ``path`` is where the file is being written (it moves when it is
    committed): its bytes are read through ``growth.fileno()``, never by
    path. ``chunked``: the size is not known yet, so the slice runs to the
    file's end, whatever that turns out to be, framed as HTTP/1.1 chunks.
    """

    growth: Growth = field(compare=False, repr=False, kw_only=True)
    chunked: bool = field(default=False, kw_only=True)


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
