"""The operator's purge: which entries a rule selects, and removing them.

Unlike eviction, a purge is asked for by a person, so its rule is explicit
(an empty rule is refused rather than read as "everything") and a dry run
shows what would go. A purge still never removes a file being read or
written; without ``force`` it also keeps pinned entries and uploads still
owed to a storage element.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from seproxy.cache.cache import Cache
from seproxy.cache.entry import Entry
from seproxy.cache.eviction import give_up_lru


@dataclass(frozen=True)
class PurgeRule:
    """All given conditions must hold for an entry to be purged."""

    older_than: float | None = None  # seconds since the entry was created
    unused_for: float | None = None  # seconds since it was last read or staged
    se: str | None = None
    to_size: int | None = None  # stop once the whole cache holds at most this many bytes
    everything: bool = False

    def __post_init__(self) -> None:
        conditions = (self.older_than, self.unused_for, self.se, self.to_size)
        if not self.everything and all(c is None for c in conditions):
            raise ValueError("a purge needs a condition (older_than, unused_for, se, to_size) or everything=True")

    def matches(self, entry: Entry, now: float) -> bool:
        return (
            (self.se is None or entry.se == self.se)
            and (self.older_than is None or now - entry.created >= self.older_than)
            and (self.unused_for is None or now - entry.last_access >= self.unused_for)
        )


@dataclass(frozen=True)
class PurgeReport:
    removed: list[Entry]  # with a dry run: what would be removed
    kept: list[Entry]  # selected, but kept: see reasons
    dry_run: bool
    reasons: dict[str, str] = field(default_factory=dict)  # entry id -> why it was kept ("pinned", ...)

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.removed)


def purge(cache: Cache, rule: PurgeRule, *, dry_run: bool = False, force: bool = False) -> PurgeReport:
    """Remove what ``rule`` selects, least recently used first.

    Each entry goes in its own transaction, so a purge killed half-way leaves
    a consistent cache with part of the work done. A dry run asks the cache
    the question its removal would answer (``hold``), so it reports what the
    real run would do at that moment.
    """
    now = time.time()
    selected: Iterable[Entry] = (entry for entry in cache.entries() if rule.matches(entry, now))
    reasons: dict[str, str] = {}

    def remove(entry: Entry) -> bool:
        if not dry_run and cache.remove(entry.id, force=force):
            return True
        reason = cache.hold(entry.id, force=force)
        if reason is None and dry_run:
            return True
        reasons[entry.id] = reason or "in use"  # freed since the removal refused it: it was busy then
        return False

    removed, kept = give_up_lru(selected, cache.usage().total, rule.to_size, remove)
    return PurgeReport(removed, kept, dry_run, reasons)
