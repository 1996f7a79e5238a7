"""A count of the cache's changes that every process sees, read without a system call.

Readers that keep a cache entry in memory (the side server, once per
download) must notice when another process changed what they hold: a copy
dropped by a write, marked stale or fresh again, a checksum recorded. They
compare this count with the one they read with the entry. It lives in a
file of eight bytes, which every reader maps once: a read is a load from
the page cache the writers' ``pwrite`` updates. (An ``fstat`` of a file that
grew a byte per change, as before, cost five thousand instructions a
download, most of them making the stat result.)

A change is counted after the index holds it, so a reader that sees the new
count and then reads the index sees the change. Writers add one under an
exclusive ``flock`` of the file: two that read the same count and both wrote
it plus one would leave a reader that had read that sum earlier blind to the
second change.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# One unsigned 64-bit count in the machine's byte order (a memoryview of format "Q" reads it).
SIZE = 8
_WRAP = 1 << (8 * SIZE)


class ChangeStamp:
    """The count of changes in the file at ``path``; thread-safe."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._view: memoryview | None = None
        self._mapped: mmap.mmap | None = None

    @staticmethod
    def create(path: Path) -> None:
        """Make the file, of ``SIZE`` bytes, unless it is there: readers map it and never look for it again.

        A file of an earlier version (a byte per change) shorter than ``SIZE`` is
        padded: its count is then whatever its bytes say, and goes on from there.
        """
        with _locked(path) as descriptor:
            size = os.fstat(descriptor).st_size
            if size < SIZE:
                os.pwrite(descriptor, bytes(SIZE - size), size)

    def read(self) -> int:
        view = self._view
        if view is None:
            view = self._map()
        return view[0]

    def bump(self) -> None:
        """Count one change (after the index holds it)."""
        with _locked(self._path) as descriptor:
            count = int.from_bytes(os.pread(descriptor, SIZE, 0).ljust(SIZE, b"\0"), sys.byteorder)
            os.pwrite(descriptor, ((count + 1) % _WRAP).to_bytes(SIZE, sys.byteorder), 0)

    def close(self) -> None:
        with self._lock:
            view, mapped, self._view, self._mapped = self._view, self._mapped, None, None
        if view is not None and mapped is not None:
            view.release()
            mapped.close()

    def _map(self) -> memoryview:
        with self._lock:
            if self._view is None:
                descriptor = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self._mapped = mmap.mmap(descriptor, SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
                finally:
                    os.close(descriptor)
                self._view = memoryview(self._mapped).cast("Q")
            return self._view


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The file at ``path`` (made if missing), open for reading and writing under an exclusive ``flock``."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)  # (and so the lock)
