"""A full disk, on a real small filesystem: a clear ENOSPC, no half file, and the cache goes on."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.small_fs import SMALL_FS_SIZE

from seproxy.cache import Cache, Fetch, StagingWriter

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
    assert sorted(p.name for p in cache.layout.data.rglob("*") if p.is_file()) == sorted(
        e.id for e in cache.entries()
    )
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
