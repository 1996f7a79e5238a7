"""Staging and uploads: bytes, checksums and verification, on a real filesystem."""

from __future__ import annotations

import os
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import xxhash

from seproxy.cache import Cache, Fetch, StagingWriter, VerificationError


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        yield cache


def source(data: bytes, size: int | None = None, checksums: dict[str, str] | None = None) -> Fetch:
    """A fetch that announces ``size`` and ``checksums`` and sends ``data`` in 64 KiB chunks."""

    def fetch(writer: StagingWriter) -> None:
        writer.expect(size, checksums or {})
        view = memoryview(data)
        for start in range(0, len(data), 65536):
            writer.write(view[start : start + 65536])

    return fetch


def leftovers(cache: Cache) -> list[Path]:
    return [p for p in cache.layout.data.rglob("*") if p.is_file()] + list(cache.layout.tmp.iterdir())


def test_round_trip_with_checksums(cache: Cache) -> None:
    data = os.urandom(1_000_003)
    adler = f"{zlib.adler32(data):08X}".lstrip("0")  # catalogues drop leading zeros and use any case
    entry = cache.stage("CERN-DST", "/lhcb/file.dst", source(data, len(data), {"ADLER32": adler}), owner="alice")

    assert entry.path.read_bytes() == data
    assert entry.size == len(data)
    assert entry.xxh3 == xxhash.xxh3_64_hexdigest(data)
    assert entry.adler32 == f"{zlib.adler32(data):08x}"
    assert (entry.area, entry.se, entry.source_path, entry.owner) == ("staged", "CERN-DST", "/lhcb/file.dst", "alice")
    assert entry.path == cache.layout.data / entry.id[:2] / entry.id
    assert list(cache.layout.tmp.iterdir()) == []
    assert cache.get(entry.id) == entry
    assert cache.lookup("CERN-DST", "/lhcb/file.dst") == entry


def test_adler32_always_even_when_the_source_offers_none(cache: Cache) -> None:
    entry = cache.stage("SE", "/f", source(b"abc", 3))
    assert entry.adler32 == f"{zlib.adler32(b'abc'):08x}"
    assert entry.xxh3 == xxhash.xxh3_64_hexdigest(b"abc")
    assert cache.get(entry.id) == entry


def test_source_mtime_and_recorded_digests_are_kept(cache: Cache) -> None:
    def fetch(writer: StagingWriter) -> None:
        writer.expect(3, {}, 1_234_567_890.5)
        writer.write(b"abc")

    entry = cache.stage("SE", "/f", fetch)
    assert entry.source_mtime == 1_234_567_890.5 and entry.modified == 1_234_567_890.5
    cache.record_digest(entry.id, "md5", "900150983cd24fb0d6963f7d28e17f72")
    again = cache.get(entry.id)
    assert again is not None and again.md5 == "900150983cd24fb0d6963f7d28e17f72" and again.sha256 is None
    with pytest.raises(ValueError, match="no 'xxh3' checksum"):
        cache.record_digest(entry.id, "xxh3", "00")
    upload = cache.stage("SE", "/g", source(b"x", 1))
    assert upload.source_mtime is None and upload.modified == upload.created


def test_an_index_of_the_first_version_gets_the_new_columns(tmp_path: Path) -> None:
    """An index file written before source_mtime, md5, sha256, the freshness and upload-claim columns existed (schema 4)
    opens, and its entries stay."""
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        entry = cache.stage("SE", "/f", source(b"abc", 3))
    db = sqlite3.connect(tmp_path / "cache" / "index.sqlite3")
    for column in ("source_mtime", "md5", "sha256", "checked", "unverified", "dropped"):
        db.execute(f"ALTER TABLE entries DROP COLUMN {column}")
    db.execute("DROP TABLE traffic")  # and what later versions added
    db.execute("DROP TABLE growing")
    for column in ("owner", "claimed"):
        db.execute(f"ALTER TABLE leases DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        assert cache.get(entry.id) == entry
        cache.record_digest(entry.id, "sha256", "ab" * 32)
        assert cache.get(entry.id).sha256 == "ab" * 32  # type: ignore[union-attr]


def test_a_cached_source_is_not_fetched_again(cache: Cache) -> None:
    first = cache.stage("SE", "/f", source(b"one"))
    again = cache.stage("SE", "/f", source(b"must not be fetched"))
    assert again.id == first.id and again.last_access >= first.last_access
    forced = cache.stage("SE", "/f", source(b"two"), force=True)
    assert forced.id != first.id and forced.path.read_bytes() == b"two"
    assert cache.get(first.id) is None and not first.path.exists()


def test_a_hit_and_an_alias_named_again_do_not_wait_for_the_index_write_lock(cache: Cache) -> None:
    # Thousands of jobs ask for one cached file: each hit must not queue behind the index's writers
    # (another process's staging, an eviction), as a write per hit would.
    entry = cache.stage("SE", "/hot", source(b"hot"))
    cache.set_alias("alice", "getFile/hot", entry.id)
    writer = sqlite3.connect(cache.layout.index, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # held as a writer in another process would hold it
    answered: list[object] = []

    def ask() -> None:
        answered.append(cache.stage("SE", "/hot", source(b"not again")))
        answered.append(cache.set_alias("alice", "getFile/hot", entry.id))

    try:
        asker = threading.Thread(target=ask)
        asker.start()
        asker.join(timeout=5)
        assert not asker.is_alive(), "a hit waited for the index's write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert answered == [entry, None]


def test_a_hit_after_a_while_moves_the_entry_up_the_lru(cache: Cache) -> None:
    entry = cache.stage("SE", "/old", source(b"old"))
    with sqlite3.connect(cache.layout.index) as db:
        db.execute("UPDATE entries SET last_access = last_access - 3600 WHERE id = ?", (entry.id,))
    hit = cache.stage("SE", "/old", source(b"not again"))
    assert hit.id == entry.id and hit.last_access >= entry.last_access
    assert cache.get(entry.id).last_access == hit.last_access  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data, size",
    [(b"x" * 1000, 1001), (b"x" * 1000, 999)],
    ids=["short", "long"],
)
def test_size_mismatch_leaves_nothing(cache: Cache, data: bytes, size: int) -> None:
    with pytest.raises(VerificationError, match="announced"):
        cache.stage("SE", "/f", source(data, size))
    assert leftovers(cache) == []
    assert cache.lookup("SE", "/f") is None


def test_checksum_mismatch_commits_nothing(cache: Cache) -> None:
    data = b"payload" * 1000
    wrong = f"{zlib.adler32(data) ^ 1:08x}"
    with pytest.raises(VerificationError, match="adler32 mismatch"):
        cache.stage("SE", "/f", source(data, len(data), {"adler32": wrong}))
    with pytest.raises(VerificationError, match="xxh3 mismatch"):
        cache.stage("SE", "/f", source(data, len(data), {"xxh3": "0" * 16}))
    assert leftovers(cache) == [] and cache.entries() == []


def test_a_failing_fetch_leaves_nothing(cache: Cache) -> None:
    def fetch(writer: StagingWriter) -> None:
        writer.write(b"half a file")
        raise ConnectionError("storage element went away")

    with pytest.raises(ConnectionError):
        cache.stage("SE", "/f", fetch)
    assert leftovers(cache) == [] and cache.usage().staging == 0


def test_upload_round_trip_and_release(cache: Cache) -> None:
    data = os.urandom(300_000)
    with cache.receive_upload("alice", "putFile/x.root", expected_size=len(data)) as writer:
        writer.write(data)
    entry = writer.entry
    assert entry is not None and entry.upload_pending and entry.area == "upload"
    assert cache.resolve_alias("alice", "putFile/x.root") == entry
    assert cache.resolve_alias("bob", "putFile/x.root") is None
    assert entry.path.read_bytes() == data

    cache.mark_uploaded(entry.id)
    assert cache.get(entry.id) is None and not entry.path.exists()
    assert cache.resolve_alias("alice", "putFile/x.root") is None


def test_short_upload_leaves_nothing(cache: Cache) -> None:
    with pytest.raises(VerificationError):
        with cache.receive_upload("alice", "putFile/x", expected_size=10) as writer:
            writer.write(b"12345")
    with pytest.raises(OSError):
        with cache.receive_upload("alice", "putFile/x", expected_size=None) as writer:
            writer.write(b"12345")
            raise OSError("client hung up")
    assert leftovers(cache) == [] and cache.resolve_alias("alice", "putFile/x") is None


def test_sending_an_upload_again_releases_the_first(cache: Cache) -> None:
    with cache.receive_upload("alice", "putFile/x", expected_size=None) as first:
        first.write(b"first")
    with cache.receive_upload("alice", "putFile/x", expected_size=None) as second:
        second.write(b"second")
    assert first.entry is not None and second.entry is not None
    assert cache.get(first.entry.id) is None
    assert cache.resolve_alias("alice", "putFile/x") == second.entry


def test_aliases_are_per_user(cache: Cache) -> None:
    entry = cache.stage("SE", "/dir/file.txt", source(b"data"))
    cache.set_alias("alice", "getFile/file.txt", entry.id)
    assert cache.resolve_alias("alice", "getFile/file.txt") == entry
    assert cache.resolve_alias("bob", "getFile/file.txt") is None
    with pytest.raises(FileNotFoundError):
        cache.set_alias("alice", "getFile/other", "0" * 32)


def test_read_lease_keeps_the_file_until_released(cache: Cache) -> None:
    entry = cache.stage("SE", "/dir/leased.txt", source(b"leased bytes"))
    lease = cache.acquire_read(entry.id)
    assert lease.entry == replace(entry, last_access=lease.entry.last_access)
    assert lease.path.read_bytes() == b"leased bytes"
    assert cache.remove(entry.id, force=True) is False  # a read lease wins even over force
    cache.release(lease)
    assert cache.remove(entry.id) is True
    with pytest.raises(FileNotFoundError):
        cache.acquire_read(entry.id)
    with pytest.raises(FileNotFoundError):
        with cache.open_read(entry.id):
            pass


def test_upload_begun_then_committed_or_aborted(cache: Cache) -> None:
    upload = cache.begin_upload("alice", "putFile/a.dat", expected_size=5)
    assert cache.usage().staging == 1  # its write lease is visible to every process
    upload.writer.write(b"hello")
    entry = cache.commit(upload)
    assert entry.upload_pending and entry.size == 5 and entry.adler32
    assert cache.resolve_alias("alice", "putFile/a.dat") == entry
    assert cache.usage().staging == 0

    dropped = cache.begin_upload("alice", "putFile/b.dat", expected_size=5)
    dropped.writer.write(b"par")
    cache.abort(dropped)
    assert cache.resolve_alias("alice", "putFile/b.dat") is None
    assert cache.usage().staging == 0
    assert not any(cache.layout.tmp.iterdir())

    short = cache.begin_upload("alice", "putFile/c.dat", expected_size=5)
    short.writer.write(b"abc")
    with pytest.raises(VerificationError):
        cache.commit(short)  # a failed commit aborts: nothing is left
    assert cache.resolve_alias("alice", "putFile/c.dat") is None
    assert cache.usage().staging == 0 and not any(cache.layout.tmp.iterdir())


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 32, "0" * 31, "0" * 32 + "/x", ""])
def test_entry_ids_from_outside_are_checked(cache: Cache, bad: str) -> None:
    for call in (cache.get, cache.remove, cache.mark_uploaded, cache.acquire_read):
        with pytest.raises(ValueError, match="not a cache entry id"):
            call(bad)
    with pytest.raises(ValueError):
        with cache.open_read(bad):
            pass
