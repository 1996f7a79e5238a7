"""One cache read lease per file for all the downloads of it in progress in this process.

A cache read lease is two SQLite write transactions (take, drop). Taking one
per download would put the index on the path of every request, while a
popular file is downloaded by hundreds of clients at once; here the first
download of a file takes the lease and the last one to finish drops it.
The file is protected exactly as long: from the start of the first
download to the end of the last.

Small files are downloaded one after another as often as at once (a job
reading a file in small ranges, a thousand jobs asking for the same small
file): the last download often ends before the next begins, which would
cost two SQLite writes per request. So a lease is kept ``LINGER`` seconds
after its last download ends, and dropped then by a sweeper thread unless
another download took it meanwhile. Eviction and purge wait at most that
long for a file nobody reads any more.

A download that joins a lease held already sees what changed since (a copy
marked stale, a checksum recorded): the cache's stamp of such changes
(``Cache.changes``, read from memory) tells when the entry's row must be read
again. A file that a write through seproxy dropped meanwhile stays for the
downloads it has, and is not served to a new one.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seproxy.cache import Cache, Entry, ReadLease

log = logging.getLogger("seproxy.http")

# Seconds a lease outlives the last download of its file.
LINGER = 1.0


class OutsideCache(Exception):
    """A cache entry whose file resolves outside the cache's data folder (never served)."""


@dataclass
class _Held:
    lease: ReadLease
    users: int
    # The entry as last read from the index, and the cache's stamp of changes then.
    entry: Entry
    stamp: int
    idle_since: float = 0.0


class SharedLeases:
    """Reference-counted read leases on cache entries; thread-safe."""

    def __init__(self, cache: Cache, linger: float = LINGER) -> None:
        self._cache = cache
        self._data_dir = str(cache.layout.data) + os.sep
        self._linger = linger
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._sweeper: threading.Thread | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        """Drop the leases nobody uses now (the service stops; downloads still running keep theirs)."""
        self._closed.set()
        sweeper = self._sweeper
        if sweeper is not None:
            sweeper.join()

    def hold(self, entry_ids: Sequence[str]) -> tuple[list[Entry], Callable[[], None]]:
        """The entries, kept on disk until the returned function is called (once); ``FileNotFoundError``
        if one is gone. A plain function rather than a context manager: the side server releases
        them when the answer is sent, in another turn of its loop.

        Raises ``OutsideCache`` if an entry's file does not resolve inside
        the cache (a symlink planted there): only cache files are served.
        """
        entries: list[Entry] = []
        try:
            for entry_id in entry_ids:
                entries.append(self._acquire(entry_id))
        except BaseException:
            for entry in entries:
                self._release(entry.id)
            raise
        if len(entry_ids) == 1:  # (most answers are one file: a call less when it is released)
            return entries, functools.partial(self._release, entry_ids[0])
        return entries, functools.partial(self._release_all, entry_ids)

    def _release_all(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            self._release(entry_id)

    def _acquire(self, entry_id: str) -> Entry:
        stamp = self._cache.changes()  # before the index is read: a change after it shows next time
        with self._lock:
            held = self._held.get(entry_id)
            if held is None:
                lease = self._cache.acquire_read(entry_id)
                if not os.path.realpath(lease.path).startswith(self._data_dir):
                    self._cache.release(lease)
                    raise OutsideCache(f"cache entry {entry_id} resolves outside {self._data_dir}")
                self._held[entry_id] = _Held(lease, 1, lease.entry, stamp)
                return lease.entry
            held.users += 1  # the lease stays while the index is read, outside the lock
            if held.stamp == stamp:
                return held.entry
        # Joining a lease held already after a change somewhere in the cache: the entry as the index
        # has it now, unless a write through seproxy dropped it since: the downloads it has keep it,
        # a new one must not get the old bytes.
        entry = self._cache.get(entry_id)
        if entry is None or entry.dropped is not None:
            self._release(entry_id)
            raise FileNotFoundError(errno.ENOENT, "the file was replaced or removed since", entry_id)
        with self._lock:
            held.entry, held.stamp = entry, stamp
        return entry

    def _release(self, entry_id: str) -> None:
        with self._lock:
            held = self._held[entry_id]
            held.users -= 1
            if held.users > 0:
                return
            held.idle_since = time.monotonic()
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="side-lease-sweeper", daemon=True)
                self._sweeper.start()

    def _sweep(self) -> None:
        """Drop leases idle for ``linger`` seconds; runs while any lease is idle (or until ``close``)."""
        while True:
            closing = self._closed.wait(self._linger)
            with self._lock:
                now = time.monotonic()
                idle = [
                    entry_id for entry_id, held in self._held.items()
                    if held.users == 0 and (closing or now - held.idle_since >= self._linger)
                ]  # fmt: skip
                dropped = [self._held.pop(entry_id).lease for entry_id in idle]
                done = closing or not any(held.users == 0 for held in self._held.values())
                if done:
                    self._sweeper = None
            for lease in dropped:
                try:
                    self._cache.release(lease)
                except Exception:
                    # The lease then expires with its holder's heartbeat; the sweeper must go on.
                    log.exception("dropping the read lease of cache entry %s failed", lease.entry.id)
            if done:
                return
