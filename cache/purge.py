"""The operator's purge: which entries a rule selects, and removing them.

Unlike eviction, a purge is asked for by a person, so its rule is explicit
(an empty rule is refused rather than read as "everything") and a dry run
shows what would go. A purge still never removes a file being read or
written; without ``force`` it also keeps pinned entries and uploads still
owed to a storage element.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

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
            raise ValueError("a purge needs a condition (older than, unused for, SE, to size) or 'everything'")

    def selected(self, cache: Cache) -> Iterator[Entry]:
        """The entries the conditions select, least recently used first, read as consumed."""
        return cache.scan(se=self.se, older_than=self.older_than, unused_for=self.unused_for)


@dataclass(frozen=True)
class PurgeReport:
    removed: list[Entry]  # with a dry run: what would be removed
    kept: list[Entry]  # selected, but in use at the time
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.removed)


def purging(
    cache: Cache, rule: PurgeRule, *, dry_run: bool = False, force: bool = False
) -> Iterator[tuple[Entry, bool]]:
    """Remove what ``rule`` selects, least recently used first; yield each entry
    tried and whether it went (or would go, with ``dry_run``) as it happens.

    Entries go a batch per transaction, so a purge killed half-way leaves a
    consistent cache with part of the work done; memory stays constant.
    """
    remove = (lambda batch: batch) if dry_run else partial(cache.delete_batch, force=force)
    return give_up_lru(rule.selected(cache), cache.usage().total, rule.to_size, remove)


def purge(cache: Cache, rule: PurgeRule, *, dry_run: bool = False, force: bool = False) -> PurgeReport:
    """``purging`` with the outcome collected (for callers that want it all at once)."""
    removed: list[Entry] = []
    kept: list[Entry] = []
    for entry, gone in purging(cache, rule, dry_run=dry_run, force=force):
        (removed if gone else kept).append(entry)
    return PurgeReport(removed, kept, dry_run)
