"""Concurrent requests for one source share one download, and share its failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from seproxy.cache import Cache, Entry, StagingWriter

THREADS = 16


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        yield cache


class SlowSource:
    """Counts fetches, and holds the first one until every caller has asked."""

    def __init__(self, callers: int, fail: bool = False) -> None:
        self.fetches = 0
        self.fail = fail
        self.callers = callers
        self.asked = 0
        self.lock = threading.Condition()

    def ask(self, cache: Cache) -> Entry | BaseException:
        with self.lock:
            self.asked += 1
            self.lock.notify_all()
        try:
            return cache.stage("SE", "/same/file", self.fetch)
        except Exception as error:
            return error

    def fetch(self, writer: StagingWriter) -> None:
        with self.lock:
            self.fetches += 1
            self.lock.wait_for(lambda: self.asked == self.callers, timeout=10)
        writer.expect(4 << 20, {})
        writer.write(b"a" * (2 << 20))
        time.sleep(0.2)  # the last callers get from "asked" into the shared staging
        if self.fail:
            raise ConnectionError("storage element went away")
        writer.write(b"b" * (2 << 20))


def stage_from_threads(cache: Cache, source: SlowSource) -> list[Entry | BaseException]:
    with ThreadPoolExecutor(source.callers) as pool:
        return list(pool.map(lambda _: source.ask(cache), range(source.callers)))


def test_one_download_for_many_callers(cache: Cache) -> None:
    source = SlowSource(THREADS)
    results = stage_from_threads(cache, source)
    assert source.fetches == 1
    ids = {r.id for r in results if isinstance(r, Entry)}
    assert len(ids) == 1 and len(results) == THREADS
    assert cache.get(ids.pop()).size == 4 << 20  # type: ignore[union-attr]


def test_a_failure_is_shared_then_retried(cache: Cache) -> None:
    failing = SlowSource(THREADS, fail=True)
    results = stage_from_threads(cache, failing)
    assert failing.fetches == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len({id(r) for r in results}) == 1  # the very same error
    assert cache.entries() == [] and list(cache.layout.tmp.iterdir()) == []

    working = SlowSource(1)
    entry = working.ask(cache)
    assert working.fetches == 1 and isinstance(entry, Entry) and entry.size == 4 << 20
