"""RPC round trips: seproxy's ``ping`` against a bare Tornado handler, same TLS, same client, same run.

Absolute calls per second say more about the machine than about seproxy, so
the reference is a plain ``tornado.web.RequestHandler`` that answers the
same POST with a ping-shaped JSON dict, on the same Tornado, the same TLS
context (same certificates, same client-certificate request) and the same
kind of process. The ratio seproxy / bare is what seproxy's own layers cost
per call: form parsing, identity from the certificate chain, registry and
authorization, the thread pool, the per-call log line. Target (issue 16,
"Measured, not timed"): at least 0.8 at every concurrency.

The client is one asyncio process with keep-alive TLS connections that
present the development proxy, as a DIRAC client does; each connection sends
its next call as soon as the previous answer is complete. The servers are
measured alternately, several rounds, and the median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import tornado
import tornado.httpserver
import tornado.netutil
import tornado.web

from bench.common import ServerProcess, Started, median, percentile, print_table
from seproxy import logs
from seproxy.config import settings_from_dict
from seproxy.proxy import StorageElementProxyHandler
from seproxy.security.devcreds import DevCredentials, ensure_dev_credentials
from seproxy.security.tls import client_context, server_context
from seproxy.service import Service

TARGET_RATIO = 0.8
CONCURRENCY = (1, 32)
ROUTE = "/DataManagement/StorageElementProxy"
# The form DIRAC's TornadoClient sends for ping().
FORM = urlencode({"method": "ping", "args": "[]", "clientVO": "unknown", "clientSetup": "None"})
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Plan:
    """How long to measure: ``rounds`` alternations of both servers, each ``warmup`` + ``duration`` seconds."""

    rounds: int
    warmup: float
    duration: float


FULL = Plan(rounds=3, warmup=1.0, duration=8.0)
QUICK = Plan(rounds=1, warmup=0.5, duration=3.0)


# -- the two servers (each runs in a subprocess of its own) -----------------


def start_seproxy(config: dict[str, Any]) -> Started:
    """The real service, configured and logging as ``seproxy serve`` would (INFO: one line per call,
    written a few at a time as ``service.log_flush_after`` says)."""
    settings = settings_from_dict(config, "<bench>")
    logs.configure(settings.service.log_level, flush_after=settings.service.log_flush_after)
    service = Service(settings, StorageElementProxyHandler)
    service.start()
    return service.port, lambda: service.stop(grace=1.0)


# The bare server's start time, for its "service uptime" (set when its process imports this module).
STARTED = time.time()


class BarePing(tornado.web.RequestHandler):
    """The reference: what a hand-written Tornado endpoint would do for ``ping``, nothing more."""

    def post(self) -> None:
        if self.get_body_argument("method") != "ping":
            raise tornado.web.HTTPError(501)
        now = time.time()
        times = os.times()
        value = {
            "version": tornado.version,
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)),
            "name": ROUTE.lstrip("/"),
            "service url": f"https://{self.request.host}{ROUTE}",
            "service uptime": int(now - STARTED),
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "cpu times": {"user time": times.user, "system time": times.system, "elapsed real time": times.elapsed},
        }
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"OK": True, "Value": value}, separators=(",", ":")))


def start_bare(credentials: DevCredentials) -> Started:
    """The bare handler behind the same TLS context and listening socket as seproxy's.

    Plain ``HTTPServer``: seproxy's subclass of it only counts connections.
    """
    context = server_context(credentials.host_cert, credentials.host_key, credentials.ca_dir)
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(ROUTE, BarePing)]), ssl_options=context)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=1024)
    server.add_sockets(sockets)

    async def stop() -> None:
        server.stop()
        await server.close_all_connections()

    return sockets[0].getsockname()[1], stop


def seproxy_config(credentials: DevCredentials, state_dir: Path) -> dict[str, Any]:
    """Loopback, any free port, the development user registered: a caller is resolved to a real user and group."""
    return {
        "service": {"host": "127.0.0.1", "port": 0, "state_dir": str(state_dir), "log_level": "INFO"},
        "tls": {
            "host_cert": str(credentials.host_cert),
            "host_key": str(credentials.host_key),
            "ca_dir": str(credentials.ca_dir),
        },
        "registry": {
            "users": {"dev": {"dn": [credentials.user_dn], "groups": ["dev_user"]}},
            "groups": {"dev_user": {"vo": "dev", "properties": ["NormalUser", "FileWrite"]}},
        },
        # Metrics on, as a site runs them, but on any free port: runs may overlap.
        "metrics": {"port": 0},
    }


# -- the load generator ------------------------------------------------------


@dataclass
class Tally:
    """What the connections of one measurement share: whether to record, when to stop, what they saw."""

    recording: bool = False
    stopping: bool = False
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class PingConnection(asyncio.Protocol):
    """One keep-alive connection with one call in flight: the next is sent as soon as an answer is whole.

    A protocol rather than ``asyncio`` streams or an HTTP library, so that
    the client spends as little CPU per call as Python allows: the two
    servers share the machine's cores with it.
    """

    def __init__(self, request: bytes, tally: Tally) -> None:
        self.request = request
        self.tally = tally
        self.buffer = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent = 0.0
        self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        length = CONTENT_LENGTH.search(self.buffer, 0, head_end + 2)
        if length is None:
            self._fail("an answer without Content-Length")
            return
        end = head_end + 4 + int(length[1])
        if len(self.buffer) < end:
            return
        latency = time.perf_counter() - self.sent
        if not self.buffer.startswith(b"HTTP/1.1 200 ") or b'"OK":true' not in self.buffer[head_end:end]:
            self._fail(bytes(self.buffer[:end]).decode(errors="replace")[:300])
            return
        del self.buffer[:end]
        if self.tally.recording:
            self.tally.latencies.append(latency)
        if self.tally.stopping:
            self.transport.close()
        else:
            self._send()

    def _fail(self, what: str) -> None:
        self.failed = True
        self.tally.failures.append(what)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.tally.stopping and not self.failed:
            self.tally.failures.append(f"connection lost: {exc or 'closed by the server'}")
        if not self.closed.done():
            self.closed.set_result(None)


def ping_request(port: int) -> bytes:
    """The bytes of one ``ping`` call, headers as the ``requests`` library under DIRAC's client sends them."""
    return (
        f"POST {ROUTE} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: python-requests/2.32\r\n"
        "Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(FORM)}\r\n\r\n{FORM}"
    ).encode()


@dataclass(frozen=True)
class Measurement:
    """One server at one concurrency for one round."""

    server: str
    clients: int
    calls_per_second: float
    latencies: list[float]
    failures: list[str]
    server_cpu: float  # fraction of one core over the measured window
    client_cpu: float


async def measure(
    name: str, server: Any, clients: int, tls: ssl.SSLContext, plan: Plan, request: bytes | None = None
) -> Measurement:
    """Open ``clients`` connections, warm up, then count completed calls (``ping`` unless ``request``
    says otherwise) for ``plan.duration`` seconds; ``server`` has a ``port`` and ``cpu_seconds()``."""
    request = request or ping_request(server.port)
    tally = Tally()
    loop = asyncio.get_running_loop()
    connections = [
        loop.create_connection(lambda: PingConnection(request, tally), "127.0.0.1", server.port, ssl=tls, server_hostname="localhost")
        for _ in range(clients)
    ]
    opened = await asyncio.gather(*connections)
    await asyncio.sleep(plan.warmup)
    tally.recording = True
    started, server_started, client_started = time.perf_counter(), server.cpu_seconds(), time.process_time()
    await asyncio.sleep(plan.duration)
    tally.recording, tally.stopping = False, True
    elapsed = time.perf_counter() - started
    server_cpu = (server.cpu_seconds() - server_started) / elapsed
    client_cpu = (time.process_time() - client_started) / elapsed
    await asyncio.wait_for(asyncio.gather(*(protocol.closed for _, protocol in opened)), timeout=30)
    rate = len(tally.latencies) / elapsed
    return Measurement(name, clients, rate, tally.latencies, tally.failures, server_cpu, client_cpu)


# -- the run -----------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start both servers, measure them alternately at each concurrency, print the table and the verdict."""
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="seproxy-bench-") as temp:
        directory = Path(temp)
        credentials = ensure_dev_credentials(directory / "credentials")
        tls = client_context(credentials.ca_dir, credentials.proxy)
        servers: dict[str, ServerProcess] = {}
        try:
            config = seproxy_config(credentials, directory / "state")
            servers["seproxy"] = ServerProcess(start_seproxy, [config], directory / "seproxy.log")
            servers["bare"] = ServerProcess(start_bare, [credentials], directory / "bare.log")
            print(
                f"rpc_ping: {plan.rounds} round(s) of {plan.warmup:g} s warm-up + {plan.duration:g} s per point, "
                f"Tornado {tornado.version}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}\n"
                f"server processes (to profile one: py-spy record --gil --pid PID): "
                + ", ".join(f"{name} {server.pid}" for name, server in servers.items()),
                flush=True,
            )
            measurements = []
            for round_number in range(plan.rounds):
                for clients in CONCURRENCY:
                    for name, server in servers.items():
                        done = asyncio.run(measure(name, server, clients, tls, plan))
                        print(
                            f"  round {round_number + 1}: {name:8} {clients:2} clients {done.calls_per_second:8.0f} calls/s",
                            flush=True,
                        )
                        measurements.append(done)
            peak_rss = {name: server.peak_rss_mib() for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    return report(measurements, peak_rss)


def report(measurements: list[Measurement], peak_rss: dict[str, float]) -> dict[str, Any]:
    """Print the per-server table and the ratios; return them (``passed``: every ratio meets the target, no call failed).

    Calls per second are the median round's; latency percentiles are over
    the calls of all rounds, so that p99 rests on as many calls as possible.
    """
    rows, rates = [], {}
    for clients in CONCURRENCY:
        for name in ("seproxy", "bare"):
            mine = [m for m in measurements if m.server == name and m.clients == clients]
            latencies = sorted(latency for m in mine for latency in m.latencies)
            rates.setdefault(name, {})[clients] = median([m.calls_per_second for m in mine])
            rows.append(
                [
                    name,
                    clients,
                    rates[name][clients],
                    " ".join(f"{m.calls_per_second:.0f}" for m in mine),
                    percentile(latencies, 0.50) * 1000,
                    percentile(latencies, 0.99) * 1000,
                    f"{median([m.server_cpu for m in mine]):.0%}",
                    f"{median([m.client_cpu for m in mine]):.0%}",
                    sum(len(m.failures) for m in mine),
                ]
            )
    print()
    print_table(["server", "clients", "calls/s", "rounds", "p50 ms", "p99 ms", "server CPU", "client CPU", "failures"], rows)
    ratios = {clients: rates["seproxy"][clients] / rates["bare"][clients] for clients in CONCURRENCY}
    print()
    print_table(
        ["clients", "seproxy/bare", "target", "verdict"],
        [[clients, ratio, TARGET_RATIO, "PASS" if ratio >= TARGET_RATIO else "FAIL"] for clients, ratio in ratios.items()],
    )
    print()
    print(f"peak RSS: seproxy {peak_rss['seproxy']:.1f} MiB, bare {peak_rss['bare']:.1f} MiB")
    failures = [failure for m in measurements for failure in m.failures]
    if failures:
        print(f"{len(failures)} failed call(s); the first: {failures[0]}")
    passed = not failures and all(ratio >= TARGET_RATIO for ratio in ratios.values())
    return {
        "calls_per_second": rates,
        "ratios": ratios,
        "peak_rss_mib": peak_rss,
        "failures": len(failures),
        "passed": passed,
    }
