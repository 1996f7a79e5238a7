"""Free disk space, and the one error a full disk produces.

A full disk must read the same to the user whether it was foreseen (the
expected size did not fit) or hit in the middle of a write: an ``OSError``
with ``ENOSPC`` that says how much was needed and how much was free.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Errors that mean "the disk (or the user's share of it) is full".
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskSpace:
    """The free-space rule of one cache: writes must leave ``reserve`` bytes free."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = reserve

    def free(self) -> int:
        """Bytes an unprivileged writer may still use (root's reserved blocks do not count)."""
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def shortfall(self, size: int) -> int:
        """How many bytes must be freed before ``size`` more bytes fit (0: they fit)."""
        return max(0, size + self.reserve - self.free())

    def full_index(self) -> OSError:
        """The index could not be written (SQLite: "database or disk is full")."""
        return OSError(
            errno.ENOSPC,
            f"No space left for the cache at {self.path}: its index cannot be written (database or disk is full), {self.free()} bytes free",
        )

    def full(self, needed: int) -> OSError:
        return OSError(
            errno.ENOSPC,
            f"No space left for the cache at {self.path}: {needed} bytes needed "
            f"(plus a reserve of {self.reserve} bytes), {self.free()} bytes free",
        )
