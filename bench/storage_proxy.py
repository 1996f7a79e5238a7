"""Storage proxy, 1 GiB: streamToClient and the door next to nginx, streamed upload memory, prepareFile next to curl.

The measurements of issue 3 ("Measured, not timed") and of the door, in one run, on one
1 GiB file of random bytes:

- **streamToClient** of the staged file, fetched by ``curl`` with the DIRAC
  form (``method=streamToClient``, ``rawContent=True``), next to the same
  ``curl`` fetching the same file from nginx over HTTPS (``sendfile on``,
  a host certificate of the same CA). Targets: at least 0.5 of nginx's
  throughput; the service's peak RSS grows by less than 64 MiB.
- **upload** with our client (``TransferClient.sendFile``: the streamed
  ``PUT <service URL>/stream/putFile/<name>`` route), the client in a fresh
  process. Targets: the client's peak RSS, and the service's peak RSS
  growth, each under 64 MiB.
- **the storage door** (issue 14): ``curl`` GET of the cached file at
  ``https://HOST:PORT/lfn/<LFN>`` with the development proxy, next to the
  same ``curl`` from nginx over HTTPS. Target: at least 0.8 of nginx's
  throughput. And ``gfal-copy`` of the file, not cached (the cache emptied
  first), through the door (``davs://``), next to ``gfal-copy`` straight
  from the WebDAV storage: the ratio is reported, not judged (staging
  first, then serving, takes about twice as long until streaming while
  staging lands).
- **prepareFile** from a WebDAV storage (wsgidav, HTTPS) into the cache,
  next to ``curl`` fetching the same file from the same server over the same
  TLS. prepareFile writes the cache file and fsyncs it before it answers, so
  curl is timed twice: to /dev/null, and to a file on the cache's disk
  followed by an fsync, the like-for-like reference. Target: at most 1.2
  times that curl's time.

Each server runs in a process of its own (seproxy, WebDAV storage, nginx),
so that the CPU of each side can be read from /proc; peaks of RSS are
VmHWM, reset before each transfer. The measured transfers alternate, several
rounds; the median round counts. The files and the cache live in a temporary
directory; the header names its file system (on tmpfs the fsyncs would cost
nothing, on a disk they cost what they cost a site). Each prepareFile starts
with an empty cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from wsgidav.wsgidav_app import WsgiDAVApp

from bench.common import (
    NGINX,
    Nginx,
    ServerProcess,
    Started,
    median,
    nginx_version,
    print_table,
    process_peak_rss_mib,
    reset_peak_rss,
)
from bench.rpc_ping import seproxy_config, start_seproxy
from bench.transfer_client import curl, curl_download, seproxy_transfer, write_random
from seproxy.cache import PurgeRule, purge
from seproxy.cache.configured import open_cache
from seproxy.config import Settings, settings_from_dict
from seproxy.security.devcreds import ensure_dev_credentials
from seproxy.transfer import StorageElementProxyClient, returnValueOrRaise

MiB = 1024 * 1024
GiB = 1024 * MiB
TARGET_STREAM_RATIO = 0.5
TARGET_DOOR_RATIO = 0.8
TARGET_PREPARE_RATIO = 1.2
TARGET_RSS_MIB = 64
SE = "BenchDAV"
FILE_NAME = "bench.bin"
# wsgidav reads files in 8 KiB blocks by default; in 1 MiB blocks the storage
# spends less CPU per byte, so that it limits both fetchers less.
WEBDAV_BLOCK = MiB


@dataclass(frozen=True)
class Plan:
    """The file's size, and how many rounds each comparison gets."""

    size: int
    rounds: int


FULL = Plan(size=GiB, rounds=5)
QUICK = Plan(size=256 * MiB, rounds=1)


# -- the WebDAV storage (in a process of its own) -----------------------------


class StoredDigests:
    """WSGI middleware: answers ``Want-Digest: adler32`` with checksums the storage keeps.

    dCache and StoRM store a file's ADLER32 when it is written and answer
    ``Digest: adler32=...``, so seproxy verifies what it stages. wsgidav has
    no checksums; computing one per request would read the whole file before
    the first byte, which no real storage does, so they are given here.
    """

    def __init__(self, app: Any, digests: dict[str, str]) -> None:
        self.app = app
        self.digests = digests

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        digest = self.digests.get(environ["PATH_INFO"])
        if digest is None or "adler32" not in environ.get("HTTP_WANT_DIGEST", "").lower():
            return self.app(environ, start_response)

        def with_digest(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("Digest", f"adler32={digest}")], exc_info)

        return self.app(environ, with_digest)


def start_webdav(
    root: str, digests: dict[str, str], cert: str, key: str, wrap: Callable[[Any], Any] | None = None
) -> Started:
    """wsgidav on cheroot over HTTPS, serving ``root`` to anyone (the test fixture's server, tuned for size);
    ``wrap`` puts a benchmark's own WSGI middleware in front."""
    app = WsgiDAVApp(
        {
            "provider_mapping": {"/": root},
            "simple_dc": {"user_mapping": {"*": True}},
            "dir_browser": {"enable": False},
            "logging": {"enable": False},
            "block_size": WEBDAV_BLOCK,
            "verbose": 1,
        }
    )
    served = StoredDigests(app, digests)
    server = wsgi.Server(("127.0.0.1", 0), wrap(served) if wrap else served, numthreads=4)
    server.ssl_adapter = BuiltinSSLAdapter(cert, key)
    server.prepare()
    thread = threading.Thread(target=server.serve, name="webdav", daemon=True)
    thread.start()

    async def stop() -> None:
        server.stop()
        thread.join(10)

    return server.bind_addr[1], stop


# -- one transfer -------------------------------------------------------------


@dataclass(frozen=True)
class Moved:
    """What the benchmark's own program (curl, or our client) saw of one transfer."""

    seconds: float
    size: int
    cpu_seconds: float
    peak_rss_mib: float | None = None  # of our client's process; None for curl


@dataclass(frozen=True)
class Run:
    """One transfer: what moved, the CPU of each process that took part, the service's memory."""

    seconds: float
    size: int
    cpu: dict[str, float]  # CPU seconds by process: "client" (curl or ours), and each server's
    service_rss_mib: float  # when the transfer started
    service_peak_mib: float  # the service's peak RSS during the transfer
    client_peak_mib: float | None

    @property
    def mib_per_second(self) -> float:
        return self.size / MiB / self.seconds

    @property
    def service_growth_mib(self) -> float:
        return self.service_peak_mib - self.service_rss_mib

    def cpu_per_gib(self, process: str) -> float:
        return self.cpu[process] / (self.size / GiB)


CpuClock = Callable[[], float]
DEVNULL = Path(os.devnull)


@dataclass
class Bench:
    """The running servers, and the transfers to measure against them."""

    credentials: dict[str, str]  # curl's and our client's: the development proxy and CA directory
    settings: Settings  # the service's, to empty its cache
    client: StorageElementProxyClient
    service_url: str
    service_pid: int
    stored_url: str  # the file on the WebDAV storage
    served_url: str  # the same file from nginx
    door_url: str  # the same file through the service's storage door
    clocks: dict[str, CpuClock]  # CPU seconds so far of each server process, by name

    def measure(self, transfer: Callable[[], Moved]) -> Run:
        """Run ``transfer`` with a fresh peak of the service's RSS, reading the servers' CPU around it.

        The disk is synced first, so that no write-back of an earlier
        transfer (or of a neighbour) runs into this one's time.
        """
        os.sync()
        service_rss = reset_peak_rss(self.service_pid)
        started = {name: clock() for name, clock in self.clocks.items()}
        moved = transfer()
        cpu = {name: clock() - started[name] for name, clock in self.clocks.items()}
        cpu["client"] = moved.cpu_seconds
        peak = process_peak_rss_mib(self.service_pid)
        return Run(moved.seconds, moved.size, cpu, service_rss, peak, moved.peak_rss_mib)

    def empty_cache(self) -> None:
        with open_cache(self.settings) as cache:
            purge(cache, PurgeRule(everything=True), force=True)

    def prepare_file(self) -> Moved:
        """``prepareFile`` into an emptied cache, timed from the RPC call to its answer."""
        self.empty_cache()
        cpu, started = time.process_time(), time.perf_counter()
        size = returnValueOrRaise(self.client.prepareFile(SE, f"/{FILE_NAME}"))["Size"]
        return Moved(time.perf_counter() - started, size, time.process_time() - cpu)

    def curl_get(self, url: str, destination: Path) -> Moved:
        """``curl -o destination URL``; a destination other than /dev/null is fsynced, inside the time.

        The previous copy is removed just before, as ``prepare_file`` purges
        the cache just before: both then write into memory freed a moment
        ago, which on this VM costs much less than memory left idle a while.
        """
        if destination != DEVNULL:
            destination.unlink(missing_ok=True)
        seconds, size, cpu, _ = curl(["--output", str(destination), url], self.credentials)
        if destination != DEVNULL:
            started = time.perf_counter()
            descriptor = os.open(destination, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            seconds += time.perf_counter() - started
        return Moved(seconds, size, cpu)

    def gfal_copy(self, url: str, destination: Path, *, cold: bool) -> Moved:
        """``gfal-copy`` of ``url`` (davs://) to a local file, as a grid job runs it: the development
        proxy and CA directory in its environment. ``cold``: the service's cache is emptied first."""
        if cold:
            self.empty_cache()
        destination.unlink(missing_ok=True)
        environment = {
            **os.environ, "X509_USER_PROXY": self.credentials["proxy"], "X509_CERT_DIR": self.credentials["ca_dir"],
            # The CLI runs on Debian's python3, where the gfal2 bindings are, not on this virtual environment's.
            "GFAL_PYTHONBIN": "/usr/bin/python3", "PYTHONPATH": "",
        }  # fmt: skip
        davs = "davs://" + url.removeprefix("https://")
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(["gfal-copy", "-f", davs, f"file://{destination}"], env=environment, check=True, capture_output=True, timeout=3600)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        return Moved(seconds, destination.stat().st_size, cpu)

    def stream_to_client(self) -> Moved:
        """curl posting DIRAC's ``receiveFile`` form (``streamToClient``) for the prepared file, to /dev/null."""
        transfer = curl_download(self.service_url, self.credentials, DEVNULL, f"getFile/{FILE_NAME}")
        return Moved(transfer.seconds, transfer.size, transfer.cpu_seconds)

    def send_file(self, source: Path) -> Moved:
        """``TransferClient.sendFile`` in a fresh process, whose peak RSS is then its own."""
        transfer, _ = seproxy_transfer("sendFile", self.service_url, self.credentials, source, f"putFile/{FILE_NAME}")
        return Moved(transfer.seconds, transfer.size, transfer.cpu_seconds, transfer.peak_rss_mib)


def start_servers(directory: Path, storage: Path, digests: dict[str, str], servers: ExitStack) -> Bench:
    """The WebDAV storage, nginx and the service, each in a process of its own, all with the development host certificate."""
    developer = ensure_dev_credentials(directory / "credentials")
    host = (developer.host_cert, developer.host_key)
    webdav = ServerProcess(start_webdav, [str(storage), digests, *map(str, host)], directory / "webdav.log")
    servers.callback(webdav.stop)
    nginx = Nginx(directory / "nginx", storage, tls=host)
    servers.callback(nginx.stop)
    config = seproxy_config(developer, directory / "state")
    config["storage_elements"] = {SE: {"plugin": "webdav", "base": f"https://127.0.0.1:{webdav.port}/"}}
    service = ServerProcess(start_seproxy, [config], directory / "seproxy.log")
    servers.callback(service.stop)
    credentials = {"proxy": str(developer.proxy), "ca_dir": str(developer.ca_dir)}
    service_url = f"https://127.0.0.1:{service.port}/DataManagement/StorageElementProxy"
    client = StorageElementProxyClient(service_url, **credentials)
    servers.callback(client.close)
    print(
        f"server processes (py-spy record --gil --pid PID): seproxy {service.pid} "
        f"(RSS {reset_peak_rss(service.pid):.1f} MiB at start), webdav {webdav.pid}, nginx {nginx.process.pid}",
        flush=True,
    )
    return Bench(
        credentials, settings_from_dict(config, "<bench>"), client, service_url, service.pid,
        f"https://127.0.0.1:{webdav.port}/{FILE_NAME}", f"https://127.0.0.1:{nginx.port}/{FILE_NAME}",
        f"https://127.0.0.1:{service.port}/lfn/{FILE_NAME}",
        {"seproxy": service.cpu_seconds, "webdav": webdav.cpu_seconds, "nginx": nginx.cpu_seconds},
    )  # fmt: skip


# -- the run ------------------------------------------------------------------


@dataclass
class Results:
    """Every run, by what was measured (``"seproxy streamToClient"``, ``"nginx"``, ...)."""

    runs: dict[str, list[Run]] = field(default_factory=dict)

    def alternate(self, bench: Bench, transfers: dict[str, Callable[[], Moved]], rounds: int) -> None:
        """Each transfer in turn, ``rounds`` times; a line per round, so that a disturbed round stands out."""
        for round_number in range(rounds):
            done = {name: bench.measure(transfer) for name, transfer in transfers.items()}
            for name, run in done.items():
                self.runs.setdefault(name, []).append(run)
            summary = ", ".join(f"{name} {run.seconds:.2f} s ({run.mib_per_second:.0f} MiB/s)" for name, run in done.items())
            print(f"  round {round_number + 1}: {summary}", flush=True)

    def median_seconds(self, name: str) -> float:
        return median([run.seconds for run in self.runs[name]])

    def median_rate(self, name: str) -> float:
        return median([run.mib_per_second for run in self.runs[name]])

    def service_growth(self, name: str) -> float:
        """The largest growth of the service's RSS over the rounds: a target holds for every round."""
        return max(run.service_growth_mib for run in self.runs[name])

    def row(self, name: str, processes: tuple[str, str]) -> list[Any]:
        """Median time and rate, each round's rate, the median CPU per GiB of ``processes``,
        and the service's RSS growth where the service moved the bytes."""
        runs = self.runs[name]
        cpu = (median([run.cpu_per_gib(process) for run in runs]) for process in processes)
        growth = self.service_growth(name) if "seproxy" in processes else "-"
        rates = " ".join(f"{run.mib_per_second:.0f}" for run in runs)
        return [name, self.median_seconds(name), self.median_rate(name), rates, *cpu, growth]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the file, start the three servers, measure in turns, print the tables and the verdict."""
    for name, tool in (("nginx", NGINX), ("curl", shutil.which("curl")), ("gfal-copy", shutil.which("gfal-copy"))):
        if tool is None or not os.access(tool, os.X_OK):
            raise SystemExit(f"{name} is missing: install the Debian packages of scripts/bench-packages.txt and debian-packages.txt")
    plan = QUICK if args.quick else FULL
    results = Results()
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-storage-") as temp, ExitStack() as servers:
        directory = Path(temp)
        directory.chmod(0o755)  # nginx's workers run as nobody
        storage = directory / "storage"
        storage.mkdir(mode=0o755)
        source = storage / FILE_NAME
        digests = {f"/{FILE_NAME}": write_durably(source, plan.size)}
        print(
            f"storage_proxy: {plan.size // MiB} MiB, {plan.rounds} round(s), {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.2f}, {nginx_version()}, "
            f"files and cache in {directory} ({filesystem_of(directory)})",
            flush=True,
        )
        bench = start_servers(directory, storage, digests, servers)
        fetches = {
            "prepareFile": bench.prepare_file,
            "curl → file + fsync": lambda: bench.curl_get(bench.stored_url, directory / "copy.bin"),
            "curl → /dev/null": lambda: bench.curl_get(bench.stored_url, DEVNULL),
        }
        results.alternate(bench, fetches, plan.rounds)
        bench.curl_get(bench.door_url, DEVNULL)  # staged once: the door's GETs below read the cache
        streams = {
            "seproxy streamToClient": bench.stream_to_client,
            "seproxy door GET": lambda: bench.curl_get(bench.door_url, DEVNULL),
            "nginx": lambda: bench.curl_get(bench.served_url, DEVNULL),
        }
        results.alternate(bench, streams, plan.rounds)
        copies = {
            "gfal-copy door (cold)": lambda: bench.gfal_copy(bench.door_url, directory / "copy.bin", cold=True),
            "gfal-copy WebDAV": lambda: bench.gfal_copy(bench.stored_url, directory / "copy.bin", cold=False),
        }
        results.alternate(bench, copies, plan.rounds)
        results.alternate(bench, {"sendFile": lambda: bench.send_file(source)}, 1)
    return report(results)


def write_durably(path: Path, size: int) -> str:
    """Random bytes, fsynced (so that their write-back does not run into the measurements); their ADLER32 in hex."""
    write_random(path, size)
    checksum = 1
    with open(path, "rb") as stream:
        while block := stream.read(16 * MiB):
            checksum = zlib.adler32(block, checksum)
        os.fsync(stream.fileno())
    return f"{checksum:08x}"


def filesystem_of(path: Path) -> str:
    """The file system type and device under ``path``: a tmpfs cache would make the fsyncs free."""
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(path)], capture_output=True, text=True)
    return found.stdout.strip() or "file system unknown"


def report(results: Results) -> dict[str, Any]:
    """The three tables and the verdicts; ``passed`` when every target is met."""
    print("\nprepareFile from WebDAV, next to curl from the same server (CPU in s/GiB)\n")
    print_table(
        ["fetch", "seconds", "MiB/s", "rounds MiB/s", "webdav CPU", "fetcher CPU", "service RSS +MiB"],
        [
            results.row("prepareFile", ("webdav", "seproxy")),
            results.row("curl → file + fsync", ("webdav", "client")),
            results.row("curl → /dev/null", ("webdav", "client")),
        ],
    )
    print("\nstreamToClient and the door next to nginx, all fetched by curl → /dev/null (CPU in s/GiB)\n")
    print_table(
        ["server", "seconds", "MiB/s", "rounds MiB/s", "server CPU", "curl CPU", "service RSS +MiB"],
        [results.row(name, (server, "client")) for name, server in
         (("seproxy streamToClient", "seproxy"), ("seproxy door GET", "seproxy"), ("nginx", "nginx"))],
    )  # fmt: skip
    print("\ngfal-copy of the file not cached, through the door, next to gfal-copy from the storage (CPU in s/GiB)\n")
    print_table(
        ["copy", "seconds", "MiB/s", "rounds MiB/s", "seproxy CPU", "gfal-copy CPU", "service RSS +MiB"],
        [results.row("gfal-copy door (cold)", ("seproxy", "client")), results.row("gfal-copy WebDAV", ("webdav", "client"))],
    )
    sent = results.runs["sendFile"][0]
    print("\nupload with TransferClient.sendFile, the streamed PUT route (CPU in s/GiB)\n")
    print_table(
        ["client", "seconds", "MiB/s", "rounds MiB/s", "client CPU", "service CPU", "service RSS +MiB",
         "client peak RSS MiB", "service peak RSS MiB"],
        [[*results.row("sendFile", ("client", "seproxy")), sent.client_peak_mib, sent.service_peak_mib]],
    )  # fmt: skip

    stream_ratio = results.median_rate("seproxy streamToClient") / results.median_rate("nginx")
    stream_growth = results.service_growth("seproxy streamToClient")
    door_ratio = results.median_rate("seproxy door GET") / results.median_rate("nginx")
    cold_ratio = results.median_seconds("gfal-copy door (cold)") / results.median_seconds("gfal-copy WebDAV")
    prepare_ratio = results.median_seconds("prepareFile") / results.median_seconds("curl → file + fsync")
    prepare_null_ratio = results.median_seconds("prepareFile") / results.median_seconds("curl → /dev/null")
    client_peak = sent.client_peak_mib or 0.0
    checks = [
        ["streamToClient / nginx throughput", stream_ratio, f">= {TARGET_STREAM_RATIO}", stream_ratio >= TARGET_STREAM_RATIO],
        ["streamToClient: service peak RSS growth MiB", stream_growth, f"< {TARGET_RSS_MIB}", stream_growth < TARGET_RSS_MIB],
        ["door GET (cached) / nginx throughput", door_ratio, f">= {TARGET_DOOR_RATIO}", door_ratio >= TARGET_DOOR_RATIO],
        ["sendFile: client peak RSS MiB", client_peak, f"< {TARGET_RSS_MIB}", client_peak < TARGET_RSS_MIB],
        ["sendFile: service peak RSS growth MiB", sent.service_growth_mib, f"< {TARGET_RSS_MIB}", sent.service_growth_mib < TARGET_RSS_MIB],
        ["prepareFile / curl → file + fsync time", prepare_ratio, f"<= {TARGET_PREPARE_RATIO}", prepare_ratio <= TARGET_PREPARE_RATIO],
    ]  # fmt: skip
    print()
    print_table(
        ["measure", "value", "target", "verdict"],
        [
            *([*check[:3], "PASS" if check[3] else "FAIL"] for check in checks),
            # Not judged: that curl leaves nothing on disk, where prepareFile writes the cache and fsyncs it.
            ["prepareFile / curl → /dev/null time", prepare_null_ratio, "(information)", "-"],
            ["gfal-copy door (cold) / gfal-copy WebDAV time", cold_ratio, "(information)", "-"],
        ],
    )
    return {
        "stream_ratio": stream_ratio,
        "stream_service_growth_mib": stream_growth,
        "send_client_peak_mib": client_peak,
        "send_service_growth_mib": sent.service_growth_mib,
        "send_service_peak_mib": sent.service_peak_mib,
        "prepare_ratio": prepare_ratio,
        "prepare_null_ratio": prepare_null_ratio,
        "door_ratio": door_ratio,
        "cold_door_copy_ratio": cold_ratio,
        "passed": all(check[3] for check in checks),
    }
