"""Stagings in progress: announced in the index, followed through the file system, from any process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from seproxy.cache import Cache, Follower, Growing, StagingFailed, StagingWriter, VerificationError
from seproxy.cache.recovery import reap_dead_writers


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        yield cache


class Source:
    """A fetch run in a thread that sends one chunk each time the test says so."""

    def __init__(self, cache: Cache, data: bytes, *, chunks: int, size: int | None, adler32: str | None = None) -> None:
        self.data, self.size, self.adler32 = data, size, adler32
        step = -(-len(data) // chunks)
        self.pieces = [data[i : i + step] for i in range(0, len(data), step)]
        self.go = threading.Semaphore(0)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cache,))
        self.thread.start()

    def _run(self, cache: Cache) -> None:
        def fetch(writer: StagingWriter) -> None:
            self.go.acquire()
            writer.expect(self.size, {"adler32": self.adler32} if self.adler32 else {}, 1_700_000_000.0)
            for piece in self.pieces:
                self.go.acquire()
                writer.write(piece)

        try:
            cache.stage("SE", "/data/file", fetch)
        except BaseException as error:
            self.error = error

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            self.go.release()

    def end(self) -> None:
        self.step(len(self.pieces) + 1)
        self.thread.join(10)


def growing_rows(cache: Cache) -> int:
    """Rows of the index's table of growing files, whatever their lease (read as another process would)."""
    with sqlite3.connect(cache.layout.index) as db:
        rows: int = db.execute("SELECT COUNT(*) FROM growing").fetchone()[0]
    return rows


def announced(cache: Cache) -> Growing:
    """The staging of the test's file, once its writer announced it."""
    deadline = time.monotonic() + 10
    while (growing := cache.growing("SE", "/data/file")) is None:
        assert time.monotonic() < deadline, "the staging never announced itself"
        time.sleep(0.005)
    return growing


def until(follower: Follower, readable: int) -> None:
    """Wait (bounded) until the follower sees ``readable`` bytes."""
    deadline = time.monotonic() + 10
    while follower.poll() < readable:
        assert time.monotonic() < deadline, f"{follower.poll()} bytes readable, waited for {readable}"
        time.sleep(0.005)


def growing_file(tmp_path: Path, size: int | None) -> Growing:
    """A growing file made by hand: the Follower's rules on a real file system, with no cache."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "data").mkdir()
    entry_id = "ab" * 16
    growing = Growing(entry_id, "SE", "/f", tmp_path / "tmp" / entry_id, tmp_path / "data" / entry_id, size, None, None, 0.0)
    growing.tmp_path.write_bytes(b"")
    return growing


def test_the_last_byte_of_an_announced_size_waits_for_the_commit(tmp_path: Path) -> None:
    growing = growing_file(tmp_path, 10)
    with Follower(growing, time.monotonic() + 10) as follower, open(growing.tmp_path, "ab") as writer:
        assert follower.poll() == 0
        writer.write(b"12345")
        writer.flush()
        assert follower.poll() == 5 and follower.read(0, 100) == b"12345"
        writer.write(b"67890")
        writer.flush()
        assert follower.poll() == 9 and not follower.done  # all ten bytes there, not verified yet
        assert follower.read(0, 100) == b"123456789"
        with pytest.raises(TimeoutError):
            follower.wait(9, 0.05)
        os.rename(growing.tmp_path, growing.final_path)  # the commit
        assert follower.wait(9, 1) == 1 and follower.done and follower.size == 10
        assert follower.read(0, 100) == b"1234567890"
        assert follower.wait(10, 1) == 0


def test_a_file_removed_before_the_commit_is_a_failure_even_when_whole(tmp_path: Path) -> None:
    growing = growing_file(tmp_path, 3)
    with Follower(growing, time.monotonic() + 10) as follower:
        growing.tmp_path.write_bytes(b"abc")
        assert follower.poll() == 2
        growing.tmp_path.unlink()  # the abort (a checksum mismatch found after the last byte)
        with pytest.raises(StagingFailed, match=r"SE:/f failed before its end"):
            follower.poll()
        with pytest.raises(StagingFailed):
            follower.wait(0, 1)
        assert follower.failed and not follower.done


def test_without_a_size_every_written_byte_is_readable_and_the_end_comes_with_the_commit(tmp_path: Path) -> None:
    growing = growing_file(tmp_path, None)
    with Follower(growing, time.monotonic() + 10) as follower:
        growing.tmp_path.write_bytes(b"abc")
        assert follower.poll() == 3 and follower.size is None and not follower.done
        with pytest.raises(TimeoutError):
            follower.wait(3, 0.05)
        os.rename(growing.tmp_path, growing.final_path)
        assert follower.wait(3, 1) == 0 and follower.done and follower.size == 3


def test_an_announced_staging_is_followed_to_its_end(cache: Cache) -> None:
    data = os.urandom(300_000)
    adler32 = f"{zlib.adler32(data):08x}"
    source = Source(cache, data, chunks=3, size=len(data), adler32=adler32)
    try:
        source.step()
        growing = announced(cache)
        assert (growing.se, growing.source_path, growing.size, growing.adler32) == ("SE", "/data/file", len(data), adler32)
        assert growing.source_mtime == 1_700_000_000.0
        assert cache.growing_entry(growing.entry_id) == growing
        assert growing.final_path == cache.layout.entry_path(growing.entry_id)
        with Follower(growing, time.monotonic() + 10) as follower:
            assert follower.poll() == 0 and not follower.done
            source.step()
            until(follower, 100_000)
            assert follower.read(0, 1 << 20) == data[:100_000]
            source.end()
            assert follower.wait(100_000, 10) == len(data) - 100_000
            assert follower.done and follower.size == len(data)
            assert follower.read(0, len(data)) == data
            assert follower.wait(len(data), 1) == 0  # the end
    finally:
        source.end()
    assert source.error is None
    assert cache.growing("SE", "/data/file") is None
    assert cache.growing_entry(growing.entry_id) is None
    entry = cache.lookup("SE", "/data/file")
    assert entry is not None and entry.id == growing.entry_id and entry.path.read_bytes() == data


def test_a_staging_that_announces_nothing_announces_itself_at_its_first_write(cache: Cache) -> None:
    release = threading.Event()

    def fetch(writer: StagingWriter) -> None:
        writer.write(b"first")
        release.wait(10)
        writer.write(b"second")

    thread = threading.Thread(target=cache.stage, args=("SE", "/data/file", fetch))
    thread.start()
    try:
        growing = announced(cache)
        assert growing.size is None
        with Follower(growing, time.monotonic() + 10) as follower:
            until(follower, 5)
            release.set()
            thread.join(10)
            assert follower.wait(5, 5) == 6 and follower.done
            assert follower.read(0, 100) == b"firstsecond"
    finally:
        release.set()
        thread.join(10)


def test_a_checksum_mismatch_at_the_end_fails_the_follower_before_the_last_byte(cache: Cache) -> None:
    data = os.urandom(150_000)
    source = Source(cache, data, chunks=2, size=len(data), adler32="00000001")
    try:
        source.step()
        growing = announced(cache)
        with Follower(growing, time.monotonic() + 10) as follower:
            source.end()
            with pytest.raises(StagingFailed, match=r"SE:/data/file failed before its end"):
                follower.wait(len(data) - 1, 10)
            assert follower.failed and not follower.done
    finally:
        source.end()
    assert isinstance(source.error, VerificationError)
    assert cache.growing("SE", "/data/file") is None
    assert cache.lookup("SE", "/data/file") is None
    assert list(cache.layout.tmp.iterdir()) == []


def test_a_follower_past_its_deadline_names_the_file(cache: Cache) -> None:
    source = Source(cache, b"x" * 1000, chunks=2, size=1000)
    try:
        source.step()
        growing = announced(cache)
        with Follower(growing, time.monotonic() + 0.05) as follower:
            with pytest.raises(TimeoutError, match=r"SE:/data/file .*did not deliver byte 0"):
                follower.wait(0)
    finally:
        source.end()


def test_a_follower_opened_after_the_end_reads_the_committed_file_or_fails(cache: Cache) -> None:
    source = Source(cache, b"y" * 1000, chunks=1, size=1000)
    source.step()
    growing = announced(cache)
    source.end()
    with Follower(growing, time.monotonic() + 1) as follower:
        assert follower.done and follower.wait(0) == 1000
    cache.remove(growing.entry_id)
    with pytest.raises(StagingFailed):
        Follower(growing, time.monotonic() + 1)


def test_uploads_are_not_growing_files(cache: Cache) -> None:
    with cache.receive_upload("alice", "putFile/x", expected_size=3) as writer:
        writer.write(b"abc")
        assert cache.growing_entry(writer.path.name) is None and growing_rows(cache) == 0


def test_a_row_whose_writer_died_is_ignored_and_reaped(cache: Cache) -> None:
    root = cache.layout.root
    # A writer process that announces a staging and is killed in the middle.
    writer = subprocess.Popen([sys.executable, "-c", DYING_WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "announced\n"
    growing = cache.growing("SE", "/dying")
    assert growing is not None and growing.size == 10
    follower = Follower(growing, time.monotonic() + 60, still_staged=lambda: cache.growing_entry(growing.entry_id) is not None)
    assert follower.wait(0) == 5
    writer.kill()
    writer.wait()
    assert cache.growing("SE", "/dying") is None  # dead holder: ignored at once
    # Its partial file stays until recovery; a reader of it fails once it stalled, long before its deadline.
    assert growing.tmp_path.exists()
    with follower, pytest.raises(StagingFailed):
        follower.wait(5, timeout=10)
    assert growing_rows(cache) == 1  # ignored, not yet removed
    reap_dead_writers(cache.layout, cache._index, time.time())  # what an eviction or the next open runs
    assert growing_rows(cache) == 0
    assert not growing.tmp_path.exists()


DYING_WRITER = """
import sys, time
from pathlib import Path
from seproxy.cache import Cache

cache = Cache(Path(sys.argv[1]), quota=1 << 30, min_free=0)

def fetch(writer):
    writer.expect(10, {})
    writer.write(b"12345")
    print("announced", flush=True)
    time.sleep(60)

cache.stage("SE", "/dying", fetch)
"""

# A second process follows a staging of this one and prints what it read.
OTHER_PROCESS_READER = """
import sys, time
from pathlib import Path
from seproxy.cache import Cache, Follower

with Cache(Path(sys.argv[1]), quota=1 << 30, min_free=0) as cache:
    deadline = time.monotonic() + 20
    while (growing := cache.growing("SE", "/data/file")) is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    print("following", growing.size, flush=True)
    received = bytearray()
    with Follower(growing, deadline) as follower:
        while True:
            available = follower.wait(len(received))
            if not available:
                break
            received += follower.read(len(received), available)
            print("got", len(received), flush=True)
    sys.stdout.write("done %d %08x\\n" % (len(received), __import__("zlib").adler32(bytes(received))))
"""


def test_a_second_process_sees_the_growing_file_and_follows_it(cache: Cache) -> None:
    data = os.urandom(400_000)
    reader = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS_READER, str(cache.layout.root)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    source = Source(cache, data, chunks=4, size=len(data))
    try:
        source.step(2)  # announced, one chunk of four written
        assert reader.stdout.readline() == f"following {len(data)}\n"
        # Read while three chunks are still to come (they wait for this test's steps).
        assert reader.stdout.readline().startswith("got ")
        assert cache.growing("SE", "/data/file") is not None
        source.end()
        lines = reader.stdout.read().splitlines()
    finally:
        source.end()
        reader.wait(20)
    assert lines[-1] == f"done {len(data)} {zlib.adler32(data):08x}"
    assert reader.returncode == 0
