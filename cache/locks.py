"""Locks that every process on the cache's root sees: one staging per source, one eviction at a time.

Several worker processes share one cache: a lock in one process's memory
cannot stop a second process from fetching the same file again or evicting
at the same time. These are Linux open-file-description locks on one byte
each of a single lock file: one byte per name (a hash of it), so unrelated
names never wait for each other and the file stays empty. Unlike ``flock``
on a file per name, nothing is left behind per name; unlike classic POSIX
record locks, they exclude threads of one process from each other too, and
closing another descriptor of the file releases nothing. The kernel drops a
lock when its holder dies, so a crash never leaves a name locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Byte offsets are hashes of names below 2**62 (off_t is signed 64 bits).
_OFFSETS = 1 << 62


def _flock(kind: int, offset: int) -> bytes:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
    return struct.pack("hhqqi", kind, os.SEEK_SET, offset, 1, 0)


class CacheLocks:
    """Named exclusive locks, shared by all the processes that use ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.touch(exist_ok=True)

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Wait until no other holder (thread or process) has ``name``, and keep it for the block."""
        offset = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % _OFFSETS
        # A descriptor of its own per holder: OFD locks belong to the open file description.
        fd = os.open(self._path, os.O_RDWR)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, offset))
            yield
        finally:
            os.close(fd)  # releases the lock
