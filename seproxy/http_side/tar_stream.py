"""Several cache files as one tar archive, laid out in advance and never written to disk.

Each member is a header block (from ``tarfile.TarInfo.tobuf``, POSIX pax
format, so long UTF-8 names and files over 8 GiB need no special case), the
file itself as a ``FileSlice`` for ``sendfile``, and zero padding to the next
512-byte block; two zero blocks end the archive, padded to a full 10 KiB
record as GNU tar and Python's ``tarfile`` write it. Every header depends
only on what the cache index says (name, size, time staged), so the layout,
and with it ``Content-Length``, ETag and any byte range, is the same on
every request: ``Range`` resumes a broken archive download as it does a file.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence

from seproxy.cache import Entry
from seproxy.http_side.body import FileSlice, Piece


def _header(name: str, entry: Entry) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = entry.size
    info.mtime = int(entry.created)
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_body(members: Sequence[tuple[str, Entry]]) -> list[Piece]:
    """The pieces of a tar archive of ``members`` (member name, cache entry), in order.

    Padding and the next header travel as one piece: fewer, larger writes.
    """
    pieces: list[Piece] = []
    pending = b""  # bytes waiting to be written before the next file slice
    total = 0
    for name, entry in members:
        pending += _header(name, entry)
        pieces.append(pending)
        pieces.append(FileSlice(entry.path, 0, entry.size))
        total += len(pending) + entry.size
        pending = bytes(-entry.size % tarfile.BLOCKSIZE)
    end = len(pending) + 2 * tarfile.BLOCKSIZE
    end += -(total + end) % tarfile.RECORDSIZE
    pieces.append(bytes(end))
    return pieces
