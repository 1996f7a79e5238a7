"""The quota and its watermarks, and the order in which entries are given up.

Evicting only when usage passes the high watermark, and then down to the low
one, turns many small evictions into a few larger ones and leaves room for
the next stagings. Least recently used goes first: a file nobody asked for in
a while is the cheapest to fetch again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from seproxy.cache.entry import Entry


@dataclass(frozen=True)
class Quota:
    limit: int
    high: float = 0.9
    low: float = 0.8

    def __post_init__(self) -> None:
        if self.limit <= 0:
            raise ValueError(f"the cache quota must be positive, not {self.limit}")
        if not 0 < self.low <= self.high <= 1:
            raise ValueError(f"watermarks must satisfy 0 < low <= high <= 1, not low={self.low} high={self.high}")

    @property
    def high_bytes(self) -> int:
        return int(self.limit * self.high)

    @property
    def low_bytes(self) -> int:
        return int(self.limit * self.low)

    def target(self, usage: int, incoming: int = 0) -> int | None:
        """The usage to evict down to, or None while no eviction is due.

        ``incoming`` is the size of a file about to be written: room for it is
        made before it starts, so that it lands below the low watermark.
        """
        if usage + incoming <= self.high_bytes:
            return None
        return max(0, self.low_bytes - incoming)


def give_up_lru(
    candidates: Iterable[Entry],
    usage: int,
    target: int | None,
    remove: Callable[[list[Entry]], list[Entry]],
    *,
    batch: int = 256,
) -> Iterator[tuple[Entry, bool]]:
    """Remove ``candidates`` (given least recently used first) until ``usage``
    is at most ``target`` (None: remove them all); yield each entry tried and
    whether it went.

    Candidates are taken only as far as needed, and removed ``batch`` at a
    time (one transaction each), so the cost follows what is removed, not
    what the cache holds. ``remove`` returns those of a batch it removed: it
    may refuse some (they came into use meanwhile, possibly in another
    process), and then the next candidates are tried.
    """
    pending: list[Entry] = []
    planned = 0  # bytes of the pending batch

    def settle() -> Iterator[tuple[Entry, bool]]:
        nonlocal usage, planned
        gone = {entry.id for entry in remove(pending)} if pending else set()
        for entry in pending:
            if entry.id in gone:
                usage -= entry.size
            yield entry, entry.id in gone
        pending.clear()
        planned = 0

    for entry in candidates:
        if target is not None and usage - planned <= target:
            yield from settle()
            if usage <= target:
                return
        pending.append(entry)
        planned += entry.size
        if len(pending) >= batch:
            yield from settle()
    yield from settle()
