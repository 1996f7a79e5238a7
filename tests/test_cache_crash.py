"""A process killed at the worst moment leaves nothing that looks whole."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from seproxy.cache import Cache, StagingWriter

pytestmark = pytest.mark.cases("faults", "a cache writer killed")

# Stages a file of unknown size, says so half-way, and then never finishes.
STAGE_AND_HANG = """
import sys, time
from pathlib import Path
from seproxy.cache import Cache

def fetch(writer):
    writer.expect(None, {"adler32": "00000001"})
    writer.write(b"x" * (1 << 20))
    writer.write(b"y" * (1 << 20))
    print("writing", flush=True)
    time.sleep(60)

Cache(Path(sys.argv[1]), quota=1 << 30, min_free=0).stage("SE", "/big/file", fetch)
"""


def open_cache(root: Path) -> Cache:
    return Cache(root, quota=1 << 30, min_free=0)


def test_killed_while_staging(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_cache(root) as cache:
        survivor = cache.stage("SE", "/other", lambda w: w.write(b"kept"))

    command = [sys.executable, "-c", STAGE_AND_HANG, str(root)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
        with open_cache(root) as cache:
            # The service's CLI opens the cache while the staging runs: it must not touch it.
            assert len(list(cache.layout.tmp.iterdir())) == 1
            assert cache.usage().staging == 1
        child.send_signal(signal.SIGKILL)
    assert len(list((root / "tmp").iterdir())) == 1  # the partial file, as the kill left it

    with open_cache(root) as cache:
        assert list(cache.layout.tmp.iterdir()) == []
        assert cache.lookup("SE", "/big/file") is None
        assert cache.entries() == [cache.get(survivor.id)]
        assert [p.name for p in cache.layout.data.rglob("*") if p.is_file()] == [survivor.id]
        assert cache.usage().staging == 0
        # and the cache works on
        assert cache.stage("SE", "/big/file", lambda w: w.write(b"again")).path.read_bytes() == b"again"


def test_files_and_rows_that_disagree_are_reconciled_by_the_full_check(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_cache(root) as cache:
        lost = cache.stage("SE", "/lost", lambda w: w.write(b"lost"))
        truncated = cache.stage("SE", "/truncated", lambda w: w.write(b"long content"))
        kept = cache.stage("SE", "/kept", lambda w: w.write(b"kept"))
    # What no crash of ours leaves, but a hand in data/ or a lost disk block may.
    orphan = root / "data" / "ab" / ("ab" + "0" * 30)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"orphan")
    not_ours = root / "data" / "ab" / "README"
    not_ours.write_text("an operator's note")
    lost.path.unlink()
    truncated.path.write_bytes(b"long")

    with open_cache(root) as cache:
        # After a clean close an open looks at nothing: its cost must not grow with the cache.
        assert len(cache.entries()) == 3 and orphan.exists()
        cache.check_everything()
        assert [e.id for e in cache.entries()] == [kept.id]
        assert not orphan.exists() and not truncated.path.exists()
        assert not_ours.exists()  # only names that are entry ids are the cache's
        assert cache.usage().count == 1 and cache.usage().total == 4


# Opens the cache, then dies at the step named by argv[2], as a SIGKILL would.
DIE_AT = """
import os, pathlib, sys
from seproxy.cache import Cache

def die(*args, **kwargs):
    os.kill(os.getpid(), 9)

cache = Cache(pathlib.Path(sys.argv[1]), quota=1 << 30, min_free=0)
if sys.argv[2] == "insert":  # the file is renamed into data/, its row not yet inserted
    cache._index.insert = die
    cache.stage("SE", "/renamed", lambda w: w.write(b"renamed"))
else:  # the row is deleted, the file not yet unlinked
    pathlib.Path.unlink = die
    cache.remove(sys.argv[3])
"""


def die_at(root: Path, *args: str) -> None:
    child = subprocess.run([sys.executable, "-c", DIE_AT, str(root), *args], timeout=60)
    assert child.returncode == -signal.SIGKILL


def data_files(root: Path) -> set[str]:
    return {p.name for p in (root / "data").rglob("*") if p.is_file()}


def test_killed_between_rename_and_insert(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    open_cache(root).close()
    die_at(root, "insert")
    (_renamed,) = data_files(root)  # a whole file without row, found through its writer's dead lease
    with open_cache(root) as cache:
        assert data_files(root) == set() and cache.entries() == []
        assert cache.usage().count == 0


def test_killed_between_delete_and_unlink(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_cache(root) as cache:
        doomed = cache.stage("SE", "/doomed", lambda w: w.write(b"doomed"))
        kept = cache.stage("SE", "/kept", lambda w: w.write(b"kept"))
    die_at(root, "unlink", doomed.id)
    assert data_files(root) == {doomed.id, kept.id}  # the row is gone, the file not
    with open_cache(root) as cache:
        assert data_files(root) == {kept.id} and [e.id for e in cache.entries()] == [kept.id]


def test_a_writer_of_this_process_survives_another_open(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_cache(root) as cache:

        def fetch(writer: StagingWriter) -> None:
            writer.write(b"first half ")
            open_cache(root).close()  # recovery runs while this staging is in tmp/
            writer.write(b"second half")

        entry = cache.stage("SE", "/f", fetch)
        assert entry.path.read_bytes() == b"first half second half"


# Purges everything, one transaction per entry, until killed.
PURGE_ALL = """
import sys
from pathlib import Path
from seproxy.cache import Cache, PurgeRule, purge

purge(Cache(Path(sys.argv[1]), quota=1 << 30, min_free=0), PurgeRule(everything=True))
"""


def test_killed_while_purging(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    count = 400
    with open_cache(root) as cache:
        for i in range(count):
            cache.stage("SE", f"/f{i}", lambda w: w.write(b"p" * 1000))

    purger = subprocess.Popen([sys.executable, "-c", PURGE_ALL, str(root)])
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        while purger.poll() is None and db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] > count - 50:
            pass
    purger.send_signal(signal.SIGKILL)
    purger.wait()

    with open_cache(root) as cache:
        entries = cache.entries()
        assert 0 < len(entries) < count
        on_disk = {p.name: p.stat().st_size for p in cache.layout.data.rglob("*") if p.is_file()}
        assert on_disk == {e.id: 1000 for e in entries}


def test_an_open_after_a_clean_close_recovers_nothing_and_after_a_kill_what_was_in_progress(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with open_cache(root) as cache:
        kept = cache.stage("SE", "/kept", lambda w: w.write(b"kept"))
    stray = root / "tmp" / ("cd" * 16)  # no process of ours left it: only a crash may make it ours to remove
    stray.write_bytes(b"stray")
    open_cache(root).close()
    assert stray.exists()

    command = [sys.executable, "-c", STAGE_AND_HANG, str(root)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
        child.send_signal(signal.SIGKILL)
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        assert db.execute("SELECT kind, pid FROM leases").fetchall() == [("write", child.pid)]
        assert db.execute("SELECT pid FROM openers").fetchall() == [(child.pid,)]
    with open_cache(root) as cache:
        assert list(cache.layout.tmp.iterdir()) == []
        assert cache.entries() == [cache.get(kept.id)]
    with closing(sqlite3.connect(root / "index.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM openers").fetchone() == (0,)
