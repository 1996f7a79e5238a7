"""The operator's purge: which entries a rule selects, and removing them.

Unlike eviction, a purge is asked for by a person, so its rule is explicit
(an empty rule is refused rather than read as "everything") and a dry run
shows what would go. A purge still never removes a file being read or
written; without ``force`` it also keeps pinned entries and uploads still
owed to a storage element.
"""

from __future__ import annotations

from collections.abc import Iterator
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

    def selected(self, cache: Cache) -> Iterator[Entry]:
        """The entries the conditions select, least recently used first, read as consumed."""
        return cache.scan(se=self.se, older_than=self.older_than, unused_for=self.unused_for)


@dataclass(frozen=True)
class PurgeReport:
    removed: list[Entry]  # with a dry run: what would be removed
    kept: list[Entry]  # selected, but held at the time
    dry_run: bool
    # Why each kept entry stayed: "in use", "pinned", "owed to a storage element".
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.removed)


def purging(
    cache: Cache, rule: PurgeRule, *, dry_run: bool = False, force: bool = False
) -> Iterator[tuple[Entry, str | None]]:
    """Remove what ``rule`` selects, least recently used first; yield each entry
    tried as it happens, with None if it went (or would go, with ``dry_run``),
    else why it stays.

    Entries go a batch per transaction, so a purge killed half-way leaves a
    consistent cache with part of the work done; memory stays constant. A dry
    run asks the cache the question its removal would answer (``hold``), so
    it reports what the real run would do at that moment.
    """

    def remove(batch: list[Entry]) -> list[Entry]:
        if dry_run:
            return [entry for entry in batch if cache.hold(entry.id, force=force) is None]
        return cache.delete_batch(batch, force=force)

    for entry, gone in give_up_lru(rule.selected(cache), cache.usage().total, rule.to_size, remove):
        # An entry the removal refused but that is free by now was busy when it was asked.
        yield entry, None if gone else cache.hold(entry.id, force=force) or "in use"


def purge(cache: Cache, rule: PurgeRule, *, dry_run: bool = False, force: bool = False) -> PurgeReport:
    """``purging`` with the outcome collected (for callers that want it all at once)."""
    removed: list[Entry] = []
    kept: list[Entry] = []
    reasons: dict[str, str] = {}
    for entry, reason in purging(cache, rule, dry_run=dry_run, force=force):
        if reason is None:
            removed.append(entry)
        else:
            kept.append(entry)
            reasons[entry.id] = reason
    return PurgeReport(removed, kept, dry_run, reasons)
