"""The operator's purge rules: by SE, age, last use, size; dry runs; entries in use stay."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seproxy.cache import Cache, Entry, PurgeRule, purge

FILE_NUMBERS = itertools.count()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    with Cache(tmp_path / "cache", quota=1 << 40, min_free=0) as cache:
        yield cache


def fill(cache: Cache, se: str, count: int) -> list[Entry]:
    """``count`` new entries of 100 bytes from ``se``."""
    return [cache.stage(se, f"/file{next(FILE_NUMBERS)}", lambda w: w.write(b"x" * 100)) for _ in range(count)]


def ids(entries: list[Entry]) -> list[str]:
    return [entry.id for entry in entries]


def test_an_empty_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a condition"):
        PurgeRule()


def test_by_se_with_a_dry_run_first(cache: Cache) -> None:
    a, b = fill(cache, "SE-A", 4), fill(cache, "SE-B", 4)
    cache.pin(a[0].id, time.time() + 3600)

    # The dry run says what the real run then does: the pinned entry stays, and why.
    dry = purge(cache, PurgeRule(se="SE-A"), dry_run=True)
    assert ids(dry.removed) == ids(a[1:]) and ids(dry.kept) == [a[0].id] and dry.dry_run
    assert dry.reasons == {a[0].id: "pinned"} and len(cache.entries()) == 8

    report = purge(cache, PurgeRule(se="SE-A"))
    assert ids(report.removed) == ids(a[1:]) and ids(report.kept) == [a[0].id]
    assert report.reasons == {a[0].id: "pinned"}
    assert set(ids(cache.entries())) == {a[0].id, *ids(b)}


def test_to_size_takes_the_least_recently_used(cache: Cache) -> None:
    entries = fill(cache, "SE", 5)
    with cache.open_read(entries[0].id):
        pass
    report = purge(cache, PurgeRule(to_size=300))
    assert ids(report.removed) == ids(entries[1:3]) and report.freed == 200
    assert cache.usage().total == 300


def test_by_age_and_by_last_use(cache: Cache) -> None:
    old = fill(cache, "SE", 2)
    time.sleep(0.3)
    new = fill(cache, "SE", 2)
    assert purge(cache, PurgeRule(older_than=3600)).removed == []
    with cache.open_read(old[0].id):
        pass
    assert ids(purge(cache, PurgeRule(unused_for=0.2)).removed) == [old[1].id]
    assert ids(purge(cache, PurgeRule(older_than=0.2)).removed) == [old[0].id]
    assert ids(cache.entries()) == ids(new)


def test_everything_with_force_spares_only_what_is_being_read(cache: Cache) -> None:
    entries = fill(cache, "SE", 3)
    cache.pin(entries[0].id, time.time() + 3600)
    with cache.receive_upload("alice", "putFile/owed", expected_size=None) as upload:
        upload.write(b"owed")
    with cache.open_read(entries[1].id):
        report = purge(cache, PurgeRule(everything=True), force=True)
    assert ids(report.kept) == [entries[1].id]
    assert ids(cache.entries()) == [entries[1].id]
