"""The operator CLI works on the cache while the service stages into it."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seproxy.cache import Cache, StagingWriter

# Like the CLI run again and again: open (and so recover), list, remove the
# least recently used entry, report its id; until stdin closes.
OPERATOR = """
import select, sys, time
from pathlib import Path
from seproxy.cache import Cache

print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    with Cache(Path(sys.argv[1]), quota=1 << 40, min_free=0) as cache:
        entries = cache.entries()
        if entries and cache.remove(entries[0].id):
            print(entries[0].id, flush=True)
    time.sleep(0.02)
"""

STAGINGS = 60


def test_a_second_process_removes_while_this_one_stages(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with Cache(root, quota=1 << 40, min_free=0) as cache:
        operator = subprocess.Popen(
            [sys.executable, "-c", OPERATOR, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert operator.stdout is not None and operator.stdout.readline() == "ready\n"

        def fetch(writer: StagingWriter) -> None:
            for _ in range(4):
                writer.write(b"x" * 25_000)
                time.sleep(0.005)  # a storage element is slower than a disk

        def stage(i: int) -> str:
            return cache.stage("SE", f"/f{i}", fetch).id

        with ThreadPoolExecutor(4) as pool:
            staged = set(pool.map(stage, range(STAGINGS)))
        removed_by_operator, _ = operator.communicate("stop\n", timeout=30)
        removed = set(removed_by_operator.split())

        assert operator.returncode == 0
        assert removed and removed <= staged
        entries = cache.entries()
        assert {e.id for e in entries} == staged - removed
        for entry in entries:
            assert entry.path.stat().st_size == entry.size == 100_000
        on_disk = {p.name for p in cache.layout.data.rglob("*") if p.is_file()}
        assert on_disk == staged - removed
        assert list(cache.layout.tmp.iterdir()) == []



# Stages /popular like a worker process of the service: many threads, a slow storage element;
# reports how many times this process fetched it, and the entry every caller got.
WORKER = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from seproxy.cache import Cache

fetches = []

def fetch(writer):
    fetches.append(1)
    for _ in range(10):
        writer.write(b"y" * 10_000)
        time.sleep(0.05)  # half a second in all: the other process asks meanwhile

with Cache(Path(sys.argv[1]), quota=1 << 40, min_free=0) as cache:
    print("ready", flush=True)
    sys.stdin.readline()
    with ThreadPoolExecutor(5) as pool:
        ids = set(pool.map(lambda _: cache.stage("SE", "/popular", fetch).id, range(5)))
    print(len(fetches), *ids, flush=True)
"""


def test_processes_staging_one_source_at_once_fetch_it_once(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:  # all at once
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = [worker.communicate(timeout=60)[0].split() for worker in workers]

    assert all(worker.returncode == 0 for worker in workers)
    assert sum(int(report[0]) for report in reports) == 1, reports
    assert len({entry_id for report in reports for entry_id in report[1:]}) == 1, reports
    with Cache(root, quota=1 << 40, min_free=0) as cache:
        assert [e.size for e in cache.entries()] == [100_000]
