"""Pins for files whose staging is still running when their URL is handed out.

A URL keeps its files in the cache until it expires (a pin). With
``http.answer_when = "started"`` the URL goes out while its file is still
being staged, before it is a cache entry that could be pinned; the pin is
then set here, as soon as the staging commits. The staging may run in
another worker process: whether it committed, failed or still runs is
read from the cache, so one thread per side server serves them all. A
staging that fails leaves nothing to pin, and its URL then answers that the
file is not in the cache.
"""

from __future__ import annotations

import logging
import threading

from seproxy.cache import Cache

log = logging.getLogger("seproxy.http")

# How often the stagings waited for are looked at: a committed file is pinned within this.
LOOK_INTERVAL = 0.2


class PendingPins:
    """Pins to set when stagings commit; a thread of its own runs while any is waited for."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._lock = threading.Lock()
        self._waiting: dict[str, float] = {}  # entry id -> pinned until (epoch seconds)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def add(self, entry_id: str, until: float) -> None:
        """Pin ``entry_id`` until ``until`` once its staging commits (now if it already has)."""
        with self._lock:
            self._waiting[entry_id] = max(until, self._waiting.get(entry_id, 0.0))
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="side-pending-pins", daemon=True)
                self._thread.start()

    def close(self) -> None:
        self._closed.set()
        thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while not self._closed.wait(LOOK_INTERVAL):
            with self._lock:
                waiting = dict(self._waiting)
            settled = [entry_id for entry_id, until in waiting.items() if self._settled(entry_id, until)]
            with self._lock:
                for entry_id in settled:
                    if self._waiting.get(entry_id) == waiting[entry_id]:
                        del self._waiting[entry_id]
                if not self._waiting:
                    self._thread = None
                    return

    def _settled(self, entry_id: str, until: float) -> bool:
        """Pin the entry if its staging committed; True when nothing is left to wait for."""
        try:
            if self._cache.get(entry_id) is not None:
                self._cache.pin(entry_id, until)
                return True
            if self._cache.growing_entry(entry_id) is None:
                if self._cache.get(entry_id) is not None:  # committed between the two looks
                    self._cache.pin(entry_id, until)
                else:
                    log.info("cache entry %s: its staging ended without a file, nothing to pin", entry_id)
                return True
        except FileNotFoundError:
            log.info("cache entry %s: removed before it could be pinned", entry_id)
            return True
        except Exception:
            # The index may be busy or full for a moment; the next look tries again.
            log.exception("cache entry %s: looking whether its staging ended failed", entry_id)
        return False
