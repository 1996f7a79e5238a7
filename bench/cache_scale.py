"""The cache at a million entries: staging, eviction, open, CLI and metrics costs as the cache grows.

Targets (issue 18), judged at the largest size against 1k entries in the same
run: a new staging within 1.3x of its cost at 1k; an eviction pass freeing a
few entries under 50 ms; opening the cache (what the service does before it
serves) under 1 s after a clean close and under 5 s after a SIGKILL; ``cache
du`` and a metrics scrape under 100 ms (for the CLI: its growth over 1k, as a
Python interpreter alone starts in about that); the peak RSS of the service's
process and of the CLI within 32 MiB of theirs at 1k.

The cache is filled through the library's own index (``Index.insert``, many
rows per transaction) and files written straight to ``data/<2 hex>/<id>``: the
state ``Cache`` leaves after a staging (same files, same rows, same running
totals kept by the index's triggers), without the per-file fsync and rename
that would make a million stagings take hours. Everything measured afterwards
goes through the normal paths: ``Cache.stage``, ``Cache.evict``, a fresh
process opening the cache, ``seproxy cache du`` and ``seproxy cache ls |
head`` as subprocesses, the Prometheus collector of the service.

Environment: ``SEPROXY_BENCH_DIR`` puts the cache elsewhere than the temporary
directory (``/dev/shm``: file creation on this VM's disk is slow and noisy,
and a million 1 KiB files take about 4.5 GiB there); ``SEPROXY_BENCH_CACHE_SIZES``
(``1000,10000,100000``) replaces the list of sizes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
import xxhash

from bench.common import median, print_table

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 5_000)
FILE_SIZE = 1024
ELEMENTS = ("SE-A", "SE-B", "SE-C", "SE-D")
STAGINGS = 15  # timed stagings per size; the median counts
EVICTIONS = 5  # timed passes that free a few entries; the median counts
CLI_RUNS = 3  # runs of each CLI command; the median wall time counts
FILL_BATCH = 5_000  # rows per transaction while filling
FILL_SPACING = 1.0  # seconds between the creation times of filled entries
TARGET_STAGING_RATIO = 1.3
TARGET_EVICT_FEW_MS = 50.0
TARGET_OPEN_CLEAN_S = 1.0
TARGET_OPEN_KILLED_S = 5.0
TARGET_DU_SCRAPE_MS = 100.0
TARGET_RSS_GROWTH_MIB = 32.0

# A fresh process opens the cache as the service does at start-up, then does
# what the service does next (a metrics scrape, a staging); it prints the
# open time, and its peak RSS is read by the parent (wait4).
OPEN_AND_SERVE = """
import sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest
from seproxy.cache import Cache
from seproxy.metrics import CacheCollector

started = time.perf_counter()
cache = Cache(Path(sys.argv[1]), quota=1 << 50, min_free=0)
opened = time.perf_counter() - started
registry = CollectorRegistry()
registry.register(CacheCollector(cache))
generate_latest(registry)
cache.stage("SE-A", f"/open/{time.time()}", lambda w: w.write(b"o" * 1024))
print(opened, len(list(cache.layout.tmp.iterdir())), flush=True)
cache.close()
"""

# Opens the cache, starts a staging and hangs in it until killed.
STAGE_AND_HANG = """
import sys, time
from pathlib import Path
from seproxy.cache import Cache

def fetch(writer):
    writer.write(b"k" * 1024)
    print("writing", flush=True)
    time.sleep(600)

Cache(Path(sys.argv[1]), quota=1 << 50, min_free=0).stage("SE-A", "/killed", fetch)
"""


def fill(root: Path, count: int, first: float) -> float:
    """Add ``count`` entries of FILE_SIZE bytes (the fast path above), created and
    last used one every FILL_SPACING seconds from ``first``; return entries per second.

    A cache of a million entries grew over weeks: entries dated "now" would all
    fall into the window that recovery after a crash checks (the last minutes).
    """
    from seproxy.cache.entry import Entry
    from seproxy.cache.index import Index
    from seproxy.cache.layout import Layout, new_entry_id

    layout = Layout(root)
    index = Index(layout.index, layout.entry_path)
    started = time.perf_counter()
    try:
        done = 0
        now = first
        while done < count:
            with index.transaction():
                for _ in range(min(FILL_BATCH, count - done)):
                    entry_id = new_entry_id()
                    data = os.urandom(16) * (FILE_SIZE // 16)
                    path = layout.entry_path(entry_id)
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    except FileNotFoundError:
                        path.parent.mkdir(exist_ok=True)
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    os.write(fd, data)
                    os.close(fd)
                    now += FILL_SPACING
                    se = ELEMENTS[done % len(ELEMENTS)]
                    index.insert(Entry(
                        entry_id, "staged", FILE_SIZE, xxhash.xxh3_64_hexdigest(data), None, se, f"/fill/{entry_id}",
                        "bench", None, now, now, 0.0, False, path,
                    ))  # fmt: skip
                    done += 1
    finally:
        index.close()
    return count / (time.perf_counter() - started)


def in_child(command: list[str], *, head: int | None = None, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``command``; return (wall seconds, peak RSS MiB, stdout). With ``head``,
    read that many lines and close the pipe, as ``| head`` does."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    if head is None:
        output = child.stdout.read()
    else:
        output = "".join(child.stdout.readline() for _ in range(head))
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}: {output[-2000:]}")
    return wall, usage.ru_maxrss / 1024, output


def open_in_fresh_process(root: Path) -> tuple[float, float, float]:
    """(cache open seconds, process wall seconds, peak RSS MiB) of a process that opens and uses the cache."""
    wall, rss, output = in_child([sys.executable, "-c", OPEN_AND_SERVE, str(root)])
    opened, left_in_tmp = output.split()
    if left_in_tmp != "0":
        raise RuntimeError(f"the open left {left_in_tmp} files in tmp/: recovery did not run")
    return float(opened), wall, rss


def kill_while_staging(root: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", STAGE_AND_HANG, str(root)], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        if child.stdout.readline() != "writing\n":
            raise RuntimeError("the staging to kill did not start")
        child.send_signal(signal.SIGKILL)
    if not list((root / "tmp").iterdir()):
        raise RuntimeError("the killed staging left nothing to recover")


def measure(root: Path, config: Path) -> dict[str, Any]:
    """Everything at the cache's present size; the evictions last (they shrink it by about 10 %)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from seproxy.cache import Cache
    from seproxy.metrics import CacheCollector

    row: dict[str, Any] = {}
    row["open_clean_s"], row["start_clean_s"], _ = open_in_fresh_process(root)
    kill_while_staging(root)
    row["open_killed_s"], row["start_killed_s"], row["service_mib"] = open_in_fresh_process(root)
    seproxy = [sys.executable, "-m", "seproxy", "cache"]
    # Three runs each, taking turns with the CLI's start-up alone (`--help` imports the same modules).
    runs: dict[str, list[tuple[float, float, str]]] = {"help": [], "du": [], "ls": []}
    for _ in range(CLI_RUNS):
        runs["help"].append(in_child([*seproxy, "du", "--help"]))
        runs["du"].append(in_child([*seproxy, "du", "--config", str(config)]))
        runs["ls"].append(in_child([*seproxy, "ls", "--config", str(config)], head=10))
    row["cli_start_s"] = median([wall for wall, _, _ in runs["help"]])
    row["du_s"] = median([wall for wall, _, _ in runs["du"]])
    row["du_mib"] = max(rss for _, rss, _ in runs["du"])
    row["ls_head_s"] = median([wall for wall, _, _ in runs["ls"]])
    row["ls_mib"] = max(rss for _, rss, _ in runs["ls"])

    with Cache(root, quota=1 << 50, min_free=0) as cache:
        registry = CollectorRegistry()
        registry.register(CacheCollector(cache))
        row["scrape_ms"] = median([_timed(lambda: generate_latest(registry)) for _ in range(20)]) * 1000
        row["usage_ms"] = median([_timed(cache.usage) for _ in range(20)]) * 1000
        number = time.time_ns()
        for i in range(3):  # warm-up: the first stagings of a process pay for imports and caches
            cache.stage("SE-A", f"/warm/{number}/{i}", lambda w: w.write(b"w" * FILE_SIZE))
        row["stage_ms"] = median([
            _timed(lambda i=i: cache.stage("SE-A", f"/new/{number}/{i}", lambda w: w.write(b"n" * FILE_SIZE)))
            for i in range(STAGINGS)
        ]) * 1000  # fmt: skip
        usage = cache.usage().total
    few = []
    for _ in range(EVICTIONS):
        few.append(_evict(root, usage - 3 * FILE_SIZE + 1))
        usage -= few[-1][0] * FILE_SIZE
    row["evict_few"] = few[0][0]
    row["evict_few_ms"] = median([ms for _, ms in few])
    row["evict_10pct"], row["evict_10pct_ms"] = _evict(root, int(usage * 0.9))
    return row


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _evict(root: Path, limit: int) -> tuple[int, float]:
    """One eviction pass down to ``limit`` bytes (watermarks at 1: exactly down to it); (entries, ms)."""
    from seproxy.cache import Cache

    with Cache(root, quota=limit, high_watermark=1.0, low_watermark=1.0, min_free=0) as cache:
        started = time.perf_counter()
        evicted = cache.evict()
        return len(evicted), (time.perf_counter() - started) * 1000


def entry_count(root: Path) -> int:
    from seproxy.cache import Cache

    with Cache(root, quota=1 << 50, min_free=0, read_only=True) as cache:
        return cache.usage().count


def _du_work_ms(row: dict[str, Any]) -> float:
    return (row["du_s"] - row["cli_start_s"]) * 1000


def verdict(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    first, last = rows[0], rows[-1]
    return [
        (f"staging {last['stage_ms']:.2f} ms <= {TARGET_STAGING_RATIO} x {first['stage_ms']:.2f} ms",
         last["stage_ms"] <= TARGET_STAGING_RATIO * first["stage_ms"]),
        (f"eviction of a few entries {last['evict_few_ms']:.1f} ms < {TARGET_EVICT_FEW_MS:g} ms",
         last["evict_few_ms"] < TARGET_EVICT_FEW_MS),
        (f"open after a clean close {last['open_clean_s']:.3f} s < {TARGET_OPEN_CLEAN_S:g} s",
         last["open_clean_s"] < TARGET_OPEN_CLEAN_S),
        (f"open after a SIGKILL {last['open_killed_s']:.3f} s < {TARGET_OPEN_KILLED_S:g} s",
         last["open_killed_s"] < TARGET_OPEN_KILLED_S),
        (f"cache du beyond the CLI's start-up {_du_work_ms(last):.0f} ms < {TARGET_DU_SCRAPE_MS:g} ms",
         _du_work_ms(last) < TARGET_DU_SCRAPE_MS),
        (f"metrics scrape {last['scrape_ms']:.2f} ms < {TARGET_DU_SCRAPE_MS:g} ms",
         last["scrape_ms"] < TARGET_DU_SCRAPE_MS),
        (f"service RSS growth {last['service_mib'] - first['service_mib']:.1f} MiB <= {TARGET_RSS_GROWTH_MIB:g} MiB",
         last["service_mib"] - first["service_mib"] <= TARGET_RSS_GROWTH_MIB),
        (f"CLI RSS growth (ls | head) {last['ls_mib'] - first['ls_mib']:.1f} MiB, (du) "
         f"{last['du_mib'] - first['du_mib']:.1f} MiB <= {TARGET_RSS_GROWTH_MIB:g} MiB",
         max(last["ls_mib"] - first["ls_mib"], last["du_mib"] - first["du_mib"]) <= TARGET_RSS_GROWTH_MIB),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fill to each size in turn, measure, print the table and the verdict."""
    sizes = QUICK_SIZES if args.quick else SIZES
    if os.environ.get("SEPROXY_BENCH_CACHE_SIZES"):
        sizes = tuple(int(size) for size in os.environ["SEPROXY_BENCH_CACHE_SIZES"].split(","))
    base = Path(os.environ.get("SEPROXY_BENCH_DIR") or tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-cache-", dir=base) as temp:
        root = Path(temp) / "cache"
        config = Path(temp) / "seproxy.toml"
        config.write_text(tomli_w.dumps({"service": {"state_dir": str(Path(temp) / "state")},
                                         "cache": {"root": str(root), "quota": "1P"}}))  # fmt: skip
        from seproxy.cache import Cache

        Cache(root, quota=1 << 50, min_free=0).close()
        print(
            f"cache_scale: sizes {', '.join(f'{s:,}' for s in sizes)}, files of {FILE_SIZE} B, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.2f}, cache in {root}",
            flush=True,
        )
        rows = []
        first = time.time() - FILL_SPACING * 2 * sizes[-1]
        for size in sizes:
            missing = size - entry_count(root)
            rate = fill(root, missing, first) if missing > 0 else float("nan")
            first += FILL_SPACING * max(missing, 0)
            row = {"entries": size, "fill_per_s": rate, **measure(root, config)}
            rows.append(row)
            print(f"  {size:,} entries: {row}", flush=True)
    headers = ["entries", "fill/s", "staging ms", "evict few (n) ms", "evict 10 % (n) ms", "open clean ms",
               "open killed ms", "CLI start s", "du s", "du MiB", "ls|head s", "ls MiB", "scrape ms",
               "service MiB"]  # fmt: skip
    print_table(headers, [
        [r["entries"], r["fill_per_s"], r["stage_ms"], f"({r['evict_few']}) {r['evict_few_ms']:.1f}",
         f"({r['evict_10pct']}) {r['evict_10pct_ms']:.0f}", r["open_clean_s"] * 1000, r["open_killed_s"] * 1000,
         r["cli_start_s"],
         r["du_s"],
         r["du_mib"], r["ls_head_s"], r["ls_mib"], r["scrape_ms"], r["service_mib"]]
        for r in rows
    ])  # fmt: skip
    print("(open: Cache() in a fresh process; start: that process's whole life, interpreter included;"
          " CLI start: `seproxy cache du --help`)")
    for r in rows:
        print(f"  {r['entries']:,}: start clean {r['start_clean_s']:.2f} s, after kill {r['start_killed_s']:.2f} s, "
              f"usage() {r['usage_ms']:.2f} ms")  # fmt: skip
    checks = verdict(rows)
    for text, ok in checks:
        print(f"{'ok  ' if ok else 'MISS'} {text}")
    passed = all(ok for _, ok in checks) if len(rows) > 1 else None
    return {"rows": rows, "passed": passed}
