"""Uploads and the quota: what cannot fit is refused before anything is evicted, room is made as bytes
arrive (never for a size merely announced), and one user's uploads cannot hold more than their share."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from seproxy.cache import Cache, Entry, StagingWriter
from seproxy.cache.space import DiskSpace

KiB = 1024
QUOTA = 64 * KiB  # high watermark 57.6 KiB, low 51.2 KiB; one user's uploads: 32 KiB


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    with Cache(tmp_path / "cache", quota=QUOTA, min_free=0, upload_share=0.5) as cache:
        yield cache


def staged(cache: Cache, name: str, size: int) -> Entry:
    def fetch(writer: StagingWriter) -> None:
        writer.expect(size, {})
        writer.write(b"s" * size)

    return cache.stage("SE", name, fetch, owner="bob")


def fill_with_stagings(cache: Cache) -> list[Entry]:
    """Bob's staged files, 50 KiB: under the high watermark, evictable."""
    return [staged(cache, f"/bob{i}", 10 * KiB) for i in range(5)]


def ids(cache: Cache) -> set[str]:
    return {entry.id for entry in cache.entries()}


@pytest.mark.parametrize("declared", [QUOTA + 1, 1 << 50])
def test_an_upload_larger_than_the_quota_is_refused_evicting_nothing(cache: Cache, declared: int) -> None:
    fill_with_stagings(cache)
    before = ids(cache)
    with pytest.raises(OSError) as refused:
        cache.begin_upload("alice", "putFile/huge", expected_size=declared)
    assert refused.value.errno in (errno.EDQUOT, errno.ENOSPC)
    assert f"{declared} bytes" in str(refused.value)
    assert ids(cache) == before and cache.evictions == 0
    assert cache.usage().staging == 0 and list(cache.layout.tmp.iterdir()) == []


def test_a_declared_size_alone_evicts_nothing(cache: Cache) -> None:
    before = {e.id for e in fill_with_stagings(cache)}
    upload = cache.begin_upload("alice", "putFile/promised", expected_size=30 * KiB)
    upload.writer.write(b"a" * KiB)  # a client that promises 30 KiB and sends 1 KiB, then goes
    cache.abort(upload)
    assert ids(cache) == before and cache.evictions == 0


def test_room_is_made_as_the_bytes_arrive(cache: Cache) -> None:
    bobs = fill_with_stagings(cache)
    upload = cache.begin_upload("alice", "putFile/real", expected_size=30 * KiB)
    for _ in range(30):
        upload.writer.write(b"a" * KiB)
    entry = cache.commit(upload)
    assert bobs[0].id not in ids(cache) and bobs[-1].id in ids(cache)  # least recently used went first
    assert entry.id in ids(cache) and cache.usage().total <= QUOTA


def test_room_is_made_in_steps_never_more_than_twice_what_arrived(tmp_path: Path) -> None:
    # Real files, a real disk: only the callback that makes room is the test's, to see what it was asked.
    asked: list[tuple[int, int]] = []  # (bytes written so far, room asked for)
    writer: StagingWriter | None = None

    def make_room(size: int) -> None:
        assert writer is not None
        asked.append((writer.written, size))

    writer = StagingWriter(tmp_path / "file", DiskSpace(tmp_path, 0), lambda _writer, _size: None, make_room)
    writer.expect(1000 * KiB)
    for _ in range(1000):
        writer.write(b"w" * KiB)
    writer.finish()

    assert 1 < len(asked) <= 12  # log2(1000) steps, not one per chunk
    assert sum(size for _, size in asked) == 1000 * KiB  # room for every byte, and not one beyond the announced size
    for written, size in asked:
        assert size <= max(KiB, written)  # never more ahead than what has arrived


def test_one_user_cannot_hold_more_than_their_share(cache: Cache) -> None:
    with cache.receive_upload("alice", "putFile/first", expected_size=20 * KiB) as writer:
        writer.write(b"a" * 20 * KiB)
    in_progress = cache.begin_upload("alice", "putFile/second", expected_size=10 * KiB)
    with pytest.raises(OSError) as refused:
        cache.begin_upload("alice", "putFile/third", expected_size=4 * KiB)
    assert refused.value.errno == errno.EDQUOT
    message = str(refused.value)
    assert "from alice" in message and f"{30 * KiB} bytes" in message and "cache.upload_share" in message
    cache.abort(in_progress)

    with cache.receive_upload("bob", "putFile/his", expected_size=20 * KiB) as writer:  # others still may
        writer.write(b"b" * 20 * KiB)
    first = cache.resolve_alias("alice", "putFile/first")
    assert first is not None
    cache.mark_uploaded(first.id)  # pushed: alice's share is free again
    with cache.receive_upload("alice", "putFile/third", expected_size=4 * KiB) as writer:
        writer.write(b"a" * 4 * KiB)


def test_pending_uploads_of_others_are_never_evicted_for_an_upload(cache: Cache) -> None:
    with cache.receive_upload("bob", "putFile/his", expected_size=30 * KiB) as writer:
        writer.write(b"b" * 30 * KiB)
    with cache.receive_upload("carol", "putFile/hers", expected_size=30 * KiB) as writer:
        writer.write(b"c" * 30 * KiB)
    with pytest.raises(OSError) as refused:
        cache.begin_upload("alice", "putFile/mine", expected_size=8 * KiB)
    assert refused.value.errno == errno.EDQUOT and "cache.quota" in str(refused.value)
    assert {e.owner for e in cache.entries()} == {"bob", "carol"}


# Another process taking an upload (a worker process of the same service): it announces the size,
# writes nothing yet, says so, and holds the upload open until stdin closes.
UPLOADER = """
import sys
from pathlib import Path
from seproxy.cache import Cache

with Cache(Path(sys.argv[1]), quota=int(sys.argv[2]), min_free=0, upload_share=0.5) as cache:
    upload = cache.begin_upload("alice", "putFile/elsewhere", expected_size=int(sys.argv[3]))
    print("uploading", flush=True)
    sys.stdin.read()
    cache.abort(upload)
"""


def test_a_share_holds_over_the_processes_that_take_uploads(cache: Cache) -> None:
    """What alice is uploading through another worker process counts against her share here."""
    elsewhere = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, str(cache.layout.root), str(QUOTA), str(20 * KiB)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert elsewhere.stdout is not None and elsewhere.stdout.readline() == "uploading\n"
    try:
        with pytest.raises(OSError) as refused:
            cache.begin_upload("alice", "putFile/here", expected_size=20 * KiB)
        assert refused.value.errno == errno.EDQUOT and "from alice" in str(refused.value)
        assert f"hold {20 * KiB} bytes" in str(refused.value)
        with cache.receive_upload("bob", "putFile/his", expected_size=20 * KiB) as writer:  # others still may
            writer.write(b"b" * 20 * KiB)
    finally:
        elsewhere.communicate("", timeout=30)
    assert elsewhere.returncode == 0
    with cache.receive_upload("alice", "putFile/here", expected_size=20 * KiB) as writer:  # that one ended
        writer.write(b"a" * 20 * KiB)
