"""Stream while staging, 1 GiB cold from WebDAV: the door and prepareFileForHTTP next to curl from the storage.

The measurements of issue 15 ("Measured, not timed"), on one file of
random bytes on a WebDAV storage (wsgidav over HTTPS, announcing the
file's ADLER32 as dCache does), never in seproxy's cache when a
measurement starts (the cache is purged before each):

- **door**: ``curl`` GET of ``https://<service>/lfn/<LFN>`` with the
  development proxy. Targets: time to the last byte at most 1.15 times
  that of ``curl`` straight from the storage, time to the first byte at
  most 50 ms more than the storage's own first byte.
- **prepareFileForHTTP + curl**: the RPC call with ``http.answer_when =
  "started"``, then ``curl`` of its ``HttpURL`` (plain HTTP, sendfile);
  both times counted from the start of the call. Same targets.
- **20 readers**: ``curl`` GETs of the same cold file through the door, all
  started at once (the kernel spreads their connections over the worker
  processes). Targets: each one's last byte within 1.3 times one reader's
  (the median of the single door reads), and one staging: the storage
  counts the GETs of the file, which must grow by one.

The direct ``curl`` reads the storage's file from the page cache, as the
stagings do; all transfers write to /dev/null. Times are curl's own
(``time_starttransfer``, ``time_total``). The storage and the service each
run in processes of their own, the service as ``seproxy serve`` runs by
default (``service.workers = "auto"``: a worker per core). Rounds alternate
the three single reads; the median round counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ServerProcess, ServiceTree, free_port, median, print_table
from bench.rpc_ping import seproxy_config
from bench.storage_proxy import Plan, start_webdav, write_durably
from seproxy.cache import PurgeRule, purge
from seproxy.cache.configured import open_cache
from seproxy.config import Settings, settings_from_dict
from seproxy.security.devcreds import ensure_dev_credentials
from seproxy.transfer import StorageElementProxyClient, returnValueOrRaise

MiB = 1024 * 1024
GiB = 1024 * MiB
TARGET_LAST_RATIO = 1.15
TARGET_FIRST_EXTRA = 0.050  # seconds
TARGET_READERS_RATIO = 1.3
READERS = 20
SE = "BenchDAV"
FILE_NAME = "bench.bin"
LFN = f"/{FILE_NAME}"
# Where the storage tells how many GETs each path had (the benchmark's own question, not WebDAV).
COUNT_PATH = "/.bench-gets"
SECRET = "bench-streaming-secret-" + "0123456789abcdef" * 2


FULL = Plan(size=GiB, rounds=3)
QUICK = Plan(size=64 * MiB, rounds=1)


class CountedGets:
    """WSGI middleware of the storage: counts GETs by path, and tells the counts at ``COUNT_PATH``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.gets: Counter[str] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == COUNT_PATH:
            body = json.dumps(self.gets).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if environ["REQUEST_METHOD"] == "GET":
            self.gets[path] += 1
        return self.app(environ, start_response)


@dataclass(frozen=True)
class Fetch:
    """One curl transfer: seconds to the first and to the last byte, bytes received."""

    first: float
    last: float
    size: int

    def later(self, seconds: float) -> Fetch:
        """The same transfer counted from ``seconds`` before it started."""
        return Fetch(self.first + seconds, self.last + seconds, self.size)


def curl_command(url: str, credentials: dict[str, str]) -> list[str]:
    return [
        "curl", "--silent", "--show-error", "--fail", "--cert", credentials["proxy"], "--capath", credentials["ca_dir"],
        "--output", os.devnull, "--write-out", "%{time_starttransfer} %{time_total} %{size_download}", url,
    ]  # fmt: skip


def fetched(output: bytes, expected: int) -> Fetch:
    first, last, size = output.split()
    fetch = Fetch(float(first), float(last), int(float(size)))
    if fetch.size != expected:
        raise RuntimeError(f"curl received {fetch.size} bytes of {expected}")
    return fetch


@dataclass
class Bench:
    """The running servers, and the transfers to measure against them."""

    size: int
    credentials: dict[str, str]
    settings: Settings  # the service's, to empty its cache
    client: StorageElementProxyClient
    stored_url: str
    door_url: str
    storage_url: str

    def get(self, url: str) -> Fetch:
        run = subprocess.run(curl_command(url, self.credentials), capture_output=True, timeout=3600)
        if run.returncode:
            raise RuntimeError(f"curl {url} failed ({run.returncode}): {run.stderr.decode(errors='replace').strip()}")
        return fetched(run.stdout, self.size)

    def cold(self) -> None:
        """Nothing of the file in the cache: a purge with force (over links' pins), again until the
        side server's read lease of the last download has lingered out (``shared_leases.LINGER``)."""
        deadline = time.monotonic() + 30
        with open_cache(self.settings) as cache:
            while purge(cache, PurgeRule(everything=True), force=True).kept:
                if time.monotonic() > deadline:
                    raise RuntimeError("the cache could not be emptied: a download still reads the file")
                time.sleep(0.2)

    def direct(self) -> Fetch:
        return self.get(self.stored_url)

    def door(self) -> Fetch:
        self.cold()
        return self.get(self.door_url)

    def prepared(self) -> Fetch:
        """prepareFileForHTTP, then curl of its URL, both counted from the call's start."""
        self.cold()
        started = time.perf_counter()
        url = returnValueOrRaise(self.client.prepareFileForHTTP(LFN))["HttpURL"]
        answered = time.perf_counter() - started
        return self.get(url).later(answered)

    def readers(self, count: int) -> tuple[list[Fetch], int]:
        """``count`` door GETs of the cold file at once: their transfers, and how many GETs the storage had."""
        self.cold()
        before = self.storage_gets()
        command = curl_command(self.door_url, self.credentials)
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(count)]
        fetches = []
        for process in processes:
            output, errors = process.communicate(timeout=3600)
            if process.returncode:
                raise RuntimeError(f"a concurrent reader failed ({process.returncode}): {errors.decode(errors='replace').strip()}")
            fetches.append(fetched(output, self.size))
        return fetches, self.storage_gets() - before

    def storage_gets(self) -> int:
        with urllib.request.urlopen(self.storage_url + COUNT_PATH, context=_storage_tls(self.credentials)) as answer:
            counts: dict[str, int] = json.load(answer)
        return sum(count for path, count in counts.items() if path.endswith(LFN))


def _storage_tls(credentials: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(capath=credentials["ca_dir"])


def start_servers(directory: Path, storage: Path, digests: dict[str, str], size: int, servers: ExitStack) -> Bench:
    """The WebDAV storage and the service (door, side server answering when stagings start)."""
    developer = ensure_dev_credentials(directory / "credentials")
    host = (str(developer.host_cert), str(developer.host_key))
    webdav = ServerProcess(start_webdav, [str(storage), digests, *host, CountedGets], directory / "webdav.log")
    servers.callback(webdav.stop)
    storage_url = f"https://127.0.0.1:{webdav.port}"
    config = seproxy_config(developer, directory / "state")
    # As `seproxy serve` runs by default: a worker process per core, sharing fixed ports.
    config["service"].update({"port": free_port(), "workers": "auto"})
    config["storage_elements"] = {SE: {"plugin": "webdav", "base": f"{storage_url}/"}}
    config["metrics"] = {"port": free_port()}
    config["http"] = {
        "enabled": True, "port": free_port(), "host": "127.0.0.1", "public_name": "127.0.0.1", "secret": SECRET,
        "answer_when": "started",
    }  # fmt: skip
    service = ServiceTree(directory / "service", config)
    servers.callback(service.stop)
    credentials = {"proxy": str(developer.proxy), "ca_dir": str(developer.ca_dir)}
    service_url = f"https://127.0.0.1:{service.port}"
    client = StorageElementProxyClient(f"{service_url}/DataManagement/StorageElementProxy", **credentials)
    servers.callback(client.close)
    print(f"server processes: seproxy {service.pid}, webdav {webdav.pid}", flush=True)
    return Bench(
        size, credentials, settings_from_dict(config, "<bench>"), client,
        f"{storage_url}/{FILE_NAME}", f"{service_url}/lfn{LFN}", storage_url,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the file, start the servers, measure in turns, print the tables and the verdict."""
    if shutil.which("curl") is None:
        raise SystemExit("curl is missing: install the Debian packages of scripts/debian-packages.txt")
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-streaming-") as temp, ExitStack() as servers:
        directory = Path(temp)
        storage = directory / "storage"
        storage.mkdir()
        digests = {LFN: write_durably(storage / FILE_NAME, plan.size)}
        print(
            f"streaming: {plan.size // MiB} MiB, {plan.rounds} round(s), {READERS} concurrent readers, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        bench = start_servers(directory, storage, digests, plan.size, servers)
        singles: dict[str, list[Fetch]] = {"curl from the storage": [], "door": [], "prepareFileForHTTP + curl": []}
        for number in range(plan.rounds):
            done = {"curl from the storage": bench.direct(), "door": bench.door(), "prepareFileForHTTP + curl": bench.prepared()}
            for name, fetch in done.items():
                singles[name].append(fetch)
            print(f"  round {number + 1}: " + ", ".join(f"{name} {f.first:.3f}/{f.last:.2f} s" for name, f in done.items()), flush=True)
        readers, stagings = bench.readers(READERS)
    return report(singles, readers, stagings)


def report(singles: dict[str, list[Fetch]], readers: list[Fetch], stagings: int) -> dict[str, Any]:
    """The tables and the verdicts; ``passed`` when every target is met."""
    first = {name: median([f.first for f in fetches]) for name, fetches in singles.items()}
    last = {name: median([f.last for f in fetches]) for name, fetches in singles.items()}
    size = next(iter(singles.values()))[0].size
    print(f"\none cold read of {size // MiB} MiB (seconds to the first and to the last byte, medians)\n")
    print_table(
        ["read", "first byte s", "last byte s", "MiB/s", "rounds last byte s"],
        [
            [name, first[name], last[name], size / MiB / last[name], " ".join(f"{f.last:.2f}" for f in fetches)]
            for name, fetches in singles.items()
        ],
    )
    one = last["door"]
    slowest = max(f.last for f in readers)
    spread = slowest / one
    print(f"\n{len(readers)} concurrent door reads of the same cold file (seconds to the last byte)\n")
    print_table(
        ["readers", "fastest s", "median s", "slowest s", "slowest / one reader", "storage GETs"],
        [[len(readers), min(f.last for f in readers), median([f.last for f in readers]), slowest, spread, stagings]],
    )
    direct_first, direct_last = first["curl from the storage"], last["curl from the storage"]
    checks = []
    for name in ("door", "prepareFileForHTTP + curl"):
        ratio, extra = last[name] / direct_last, first[name] - direct_first
        checks.append([f"{name}: last byte / direct", ratio, f"<= {TARGET_LAST_RATIO}", ratio <= TARGET_LAST_RATIO])
        checks.append([f"{name}: first byte - direct s", extra, f"<= {TARGET_FIRST_EXTRA}", extra <= TARGET_FIRST_EXTRA])
    checks.append([f"{len(readers)} readers: slowest / one reader", spread, f"<= {TARGET_READERS_RATIO}", spread <= TARGET_READERS_RATIO])
    checks.append([f"{len(readers)} readers: stagings (storage GETs)", stagings, "1", stagings == 1])
    print()
    print_table(["measure", "value", "target", "verdict"], [[*check[:3], "PASS" if check[3] else "FAIL"] for check in checks])
    return {
        "first_byte": first,
        "last_byte": last,
        "readers_slowest_ratio": spread,
        "stagings": stagings,
        "passed": all(check[3] for check in checks),
    }
