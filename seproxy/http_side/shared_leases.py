"""One cache read lease per file for all the downloads of it in progress in this process.

A cache read lease is two SQLite write transactions (take, drop). Taking one
per download would put the index on the path of every request, while a
popular file is downloaded by hundreds of clients at once; here the first
download of a file takes the lease and the last one to finish drops it.
The file is protected exactly as long: from the start of the first
download to the end of the last.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from seproxy.cache import Cache, Entry, ReadLease


class OutsideCache(Exception):
    """A cache entry whose file resolves outside the cache's data folder (never served)."""


@dataclass
class _Held:
    lease: ReadLease
    users: int


class SharedLeases:
    """Reference-counted read leases on cache entries; thread-safe."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._data_dir = str(cache.layout.data) + os.sep
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}

    @contextmanager
    def hold(self, entry_id: str) -> Iterator[Entry]:
        """The entry, kept on disk until the block ends; ``FileNotFoundError`` if it is gone.

        Raises ``OutsideCache`` if the entry's file does not resolve inside
        the cache (a symlink planted there): only cache files are served.
        """
        entry = self._acquire(entry_id)
        try:
            yield entry
        finally:
            self._release(entry_id)

    def _acquire(self, entry_id: str) -> Entry:
        with self._lock:
            held = self._held.get(entry_id)
            if held is None:
                lease = self._cache.acquire_read(entry_id)
                if not os.path.realpath(lease.path).startswith(self._data_dir):
                    self._cache.release(lease)
                    raise OutsideCache(f"cache entry {entry_id} resolves outside {self._data_dir}")
                held = self._held[entry_id] = _Held(lease, 0)
            held.users += 1
            return held.lease.entry

    def _release(self, entry_id: str) -> None:
        with self._lock:
            held = self._held[entry_id]
            held.users -= 1
            if held.users == 0:
                del self._held[entry_id]
                self._cache.release(held.lease)
