"""The running totals of the index agree with a recount, whatever changed the cache and from which process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from seproxy.cache import Cache, OutdatedIndex
from seproxy.cache.index import SCHEMA_VERSION

# Random stagings, uploads, removals, pins, purges and evictions (the quota is
# small) from one process; argv: root, seed, operations.
CHURN = """
import random, sys, time
from pathlib import Path
from seproxy.cache import Cache, PurgeRule, purge

root, seed, operations = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with Cache(root, quota=150_000, high_watermark=0.9, low_watermark=0.6, min_free=0) as cache:
    for number in range(operations):
        action = rng.random()
        if action < 0.55:
            data = bytes(rng.randrange(256) for _ in range(16)) * rng.randrange(1, 400)
            cache.stage(rng.choice(["SE-A", "SE-B", "SE-C"]), f"/{seed}/{number}", lambda w: w.write(data))
        elif action < 0.65:
            with cache.receive_upload("alice", f"putFile/{seed}-{number}", expected_size=None) as writer:
                writer.write(b"u" * rng.randrange(1, 3000))
            if rng.random() < 0.5:
                cache.mark_uploaded(writer.entry.id)
        elif action < 0.85:
            found = list(cache.scan(limit=20))
            if found:
                victim = rng.choice(found)
                if rng.random() < 0.3:
                    try:
                        cache.pin(victim.id, time.time() + rng.choice([-1, 3600]))
                    except FileNotFoundError:
                        pass  # the other process removed it meanwhile
                else:
                    cache.remove(victim.id, force=rng.random() < 0.5)
        elif action < 0.9:
            purge(cache, PurgeRule(to_size=rng.randrange(50_000, 120_000)))
        else:
            cache.evict()
print("done", flush=True)
"""


def recount(root: Path) -> tuple[dict[tuple[str, str | None], tuple[int, int]], dict[str, int]]:
    """(bytes and entries by (area, SE) counted from the rows, file sizes on disk by id)."""
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        rows = db.execute("SELECT area, se, SUM(size), COUNT(*) FROM entries GROUP BY area, se").fetchall()
    files = {p.name: p.stat().st_size for p in (root / "data").rglob("*") if p.is_file()}
    return {(area, se): (size, count) for area, se, size, count in rows}, files


def assert_totals_match(cache: Cache) -> None:
    counted, files = recount(cache.layout.root)
    usage = cache.usage()
    by_area: dict[str, int] = {}
    by_se: dict[str, int] = {}
    entries_by_area: dict[str, int] = {}
    for (area, se), (size, count) in counted.items():
        by_area[area] = by_area.get(area, 0) + size
        entries_by_area[area] = entries_by_area.get(area, 0) + count
        if se is not None:
            by_se[se] = by_se.get(se, 0) + size
    assert usage.by_area == by_area and usage.entries_by_area == entries_by_area and usage.by_se == by_se
    assert usage.total == sum(files.values()) and usage.count == len(files)
    assert {e.id: e.size for e in cache.entries()} == files


def test_totals_equal_a_recount_after_two_processes_churned(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    workers = [
        subprocess.Popen([sys.executable, "-c", CHURN, str(root), str(seed), "250"], stdout=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0] and outputs == ["done\n", "done\n"]
    with Cache(root, quota=1 << 30, min_free=0) as cache:
        usage = cache.usage()
        assert usage.count > 0 and len(usage.by_se) > 1 and "upload" in usage.by_area
        assert_totals_match(cache)
        evicted = Cache(root, quota=usage.total, high_watermark=0.5, low_watermark=0.3, min_free=0)
        with evicted:
            assert evicted.evict()
        assert_totals_match(cache)


# The schema of the first release (user_version 1), as sites have it on disk.
SCHEMA_V1 = """
CREATE TABLE entries (
    id TEXT PRIMARY KEY, area TEXT NOT NULL CHECK (area IN ('staged', 'upload', 'http')), size INTEGER NOT NULL,
    xxh3 TEXT NOT NULL, adler32 TEXT, se TEXT, source_path TEXT, owner TEXT, name TEXT, created REAL NOT NULL,
    last_access REAL NOT NULL, pinned_until REAL NOT NULL DEFAULT 0, upload_pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX entries_source ON entries (se, source_path);
CREATE INDEX entries_lru ON entries (last_access);
CREATE TABLE aliases (owner TEXT NOT NULL, name TEXT NOT NULL, entry_id TEXT NOT NULL, PRIMARY KEY (owner, name));
CREATE INDEX aliases_entry ON aliases (entry_id);
CREATE TABLE leases (
    id INTEGER PRIMARY KEY, entry_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('read', 'write')),
    pid INTEGER NOT NULL, pid_start INTEGER, expires REAL NOT NULL
);
CREATE INDEX leases_entry ON leases (entry_id);
PRAGMA user_version = 1;
"""


def test_an_index_of_the_first_release_is_upgraded_in_place(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entries = {f"{n:02x}" * 16: (se, size) for n, (se, size) in enumerate([("SE-A", 10), ("SE-B", 20), (None, 5)])}
    with closing(sqlite3.connect(root.parent / "v1.sqlite3")) as db:
        db.executescript(SCHEMA_V1)
        for entry_id, (se, size) in entries.items():
            area = "upload" if se is None else "staged"
            db.execute(
                "INSERT INTO entries (id, area, size, xxh3, se, created, last_access) VALUES (?, ?, ?, 'x', ?, 1, 1)",
                (entry_id, area, size, se),
            )
            path = root / "data" / entry_id[:2] / entry_id
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
        db.commit()
    (root.parent / "v1.sqlite3").rename(root / "index.sqlite3")
    orphan = root / "data" / "ff" / ("ff" * 16)  # left by the old release's crash: no mark tells of it
    orphan.parent.mkdir()
    orphan.write_bytes(b"orphan")

    with Cache(root, quota=1 << 30, min_free=0) as cache:
        usage = cache.usage()
        assert (usage.total, usage.count) == (35, 3)
        assert usage.by_se == {"SE-A": 10, "SE-B": 20} and usage.by_area == {"staged": 30, "upload": 5}
        assert not orphan.exists()  # the one full check an upgraded index gets
        cache.stage("SE-A", "/new", lambda w: w.write(b"n" * 7))
        assert_totals_match(cache)
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_reader_leaves_an_old_index_alone_and_says_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "data").mkdir(parents=True)
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        db.executescript(SCHEMA_V1)
    with pytest.raises(OutdatedIndex, match=r"schema version 1.*run a writing command"):
        Cache(root, quota=1 << 30, min_free=0, read_only=True)
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


def test_traffic_counts_reach_the_index_by_the_heartbeat_and_add_up_over_openers(tmp_path: Path) -> None:
    """Counted in memory, stored by each opener's heartbeat (lease_ttl / 4) and when it closes; a
    read-only opener (`cache du`) sees the sum of all."""
    root = tmp_path / "cache"
    first = Cache(root, quota=1 << 30, min_free=0, lease_ttl=0.4)
    second = Cache(root, quota=1 << 30, min_free=0)  # heartbeat every 30 s: stores when it closes
    try:
        first.traffic.add("SE-A", "miss", 1000)
        first.traffic.add("SE-A", "hit", 1500)
        second.traffic.add("SE-A", "hit", 500)
        second.traffic.add("SE-B", "stream-through", 7)
        with pytest.raises(ValueError, match="no traffic kind 'bogus'"):
            first.traffic.add("SE-A", "bogus", 1)

        def seen() -> dict[str, tuple[int, int, int]]:
            with Cache(root, quota=1 << 30, read_only=True) as looking:
                return {se: (t.hit, t.miss, t.stream_through) for se, t in looking.usage().traffic.items()}

        deadline = time.monotonic() + 10
        while seen() != {"SE-A": (1500, 1000, 0)}:
            assert time.monotonic() < deadline, seen()
            time.sleep(0.05)
    finally:
        second.close()
        first.close()
    with Cache(root, quota=1 << 30, read_only=True) as looking:
        traffic = looking.usage().traffic
    assert (traffic["SE-A"].hit, traffic["SE-A"].miss) == (2000, 1000) and traffic["SE-A"].hit_ratio == 0.5
    assert traffic["SE-B"].stream_through == 7 and traffic["SE-B"].hit_ratio == 1.0
