"""Several cache files as one tar archive, laid out in advance and never written to disk.

Each member is its header (``tar_format``), the file itself as a
``FileSlice`` for ``sendfile``, and its padding; the end blocks close the
archive. Every header depends only on what the cache index says (name,
size, modification time: the source's where it tells it), so the layout,
and with it ``Content-Length``, ETag and any byte range, is the same on
every request, and on every instance that staged the same files (a URL
served on demand elsewhere): ``Range`` resumes a broken archive download
as it does a file.
"""

from __future__ import annotations

from collections.abc import Sequence

from seproxy.cache import Entry
from seproxy.http_side.body import FileSlice, Piece
from seproxy.transfer.tar_format import end_of_archive, member_header, padding


def tar_body(members: Sequence[tuple[str, Entry]]) -> list[Piece]:
    """The pieces of a tar archive of ``members`` (member name, cache entry), in order.

    Padding and the next header travel as one piece: fewer, larger writes.
    """
    pieces: list[Piece] = []
    pending = b""  # bytes waiting to be written before the next file slice
    total = 0
    for name, entry in members:
        pending += member_header(name, entry.size, entry.modified)
        pieces.append(pending)
        pieces.append(FileSlice(entry.path, 0, entry.size, se=entry.se))
        total += len(pending) + entry.size
        pending = padding(entry.size)
    pieces.append(pending + end_of_archive(total + len(pending)))
    return pieces
