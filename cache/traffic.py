"""Bytes by storage element: served from the cache, fetched into it, served while being fetched.

What an operator judges the cache by is how many bytes it saved fetching.
The service counts them as they move, and ``seproxy cache du`` (a process of
its own) must see the counts of every worker process: so each process adds
them up in memory (a GET must never cost an SQLite write) and the cache's
heartbeat adds them to the index, where they outlive restarts. ``du`` is
therefore at most one heartbeat behind; the Prometheus counters are not.

Kinds (the ``kind`` label of ``seproxy_se_bytes_total``):
``hit``: bytes sent to clients from a complete cache file;
``miss``: bytes fetched from the storage element into the cache;
``stream-through``: bytes sent to clients from a file still being staged.
Uploads come from no storage element and are not counted here.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HIT = "hit"
MISS = "miss"
STREAM_THROUGH = "stream-through"
KINDS = (HIT, MISS, STREAM_THROUGH)

# (storage element, kind) -> bytes
Counts = Mapping[tuple[str, str], int]


@dataclass(frozen=True)
class SeTraffic:
    """The bytes of one storage element since the cache was created."""

    hit: int = 0
    miss: int = 0
    stream_through: int = 0

    @property
    def hit_ratio(self) -> float | None:
        """The share of the bytes served that did not have to be fetched for it (1 - fetched / served);
        None before a byte was served. Files staged but never read count against it."""
        served = self.hit + self.stream_through
        if not served:
            return None
        return max(0.0, 1 - self.miss / served)


def traffic_by_se(rows: Iterable[tuple[str, str, int]]) -> dict[str, SeTraffic]:
    """(SE, kind, bytes) rows as one ``SeTraffic`` per SE."""
    fields: dict[str, dict[str, int]] = {}
    for se, kind, size in rows:
        if kind in KINDS:
            fields.setdefault(se, {})[kind.replace("-", "_")] = size
    return {se: SeTraffic(**values) for se, values in sorted(fields.items())}


class Traffic:
    """This process's counts not yet added to the index."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, se: str, kind: str, size: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"no traffic kind {kind!r} (known: {', '.join(KINDS)})")
        with self._lock:
            self._counts[se, kind] += size

    def take(self) -> dict[tuple[str, str], int]:
        """The counts so far, forgotten here (the caller stores them, or gives them ``back``)."""
        with self._lock:
            taken, self._counts = dict(self._counts), Counter()
        return taken

    def back(self, counts: Counts) -> None:
        """Counts that could not be stored (a busy or full index), kept for the next try."""
        with self._lock:
            self._counts.update(counts)
