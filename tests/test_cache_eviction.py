"""Quota and watermarks: least recently used entries go, entries in use never do."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from seproxy.cache import Cache, Fetch, StagingWriter

QUOTA = 10_000  # high watermark 9000 bytes, low 8000

# Holds a read lease on an entry from another process until its stdin closes.
HOLD_READ = """
import sys
from pathlib import Path
from seproxy.cache import Cache

with Cache(Path(sys.argv[1]), quota=1 << 30, min_free=0).open_read(sys.argv[2]):
    print("reading", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(root: Path) -> Iterator[Cache]:
    with Cache(root, quota=QUOTA, high_watermark=0.9, low_watermark=0.8, min_free=0) as cache:
        yield cache


def sized(size: int, *, announced: bool = False) -> Fetch:
    def fetch(writer: StagingWriter) -> None:
        writer.expect(size if announced else None, {})
        writer.write(b"x" * size)

    return fetch


def evict_everything_allowed(root: Path) -> None:
    """Evict through a second handle on the same root whose quota is one byte."""
    with Cache(root, quota=1, min_free=0) as greedy:
        greedy.evict()


def ids(cache: Cache) -> set[str]:
    return {entry.id for entry in cache.entries()}


@pytest.mark.parametrize("announced", [False, True], ids=["size-unknown", "size-announced"])
def test_lru_entries_go_down_to_the_low_watermark(cache: Cache, announced: bool) -> None:
    staged = [cache.stage("SE", f"/f{i}", sized(1000)) for i in range(9)]
    assert cache.evict() == [] and cache.usage().total == 9000  # at, not past, the high watermark
    for recently_read in staged[:2]:
        with cache.open_read(recently_read.id):
            pass

    tenth = cache.stage("SE", "/f9", sized(1000, announced=announced))

    assert cache.usage().total == 8000
    assert ids(cache) == {e.id for e in staged[:2] + staged[4:]} | {tenth.id}
    assert not staged[2].path.exists() and not staged[3].path.exists()


def test_an_entry_past_the_low_watermark_survives_its_own_commit(cache: Cache) -> None:
    big = cache.stage("SE", "/big", sized(9500))
    assert ids(cache) == {big.id}


def test_entries_in_use_are_never_evicted(cache: Cache, root: Path) -> None:
    read = cache.stage("SE", "/read", sized(1000))
    pinned = cache.stage("SE", "/pinned", sized(1000))
    cache.pin(pinned.id, time.time() + 3600)
    with cache.receive_upload("alice", "putFile/u", expected_size=1000) as upload:
        upload.write(b"u" * 1000)
    expired = cache.stage("SE", "/expired-pin", sized(1000))
    cache.pin(expired.id, time.time() - 1)
    plain = [cache.stage("SE", f"/plain{i}", sized(1000)) for i in range(3)]

    release_slow = threading.Event()

    def slow_fetch(writer: StagingWriter) -> None:
        writer.write(b"s" * 1000)
        release_slow.wait(timeout=10)

    with cache.open_read(read.id), ThreadPoolExecutor(1) as pool:
        slow = pool.submit(cache.stage, "SE", "/slow", slow_fetch)
        while not list(cache.layout.tmp.iterdir()):
            time.sleep(0.01)
        cache.stage("SE", "/past-high", sized(2500))  # 9500 bytes: evicts down to 8000
        assert cache.get(expired.id) is None and cache.get(plain[0].id) is None

        evict_everything_allowed(root)
        assert upload.entry is not None
        assert ids(cache) == {read.id, pinned.id, upload.entry.id}
        assert read.path.exists() and pinned.path.exists() and upload.entry.path.exists()

        release_slow.set()
        assert slow.result().path.read_bytes() == b"s" * 1000


def test_a_lease_held_by_another_process(cache: Cache, root: Path) -> None:
    entry = cache.stage("SE", "/shared", sized(1000))
    command = [sys.executable, "-c", HOLD_READ, str(root), entry.id]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as reader:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        evict_everything_allowed(root)
        assert cache.remove(entry.id, force=True) is False
        assert entry.path.exists()
        reader.send_signal(signal.SIGKILL)
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        assert db.execute("SELECT pid FROM leases").fetchall() == [(reader.pid,)]
    with Cache(root, quota=QUOTA, min_free=0) as reopened:  # recovery clears the dead reader's lease
        with closing(sqlite3.connect(root / "index.sqlite3")) as db:
            assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
        assert reopened.remove(entry.id) is True



def test_a_long_read_keeps_its_lease_fresh(root: Path) -> None:
    with Cache(root, quota=QUOTA, min_free=0, lease_ttl=0.4) as cache:
        entry = cache.stage("SE", "/slow-reader", sized(1000))
        with cache.open_read(entry.id):
            time.sleep(1.0)  # well past the lease's first expiry: the heartbeat renewed it
            evict_everything_allowed(root)
            assert entry.path.exists()
        evict_everything_allowed(root)
        assert not entry.path.exists()


def test_an_upload_nobody_pushes_is_abandoned_after_its_lifetime(cache: Cache, root: Path) -> None:
    with cache.receive_upload("alice", "putFile/late", expected_size=10) as late:
        late.write(b"l" * 10)
    assert late.entry is not None
    time.sleep(0.6)
    evict_everything_allowed(root)  # with the default lifetime (a day), an upload still owed stays
    assert ids(cache) == {late.entry.id}
    with Cache(root, quota=1, min_free=0, upload_lifetime=0.5) as impatient:
        impatient.evict()
    assert ids(cache) == set() and not late.entry.path.exists()


def test_a_large_pass_frees_enough_in_lru_order_and_spares_what_is_needed(root: Path) -> None:
    """Past several pages of candidates and several deletion batches: no more, no less than needed."""
    with Cache(root, quota=1 << 30, min_free=0) as cache:
        staged = [cache.stage("SE", f"/f{i}", sized(100)) for i in range(700)]
        pinned, read = staged[3], staged[10]
        cache.pin(pinned.id, time.time() + 3600)
        with cache.receive_upload("alice", "putFile/owed", expected_size=100) as upload:
            upload.write(b"u" * 100)
        assert upload.entry is not None
        owed = upload.entry
        for i, entry in enumerate([*staged, owed]):  # a strict LRU order, with the ones to spare among the oldest
            cache._index.touch(entry.id, 1000.0 + (5.5 if entry is owed else i))

        command = [sys.executable, "-c", HOLD_READ, str(root), read.id]
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as reader:
            assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
            cache._index.touch(read.id, 1010.0)  # back among the oldest, lease held
            # 70 100 bytes now; evict down to 30 000: 400 entries, spread over pages and batches.
            with Cache(root, quota=70_100, high_watermark=0.9, low_watermark=30_000 / 70_100, min_free=0) as tight:
                evicted = tight.evict()
            assert reader.stdin is not None
            reader.stdin.close()

        usage = cache.usage()
        assert 30_000 - 100 < usage.total <= 30_000 and usage.count == usage.total // 100
        spared = {pinned.id, read.id, owed.id}
        expected = [e.id for e in staged if e.id not in spared][:401]
        assert [e.id for e in evicted] == expected
        assert all(not cache.layout.entry_path(i).exists() for i in expected)
        assert spared <= ids(cache) and all(cache.layout.entry_path(i).exists() for i in spared)
