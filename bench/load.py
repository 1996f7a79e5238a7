"""Load: 1000 clients mixing ping, prepareFile and HTTP downloads, on one instance, on three behind HAProxy, and on one with workers.

Issue 6, "Measured, not timed". Every client stands for a worker node: it
has a loopback source address of its own (HAProxy's RPC backend hashes the
source address, and on one machine every client would otherwise be
127.0.0.1), one keep-alive TLS connection presenting the development proxy
for RPC and one keep-alive HTTP connection for downloads. It asks for a
signed URL once (``prepareFileForHTTP``), then loops without pause, each
operation drawn by fixed weights: ``ping``, ``prepareFile`` of a file of a
shared set, or a download of its URL, read whole and checked for length.

The clients are spread over several generator processes, so that they are
not one GIL, and open their connections gradually; the measured window
starts once every client runs. Targets: no error at all, ``ping`` p99 under
1 s, and behind the balancer each instance's share of sessions and requests
within 20 % of the mean share.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import random
import re
import secrets
import socket
import ssl
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.common import (
    ServerProcess,
    ServiceTree,
    free_port,
    machine_cpu_seconds,
    percentile,
    print_table,
    process_cpu_seconds,
    process_peak_rss_mib,
)
from bench.haproxy import HAProxy, Instance
from bench.rpc_ping import CONTENT_LENGTH, ROUTE, seproxy_config, start_seproxy
from seproxy.security.devcreds import DevCredentials, ensure_dev_credentials
from seproxy.security.tls import client_context

# An instance: one process (``ServerProcess``) or a supervisor and its workers (``ServiceTree``).
Running = ServerProcess | ServiceTree

SE = "BenchSE"
FILE_COUNT = 40
FILE_SIZE = 1024 * 1024
# Operation -> weight of the draw.
WEIGHTS = {"ping": 50, "prepareFile": 25, "download": 25}
KINDS, CUMULATIVE = list(WEIGHTS), list(itertools.accumulate(WEIGHTS.values()))
ROUTES = ("s1", "s2", "s3")
TARGET_PING_P99 = 1.0  # seconds
TARGET_SPREAD = 20.0  # % from the mean share
# Operations per second of one instance with ``workers = "auto"`` against one single-process instance (issue 16).
TARGET_WORKERS_GAIN = 1.5
OPERATION_TIMEOUT = 60.0
FIRST_ERRORS = 3  # messages kept per operation
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@dataclass(frozen=True)
class Plan:
    """``clients`` over ``generators`` processes, opened over ``ramp`` seconds, then measured ``duration`` seconds."""

    clients: int
    generators: int
    ramp: float
    duration: float


FULL = Plan(clients=1000, generators=4, ramp=20, duration=60)
QUICK = Plan(clients=200, generators=2, ramp=4, duration=10)


class LoadError(Exception):
    """An operation that did not get the answer a client needs."""


# What an operation may fail with; anything else is a bug of the benchmark and stops it.
FAILURES = (LoadError, OSError, TimeoutError)


# -- one client's connections -------------------------------------------------


class Exchange(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection carrying one request at a time.

    A bare protocol rather than an HTTP library: a thousand clients share
    the two cores with the servers, so each must cost as little as Python allows.
    A download's body is counted, not kept.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes, int]] | None = None
        self.status = self.length = self.received = -1
        self.keep = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    async def request(self, data: bytes, keep_body: bool) -> tuple[int, bytes, int]:
        """Send ``data``; the answer's status, its body (empty unless kept) and its length."""
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.status = self.length = self.received = -1
        self.keep = keep_body
        self.transport.write(data)
        return await self.answer

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self._fail(f"{len(data)} bytes nobody asked for")
            return
        if self.status < 0:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status, length = STATUS.match(self.buffer), CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            if status is None or length is None:
                self._fail(f"not an HTTP/1.1 answer with Content-Length: {bytes(self.buffer[:200])!r}")
                return
            self.status, self.length = int(status[1]), int(length[1])
            data = bytes(self.buffer[end + 4 :])
            self.buffer.clear()
            self.received = 0
        self.received += len(data)
        if self.keep:
            self.buffer += data
        if self.received >= self.length:
            body, self.buffer = bytes(self.buffer), bytearray()
            self.answer.set_result((self.status, body, self.received))

    def _fail(self, why: str) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(LoadError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost after {max(self.received, 0)} body bytes: {exc or 'closed by the server'}")


@dataclass
class Tally:
    """What one generator's clients saw: latencies of the window, and every error, window or not."""

    # The measured window, on the monotonic clock (one clock for all processes on Linux).
    start: float = float("inf")
    end: float = float("inf")
    latencies: dict[str, array] = field(default_factory=lambda: {kind: array("d") for kind in WEIGHTS})
    by_route: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, operation): count
    downloaded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: dict[str, list[str]] = field(default_factory=dict)
    reconnects: int = 0

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        kept = self.first_errors.setdefault(kind, [])
        if len(kept) < FIRST_ERRORS:
            kept.append(message[:300])


@dataclass(frozen=True)
class Target:
    """Where a generator's clients send RPC calls, and what they may prepare."""

    rpc_port: int
    ca_dir: Path
    proxy: Path
    files: tuple[str, ...]


def rpc_request(method: str, args: list[Any], port: int) -> bytes:
    """One call in the form DIRAC's TornadoClient posts."""
    form = urlencode({"method": method, "args": json.dumps(args), "clientVO": "unknown", "clientSetup": "None"})
    return (
        f"POST {ROUTE} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: keep-alive\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n{form}"
    ).encode()


class Client:
    """One worker node: its own source address, its RPC and HTTP connections, its URL, its loop of operations."""

    def __init__(self, address: str, target: Target, tls: ssl.SSLContext, tally: Tally, rng: random.Random) -> None:
        self.address, self.target, self.tls, self.tally, self.rng = address, target, tls, tally, rng
        self.connections: dict[str, Exchange] = {}
        self.route = "?"
        self.download_request = b""
        self.http_origin: tuple[str, int] = ("", 0)

    async def _exchange(self, which: str, data: bytes, keep_body: bool) -> tuple[int, bytes, int]:
        """A request on the client's ``rpc`` or ``http`` connection, opened again if the last one closed."""
        connection = self.connections.get(which)
        if connection is None or connection.transport is None or connection.transport.is_closing():
            if connection is not None:
                self.tally.reconnects += 1
            host, port = ("127.0.0.1", self.target.rpc_port) if which == "rpc" else self.http_origin
            tls = {"ssl": self.tls, "server_hostname": "localhost"} if which == "rpc" else {}
            _, connection = await asyncio.get_running_loop().create_connection(
                Exchange, host, port, local_addr=(self.address, 0), **tls
            )
            self.connections[which] = connection
        return await connection.request(data, keep_body)

    async def call(self, method: str, *args: Any) -> Any:
        status, body, _ = await self._exchange("rpc", rpc_request(method, list(args), self.target.rpc_port), True)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if status != 200 or not isinstance(answer, dict) or answer.get("OK") is not True:
            raise LoadError(f"{method}: HTTP {status}: {body[:300]!r}")
        return answer["Value"]

    async def start(self) -> bool:
        """Connect and get the signed URL of one file of the set, as a job does before its downloads."""
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT):
                value = await self.call("prepareFileForHTTP", f"/{self.rng.choice(self.target.files)}")
            if not isinstance(value, dict) or not isinstance(value.get("HttpURL"), str):
                raise LoadError(f"prepareFileForHTTP answered no HttpURL: {value!r:.300}")
        except FAILURES as exc:
            self.tally.error("start", f"{type(exc).__name__}: {exc}")
            self.close()
            return False
        url = urlsplit(value["HttpURL"])
        self.route = url.path.split("/")[1]
        self.http_origin = (url.hostname or "", url.port or 80)
        self.download_request = f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()
        return True

    async def download(self) -> int:
        """The whole file through the client's URL; its length."""
        status, _, length = await self._exchange("http", self.download_request, False)
        if status != 200 or length != FILE_SIZE:
            raise LoadError(f"download: HTTP {status}, {length} bytes instead of {FILE_SIZE}")
        return length

    async def operate(self, kind: str) -> int:
        """One operation; the bytes it downloaded."""
        if kind == "download":
            return await self.download()
        if kind == "prepareFile":
            await self.call("prepareFile", SE, f"/{self.rng.choice(self.target.files)}")
        else:
            await self.call("ping")
        return 0

    async def run(self) -> None:
        """Operations back to back until the window ends; those begun inside it are counted."""
        while (began := time.monotonic()) < self.tally.end:
            kind = self.rng.choices(KINDS, cum_weights=CUMULATIVE)[0]
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT):
                    downloaded = await self.operate(kind)
            except FAILURES as exc:
                self.tally.error(kind, f"{type(exc).__name__}: {exc}")
                self.close()  # its state is unknown: the next operation opens a fresh connection
                continue
            if began >= self.tally.start:
                self.tally.latencies[kind].append(time.monotonic() - began)
                self.tally.by_route[self.route, kind] += 1
                self.tally.downloaded += downloaded

    def close(self) -> None:
        for connection in self.connections.values():
            if connection.transport is not None:
                connection.transport.close()


def client_address(index: int) -> str:
    """Client ``index``'s own loopback source address: 127.1.0.1, 127.1.0.2, ... (250 per /24)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


# -- a generator process ----------------------------------------------------


def generate(pipe: Any, target: Target, indexes: list[int], ramp: float, seed: int) -> None:
    """A generator process: start its clients over ``ramp`` seconds, report ready, run the window, send the tally."""
    asyncio.run(_generate(pipe, target, indexes, ramp, seed))


async def _generate(pipe: Any, target: Target, indexes: list[int], ramp: float, seed: int) -> None:
    tally, rng = Tally(), random.Random(seed)
    tls = client_context(target.ca_dir, target.proxy)
    clients = [Client(client_address(i), target, tls, tally, random.Random(rng.random())) for i in indexes]
    running = settled = 0
    ramped = asyncio.Event()

    async def start_and_run(number: int, client: Client) -> None:
        """Start at this client's turn in the ramp, then load at once: the load grows with the clients."""
        nonlocal running, settled
        await asyncio.sleep(ramp * number / len(clients))
        started = await client.start()
        running, settled = running + started, settled + 1
        if settled == len(clients):
            ramped.set()
        if started:
            await client.run()

    tasks = [asyncio.create_task(start_and_run(n, c)) for n, c in enumerate(clients)]
    await ramped.wait()
    pipe.send(running)
    tally.start, tally.end = await asyncio.to_thread(pipe.recv)
    await asyncio.gather(*tasks)
    for client in clients:
        client.close()
    pipe.send(tally)


# -- instances and the run ------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What both runs share: the plan, a scratch directory, the credentials, the shared files."""

    plan: Plan
    directory: Path
    credentials: DevCredentials
    files: Path

    def target(self, rpc_port: int) -> Target:
        names = tuple(sorted(path.name for path in self.files.iterdir()))
        return Target(rpc_port, self.credentials.ca_dir, self.credentials.proxy, names)


def instance_config(bench: Bench, home: Path, route: str, public_port: int, secret: str) -> dict[str, Any]:
    """A site's instance: the development user, a file element over the shared set, the side server on plain HTTP."""
    config = seproxy_config(bench.credentials, home / "state")
    config["service"].update(port=free_port(), max_connections=4096, max_connections_per_address=4096)
    config["storage_elements"] = {SE: {"plugin": "file", "base": str(bench.files)}}
    http_port = free_port()
    config["http"] = {
        "enabled": True, "port": http_port, "host": "127.0.0.1", "public_name": "127.0.0.1",
        "public_port": public_port or http_port, "route": route, "secret": secret, "max_connections": 4096,
        "max_connections_per_address": 4096,
    }  # fmt: skip
    return config


@dataclass
class Run:
    """One measured window: the merged tallies, the CPU and memory of every process, the balancer's counts."""

    name: str
    clients: int
    seconds: float
    tally: Tally
    routes: list[str]
    cpu: dict[str, float]  # process -> CPU seconds in the window
    others: float  # CPU seconds of every other process on the machine in the window
    peak_rss: dict[str, float]  # process -> MiB
    balance: dict[str, dict[str, int]]  # measure -> route -> count

    @property
    def operations_per_second(self) -> float:
        return sum(len(values) for values in self.tally.latencies.values()) / self.seconds


def haproxy_pid(balancer: HAProxy) -> int:
    """HAProxy's process id, from ``show info`` on its stats socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(balancer.stats_socket))
        sock.sendall(b"show info\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    return next(int(line.split(":")[1]) for line in text.splitlines() if line.startswith("Pid:"))


def sessions(balancer: HAProxy | None) -> dict[str, dict[str, int]]:
    """Sessions so far per backend and server (``stot``: connections for RPC, requests for HTTP)."""
    if balancer is None:
        return {}
    backends = ("seproxy_rpc", "seproxy_http")
    return {backend: {name: int(row["stot"]) for name, row in balancer.servers(backend).items()} for backend in backends}


def receive(pipes: list[Any], timeout: float) -> list[Any]:
    """One message from each generator; a generator that died or hangs stops the run."""
    messages = []
    for number, pipe in enumerate(pipes, 1):
        try:
            if not pipe.poll(timeout):
                raise RuntimeError(f"generator {number} sent nothing within {timeout:g} s")
            messages.append(pipe.recv())
        except EOFError:
            raise RuntimeError(f"generator {number} exited (its traceback is above)") from None
    return messages


def measure(name: str, plan: Plan, target: Target, instances: dict[str, Running], balancer: HAProxy | None) -> Run:
    """Start the generators, wait until every client runs, then measure one window."""
    context = multiprocessing.get_context("spawn")
    pipes, generators = [], []
    before_ramp = sessions(balancer)
    for number in range(plan.generators):
        mine, theirs = context.Pipe()
        indexes = list(range(number, plan.clients, plan.generators))
        generators.append(context.Process(target=generate, args=(theirs, target, indexes, plan.ramp, number), daemon=True))
        generators[-1].start()
        pipes.append(mine)
    try:
        ready = sum(receive(pipes, plan.ramp + 2 * OPERATION_TIMEOUT))
        pids = {route: process.pid for route, process in instances.items()}
        if balancer is not None:
            pids["haproxy"] = haproxy_pid(balancer)
        pids.update({f"generator {n + 1}": process.pid for n, process in enumerate(generators)})
        print(f"  {name}: {ready} of {plan.clients} clients running; processes (py-spy record --gil --pid PID): {pids}")
        start = time.monotonic() + 1
        for pipe in pipes:
            pipe.send((start, start + plan.duration))
        time.sleep(start - time.monotonic())
        cpu, machine = cpu_seconds(instances, pids), machine_cpu_seconds()
        window_start = sessions(balancer)
        time.sleep(start + plan.duration - time.monotonic())
        cpu = {key: seconds - cpu[key] for key, seconds in cpu_seconds(instances, pids).items()}
        # /proc/stat and /proc/PID/stat tick apart: a quiet machine can come out a few ticks below zero.
        others = max(0.0, machine_cpu_seconds() - machine - sum(cpu.values()))
        window_end = sessions(balancer)
        peaks = {
            key: instances[key].peak_rss_mib() if key in instances else process_peak_rss_mib(pid) for key, pid in pids.items()
        }
        tallies = receive(pipes, 2 * OPERATION_TIMEOUT)
    finally:
        for process in generators:
            process.join(10)
            if process.is_alive():
                process.kill()
    merged = merge(tallies)
    balance = {}
    if balancer is not None:
        balance["RPC sessions"] = {r: window_end["seproxy_rpc"][r] - before_ramp["seproxy_rpc"][r] for r in instances}
        balance["HTTP sessions"] = {r: window_end["seproxy_http"][r] - window_start["seproxy_http"][r] for r in instances}
    balance["requests"] = {route: sum(merged.by_route[route, kind] for kind in WEIGHTS) for route in instances}
    return Run(name, ready, plan.duration, merged, list(instances), cpu, others, peaks, balance)


def cpu_seconds(instances: dict[str, Running], pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process; an instance with worker processes counts them all."""
    return {key: instances[key].cpu_seconds() if key in instances else process_cpu_seconds(pid) for key, pid in pids.items()}


def merge(tallies: list[Tally]) -> Tally:
    merged = Tally()
    for tally in tallies:
        for kind, values in tally.latencies.items():
            merged.latencies[kind].extend(values)
        merged.by_route.update(tally.by_route)
        merged.downloaded += tally.downloaded
        merged.reconnects += tally.reconnects
        for kind, count in tally.errors.items():
            merged.errors[kind] += count
            merged.first_errors.setdefault(kind, []).extend(tally.first_errors.get(kind, []))
    return merged


def run_cluster(bench: Bench, name: str, routes: tuple[str, ...], workers: int | str | None = None) -> Run:
    """Instances for ``routes`` (behind HAProxy when more than one), loaded through their front;
    with ``workers``, each as ``seproxy serve`` runs it with that many worker processes."""
    secret = secrets.token_hex(32)
    home = bench.directory / name.partition(":")[0]
    front_rpc, front_http = (free_port(), free_port()) if len(routes) > 1 else (0, 0)
    instances: dict[str, Running] = {}
    http_ports: dict[str, int] = {}
    balancer = None
    try:
        for route in routes:
            (home / route).mkdir(parents=True)
            config = instance_config(bench, home / route, route, front_http, secret)
            if workers is None:
                instances[route] = ServerProcess(start_seproxy, [config], home / route / "service.log")
            else:
                config["service"]["workers"] = workers
                config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
                instances[route] = ServiceTree(home / route, config)
            http_ports[route] = config["http"]["port"]
        if len(routes) > 1:
            fronted = [Instance(route, process.port, http_ports[route]) for route, process in instances.items()]
            balancer = HAProxy(home, fronted, front_rpc, front_http)
        rpc_port = balancer.rpc_port if balancer else instances[routes[0]].port
        return measure(name, bench.plan, bench.target(rpc_port), instances, balancer)
    finally:
        if balancer is not None:
            balancer.stop()
        for process in instances.values():
            process.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run A (one instance) and run B (three behind HAProxy); print both; judge them."""
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-load-") as temp:
        directory = Path(temp)
        files = directory / "files"
        files.mkdir()
        for number in range(FILE_COUNT):
            (files / f"f{number:02}.dat").write_bytes(os.urandom(FILE_SIZE))
        bench = Bench(plan, directory, ensure_dev_credentials(directory / "credentials"), files)
        print(
            f"load: {plan.clients} clients in {plan.generators} processes, {plan.ramp:g} s ramp, "
            f"{plan.duration:g} s measured; weights {WEIGHTS}; {FILE_COUNT} files of {FILE_SIZE >> 20} MiB; "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        runs = [
            run_cluster(bench, "A: one instance", ROUTES[:1]),
            run_cluster(bench, "B: three behind HAProxy", ROUTES),
            run_cluster(bench, "C: one instance, workers auto", ROUTES[:1], workers="auto"),
        ]
    return report(runs)


# -- the report -----------------------------------------------------------------


def spread(counts: dict[str, int]) -> float:
    """The largest distance of one instance's share from the mean share, in % of the mean."""
    mean = sum(counts.values()) / len(counts)
    return max(abs(count / mean - 1) for count in counts.values()) * 100 if mean else float("inf")


def print_run(run_: Run) -> list[list[Any]]:
    """The run's tables; its rows of the verdict (measure, value, target, met)."""
    tally, seconds = run_.tally, run_.seconds
    print(f"\n### {run_.name}\n")
    rows = []
    for kind, values in tally.latencies.items():
        ordered = sorted(values)
        quantiles = [percentile(ordered, fraction) * 1000 for fraction in (0.5, 0.99, 1.0)]
        rows.append([kind, len(values) / seconds, *quantiles, tally.errors[kind]])
    total, nan = sum(len(values) for values in tally.latencies.values()), float("nan")
    rate = total / seconds
    rows.append(["all", rate, "", "", "", sum(tally.errors.values())])
    print_table(["operation", "ops/s", "p50 ms", "p99 ms", "max ms", "errors (ramp too)"], rows)
    # Clients that never pause are all busy all the time: mean latency = clients / throughput (Little's law).
    mean = sum(sum(values) for values in tally.latencies.values()) / total if total else nan
    little = run_.clients / rate if rate else nan
    print(f"\nmean latency {mean:.2f} s; {run_.clients} clients / {rate:.0f} ops/s = {little:.2f} s")
    downloaded = tally.downloaded / seconds / 2**20
    print(f"downloaded {downloaded:.0f} MiB/s; start errors {tally.errors['start']}; reconnections {tally.reconnects}")
    for kind, messages in tally.first_errors.items():
        print(f"first {kind} errors: " + " | ".join(messages[:FIRST_ERRORS]))
    print()
    print_table(
        ["process", "CPU s", "of one core", "peak RSS MiB"],
        [
            *([key, cpu, f"{cpu / seconds:.0%}", run_.peak_rss[key]] for key, cpu in run_.cpu.items()),
            ["other processes", run_.others, f"{run_.others / seconds:.0%}", "-"],
        ],
    )
    print()
    rows = []
    for route in run_.routes:
        cpu, served = run_.cpu[route], [tally.by_route[route, kind] for kind in WEIGHTS]
        mib = tally.by_route[route, "download"] * FILE_SIZE / 2**20
        rows.append([route, sum(served) / seconds, sum(served) / cpu, *(count / cpu for count in served), mib / cpu])
    print_table(["instance", "ops/s", "ops per CPU s", *(f"{kind} per CPU s" for kind in WEIGHTS), "MiB per CPU s"], rows)
    errors = sum(tally.errors.values())
    ping_p99 = percentile(sorted(tally.latencies["ping"]), 0.99)
    verdict = [
        [f"{run_.name}: errors", errors, "0", errors == 0],
        [f"{run_.name}: ping p99 s", ping_p99, f"< {TARGET_PING_P99:g}", ping_p99 < TARGET_PING_P99],
    ]
    if len(run_.routes) > 1:
        print()
        rows = [
            [measure, *(f"{counts[r]} ({counts[r] / sum(counts.values()):.1%})" for r in run_.routes), spread(counts)]
            for measure, counts in run_.balance.items()
        ]
        print_table(["measure", *run_.routes, "spread %"], rows)
        worst = max(spread(counts) for counts in run_.balance.values())
        verdict.append([f"{run_.name}: spread %", worst, f"<= {TARGET_SPREAD:g}", worst <= TARGET_SPREAD])
    return verdict


def report(runs: list[Run]) -> dict[str, Any]:
    """Print every run and the verdict; ``passed``: no error, ping p99 and the spread on target in every run."""
    verdict = [row for run_ in runs for row in print_run(run_)]
    one, workers = runs[0], runs[-1]
    gain = workers.operations_per_second / one.operations_per_second if one.operations_per_second else 0.0
    verdict.append([f"{workers.name}: ops/s against {one.name}", gain, f">= {TARGET_WORKERS_GAIN:g}", gain >= TARGET_WORKERS_GAIN])
    print()
    print_table(["measure", "value", "target", "verdict"], [[*row[:3], "PASS" if row[3] else "FAIL"] for row in verdict])
    return {"verdict": {row[0]: row[1] for row in verdict}, "passed": all(row[3] for row in verdict)}
