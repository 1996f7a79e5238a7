"""The ADLER32 that grid storage records in a file's extended attributes.

Two layouts are in use on POSIX disk storage, and a ``file`` element may
sit on either's disks:

- XRootD (``xrdadler32``, ``xrootd.chksum``) keeps ``user.XrdCks.adler32``:
  a 96-byte record of the algorithm name (16 bytes, NUL padded), the file's
  mtime when the checksum was computed (8 bytes, network order), the delay
  until it was computed (4 bytes), 3 reserved bytes, the value length (1
  byte) and the value (64 bytes, binary, network order for ADLER32). A
  record whose mtime is not the file's is stale and ignored.
- StoRM keeps ``user.storm.checksum.adler32``: the value as hex text.

We read both and write the XRootD record (the one that carries the mtime,
so a later change of the file is noticed) after computing a checksum.
A filesystem without user attributes simply records nothing.
"""

from __future__ import annotations

import errno
import os
import struct
import time

from seproxy.transfer.checksum_headers import canonical_adler32

XROOTD = "user.XrdCks.adler32"
STORM = "user.storm.checksum.adler32"
_RECORD = struct.Struct(">16sqiHBB64s")  # 96 bytes, as XrdCksData is laid out
_NAME = b"adler32"
# The attribute cannot be kept here: no user attributes on this filesystem, or no right to set them.
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOSPC, errno.E2BIG)


def recorded_adler32(fd: int) -> str | None:
    """The ADLER32 recorded for the open file ``fd`` and still valid, as 8 hex digits."""
    mtime = int(os.fstat(fd).st_mtime)
    record = _attribute(fd, XROOTD)
    if record is not None and len(record) == _RECORD.size:
        name, fm_time, _, _, _, length, value = _RECORD.unpack(record)
        if name.rstrip(b"\0") == _NAME and length == 4 and fm_time == mtime:
            return f"{int.from_bytes(value[:4], 'big'):08x}"
    text = _attribute(fd, STORM)
    if text is not None:
        return canonical_adler32(text.decode("ascii", "replace"))
    return None


def record_adler32(fd: int, adler32: str) -> None:
    """Record an ADLER32 just computed for ``fd`` in XRootD's layout (if the filesystem lets us)."""
    mtime = int(os.fstat(fd).st_mtime)
    delay = max(0, int(time.time()) - mtime)
    value = int(adler32, 16).to_bytes(4, "big")
    record = _RECORD.pack(_NAME, mtime, min(delay, 0x7FFFFFFF), 0, 0, 4, value)
    try:
        os.setxattr(fd, XROOTD, record)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise


def _attribute(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(fd, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, *_UNSUPPORTED):
            return None
        raise
