"""A full disk, on a real small filesystem: a clear ENOSPC, no half file, and the cache goes on."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.small_fs import SMALL_FS_SIZE, fill_up

from seproxy.cache import Cache, Fetch, StagingWriter

pytestmark = pytest.mark.cases("faults", "the cache's full disk")

MiB = 1 << 20
RESERVE = 256 * 1024


@pytest.fixture
def cache(small_fs: Path) -> Iterator[Cache]:
    # The quota is far above the disk: only the disk can say no here.
    with Cache(small_fs / "cache", quota=1 << 40, min_free=RESERVE) as cache:
        yield cache


def chunks(count: int, size: int | None = None) -> Fetch:
    """Sends ``count`` MiB chunks, announcing ``size`` (None: unknown, as from a chunked source)."""

    def fetch(writer: StagingWriter) -> None:
        writer.expect(size, {})
        for _ in range(count):
            writer.write(b"z" * MiB)

    return fetch


def assert_nothing_half_written(cache: Cache) -> None:
    assert list(cache.layout.tmp.iterdir()) == []
    assert sorted(p.name for p in cache.layout.data.rglob("*") if p.is_file()) == sorted(e.id for e in cache.entries())
    assert cache.usage().staging == 0


def test_a_file_that_cannot_fit_is_refused_before_any_byte(cache: Cache) -> None:
    fetched = []

    def fetch(writer: StagingWriter) -> None:
        writer.expect(2 * SMALL_FS_SIZE, {})
        fetched.append("started")

    with pytest.raises(OSError) as refused:
        cache.stage("SE", "/huge", fetch)
    assert refused.value.errno == errno.ENOSPC
    assert f"{2 * SMALL_FS_SIZE} bytes needed" in str(refused.value)
    assert f"reserve of {RESERVE} bytes" in str(refused.value) and "bytes free" in str(refused.value)
    assert fetched == []
    assert_nothing_half_written(cache)

    with pytest.raises(OSError) as upload_refused:
        with cache.receive_upload("alice", "putFile/huge", expected_size=2 * SMALL_FS_SIZE):
            pass
    assert upload_refused.value.errno == errno.ENOSPC
    assert_nothing_half_written(cache)


def test_a_disk_that_fills_up_mid_write(cache: Cache) -> None:
    kept = cache.stage("SE", "/small", chunks(1))
    with pytest.raises(OSError) as full:
        cache.stage("SE", "/endless", chunks(2 * SMALL_FS_SIZE // MiB))
    assert full.value.errno == errno.ENOSPC
    assert "bytes needed" in str(full.value) and "bytes free" in str(full.value)
    assert isinstance(full.value.__cause__, OSError) and full.value.__cause__.errno == errno.ENOSPC
    assert cache.lookup("SE", "/endless") is None
    assert_nothing_half_written(cache)

    again = cache.stage("SE", "/after", chunks(2, 2 * MiB))
    assert again.path.stat().st_size == 2 * MiB and kept.path.exists()


def test_old_entries_make_room_on_a_full_disk(cache: Cache) -> None:
    old = [cache.stage("SE", f"/old{i}", chunks(1, MiB)) for i in range(6)]
    new = cache.stage("SE", "/new", chunks(4, 4 * MiB))
    remaining = {e.id for e in cache.entries()}
    assert new.id in remaining
    assert old[0].id not in remaining and old[-1].id in remaining  # least recently used went first
    assert_nothing_half_written(cache)


def wait_for_no_writes(cache: Cache) -> None:
    deadline = time.monotonic() + 10
    while cache.usage().staging and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.usage().staging == 0, "a write lease is still held"


def test_a_full_index_is_the_caches_enospc_and_leaves_no_lease(small_fs: Path) -> None:
    # The index itself cannot be written: SQLite's "database or disk is full" at every step.
    with Cache(small_fs / "cache", quota=1 << 40, min_free=0, lease_ttl=0.4) as cache:
        kept = cache.stage("SE", "/kept", chunks(1, MiB))
        upload = cache.begin_upload("alice", "putFile/late", expected_size=MiB)
        upload.writer.write(b"u" * MiB)  # past the file's buffer: on the disk before it fills
        ballast = fill_up(small_fs)
        for attempt in (
            lambda: cache.stage("SE", "/new", chunks(1, MiB)),
            lambda: cache.begin_upload("alice", "putFile/x", expected_size=10),
            lambda: cache.acquire_read(kept.id),
            lambda: cache.commit(upload),  # the COMMIT of its row fails: it is aborted
        ):
            with pytest.raises(OSError) as full:
                attempt()
            assert full.value.errno == errno.ENOSPC
            assert f"No space left for the cache at {cache.layout.root}" in str(full.value)
            assert "database or disk is full" in str(full.value)

        ballast.unlink()  # space returns: the lease the full index kept is dropped, nothing is left
        wait_for_no_writes(cache)
        assert_nothing_half_written(cache)
        assert [e.id for e in cache.entries()] == [kept.id]
        again = cache.stage("SE", "/after", chunks(1, MiB))
        assert again.path.stat().st_size == MiB


def test_an_abort_on_a_full_index_never_raises(small_fs: Path) -> None:
    with Cache(small_fs / "cache", quota=1 << 40, min_free=0, lease_ttl=0.4) as cache:
        upload = cache.begin_upload("alice", "putFile/a", expected_size=10)
        ballast = fill_up(small_fs)
        cache.abort(upload)  # the cleanup after a failure must not raise a second one
        ballast.unlink()
        wait_for_no_writes(cache)
        assert_nothing_half_written(cache)
