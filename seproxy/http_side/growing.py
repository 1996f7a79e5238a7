"""A cache file still being staged, followed by one side-server answer.

The answer goes out while the staging runs: its head as soon as the
staging is announced (with the size the source gave, if it gave one), its
bytes as they land in the cache file. Everything is learnt from the cache
(``seproxy.cache.follow``), so the staging may run in another worker
process. Once the staging commits, the answer holds the cache's read
lease on the entry like any other download (``shared_leases``), so that
neither eviction nor a purge counts the file as unread while it is sent.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

from seproxy.cache import Cache, Follower, Growing
from seproxy.http_side.shared_leases import OutsideCache, SharedLeases

log = logging.getLogger("seproxy.http")


class GrowingFile:
    """One answer's view of a growing cache file (``body.Growth``); ``close`` when the answer ends."""

    def __init__(self, growing: Growing, cache: Cache, leases: SharedLeases) -> None:
        self.growing = growing
        self._leases = leases
        self._release: Callable[[], None] | None = None
        # The side server bounds the wait itself: a connection whose file does not grow for
        # http.idle_timeout is closed, as any connection that makes no progress. A file whose
        # writer died fails at once: the index no longer lists its staging under a live writer.
        self._follower = Follower(growing, math.inf, still_staged=lambda: cache.growing_entry(growing.entry_id) is not None)
        try:
            self._fd = _open_same_file(growing)
        except BaseException:
            self._follower.close()
            raise
        if self._follower.done:
            self._hold()

    @property
    def done(self) -> bool:
        return self._follower.done

    def readable(self) -> int:
        was_done = self._follower.done
        readable = self._follower.poll()
        if self._follower.done and not was_done:
            self._hold()
        return readable

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._release is not None:
            self._release()
        self._follower.close()
        os.close(self._fd)

    def _hold(self) -> None:
        """The read lease of the committed entry (the bytes are safe anyway: the descriptor stays open)."""
        try:
            _entries, self._release = self._leases.hold([self.growing.entry_id])
        except (FileNotFoundError, OutsideCache) as exc:
            log.warning("cache entry %s: no read lease after its staging ended: %s", self.growing.entry_id, exc)


def _open_same_file(growing: Growing) -> int:
    """A descriptor of the staging's file: its temporary name, or its final one once committed
    (a rename keeps the inode, so both name the bytes the follower reads)."""
    try:
        return os.open(growing.tmp_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return os.open(growing.final_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
