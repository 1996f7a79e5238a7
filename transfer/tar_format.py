"""The tar format, written as a stream of blocks: what seproxy's archives and bulks (both sides) are made of.

A member is a header block (``tarfile.TarInfo.tobuf``, POSIX pax format, so
long UTF-8 names and files over 8 GiB need no special case), the bytes of
the file, and zero padding to the next 512-byte block; two zero blocks end
the archive, padded to a full 10 KiB record as GNU tar and Python's
``tarfile`` write it. Writing the blocks in order, rather than through
``tarfile``'s ``addfile`` (which takes a whole file object at once), lets a
sender stream any size in constant memory. Compression wraps the result.
"""

from __future__ import annotations

import bz2
import tarfile
import zlib
from typing import Any

# Compressions of a bulk, as the wire names them: none, gzip, bzip2.
COMPRESSIONS = ("", "gz", "bz2")


def member_header(name: str, size: int, mtime: float) -> bytes:
    """The header block(s) of a regular file ``name`` of ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    """The zeros after a member of ``size`` bytes, up to the next block."""
    return bytes(-size % tarfile.BLOCKSIZE)


def end_of_archive(written: int) -> bytes:
    """The two zero blocks that end an archive of ``written`` bytes so far, padded to a whole record."""
    end = 2 * tarfile.BLOCKSIZE
    return bytes(end + -(written + end) % tarfile.RECORDSIZE)


class Compressor:
    """Compresses a stream chunk by chunk (``compress``, then ``flush`` once at the end); "" passes it as it is."""

    def __init__(self, compression: str) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression[:20]!r}: use '', 'gz' or 'bz2'")
        self._engine: Any = None
        if compression == "gz":
            self._engine = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
        elif compression == "bz2":
            self._engine = bz2.BZ2Compressor()

    def compress(self, data: bytes) -> bytes:
        return data if self._engine is None else bytes(self._engine.compress(data))

    def flush(self) -> bytes:
        return b"" if self._engine is None else bytes(self._engine.flush())
