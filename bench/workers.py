"""Worker processes: the side server against nginx on all cores, and RPC calls with 1 worker and with ``auto``.

Issue 16 ("Measured, not timed"). Two parts, each compared within one run:

- ``side``: ``seproxy serve`` with ``service.workers = "auto"`` against nginx
  with ``worker_processes auto``, the same files, wrk: 4 KiB files over 64
  connections (where the cost per request dominates), 1 MiB over 64 and
  1000, 16 MiB over 64 and 512. Throughput (in files per second: bytes read
  over the window, partial answers included, divided by the file size); the servers take turns
  (which goes first alternates by round) and the median of the per-round
  ratios counts. Targets: at least 0.25 of nginx for 4 KiB, 0.9 for the others,
  no error.
- ``rpc``: ``ping`` and a cached ``prepareFile`` per second from 1 and 32
  keep-alive TLS clients against the service with 1 worker and with ``auto``,
  alternately; the client's CPU is reported, for on a small machine the
  client competes with the workers for the same cores. Target: ``auto`` at
  least 1.5 times 1 worker on a 2-core machine, at 32 clients.

The service runs as an operator runs it (``python -m seproxy serve
--config``), so the supervisor and the workers are all measured; the
server's CPU is that of the whole process tree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.common import (
    Nginx,
    ServiceTree,
    free_port,
    median,
    nginx_scratch,
    nginx_version,
    print_table,
)
from bench.http_side import SAME_PRIORITY, WRK, load, write_script
from bench.rpc_ping import ROUTE, Plan, measure, seproxy_config
from seproxy.config import available_cores
from seproxy.security.devcreds import DevCredentials, ensure_dev_credentials
from seproxy.security.tls import client_context
from seproxy.transfer import RPCClient, returnValueOrRaise

# (file size, how many files, connections) of the side-server points, and the target ratio of each size.
SIDE_POINTS = ((4 << 10, 64), (1 << 20, 64), (1 << 20, 1000), (16 << 20, 64), (16 << 20, 512))
FILES = {4 << 10: 16, 1 << 20: 8, 16 << 20: 4}
SIDE_TARGET = {4 << 10: 0.25, 1 << 20: 0.9, 16 << 20: 0.9}
RPC_CLIENTS = (1, 32)
RPC_TARGET = 1.5

FULL = Plan(rounds=3, warmup=2.0, duration=8.0)
QUICK = Plan(rounds=1, warmup=1.0, duration=3.0)


def service_config(credentials: DevCredentials, directory: Path, storage: Path, workers: int | str) -> dict[str, Any]:
    config = seproxy_config(credentials, directory / "state")
    # wrk and the RPC clients come from one address: no per-address share below the whole.
    config["service"].update({"port": free_port(), "workers": workers, "max_connections": 4096, "max_connections_per_address": 4096})
    config["storage_elements"] = {"BenchSE": {"plugin": "file", "base": str(storage)}}
    config["http"] = {
        "enabled": True, "host": "127.0.0.1", "port": free_port(), "url_lifetime": "1d", "max_connections": 4096,
        "max_connections_per_address": 4096,
        **SAME_PRIORITY,
    }  # fmt: skip
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    return config


def rpc_client(service: ServiceTree, credentials: DevCredentials) -> RPCClient:
    url = f"https://localhost:{service.port}{ROUTE}"
    return RPCClient(url, proxy=str(credentials.proxy), ca_dir=str(credentials.ca_dir))


# -- the side server ---------------------------------------------------------


@dataclass(frozen=True)
class SidePoint:
    server: str
    size: int
    connections: int
    requests_per_second: float
    errors: int
    server_cpu: float


def run_side(directory: Path, credentials: DevCredentials, plan: Plan) -> tuple[list[SidePoint], dict[str, Any]]:
    storage = directory / "files"
    storage.mkdir(mode=0o755)
    for size, count in FILES.items():
        for number in range(count):
            (storage / f"s{size}-{number}.dat").write_bytes(os.urandom(size))
    points: list[SidePoint] = []
    with ExitStack() as stack:
        nginx = Nginx(directory / "nginx", storage)
        stack.callback(nginx.stop)
        service = ServiceTree(directory / "side", service_config(credentials, directory / "side", storage, "auto"))
        stack.callback(service.stop)
        with rpc_client(service, credentials) as client:
            urls = {
                path.name: urlsplit(returnValueOrRaise(client.prepareFileForHTTP(f"/{path.name}"))["HttpURL"])
                for path in sorted(storage.iterdir())
            }
        base = {"nginx": f"http://127.0.0.1:{nginx.port}", "seproxy": f"http://{next(iter(urls.values())).netloc}"}
        scripts = {
            (name, size): write_script(
                directory / f"{name}-{size}.lua",
                [f"/{n}" if name == "nginx" else u.path for n, u in urls.items() if n.startswith(f"s{size}-")],
            )
            for name in base
            for size in FILES
        }
        servers: dict[str, Any] = {"nginx": nginx, "seproxy": service}
        for round_number in range(plan.rounds):
            for size, connections in SIDE_POINTS:
                order = ["nginx", "seproxy"] if round_number % 2 == 0 else ["seproxy", "nginx"]
                for name in order:
                    script = scripts[(name, size)]
                    load(name, servers[name], base[name], script, connections, plan.warmup)
                    done = load(name, servers[name], base[name], script, connections, plan.duration)
                    # Bytes (whole and partial answers), in files: with 512 connections on 16 MiB files
                    # few downloads end within a window, though all of them progress.
                    rate = done.bytes_per_second / size
                    points.append(SidePoint(name, size, connections, rate, done.errors, done.server_cpu))
                    _progress(round_number, f"side {name:8} {_size(size):>6} {connections:4} connections", rate, "files/s")
    return points, report_side(points)


def report_side(points: list[SidePoint]) -> dict[str, Any]:
    rows, verdicts = [], {}
    for size, connections in SIDE_POINTS:
        mine = {
            name: [p for p in points if p.server == name and (p.size, p.connections) == (size, connections)]
            for name in ("nginx", "seproxy")
        }
        ratios = [s.requests_per_second / n.requests_per_second for n, s in zip(mine["nginx"], mine["seproxy"])]
        ratio = median(ratios)
        errors = sum(p.errors for p in mine["nginx"] + mine["seproxy"])
        passed = ratio >= SIDE_TARGET[size] and errors == 0
        verdicts[f"{_size(size)}/{connections}"] = {"ratio": ratio, "errors": errors, "passed": passed}
        rows.append(
            [
                _size(size), connections,
                median([p.requests_per_second for p in mine["nginx"]]), median([p.requests_per_second for p in mine["seproxy"]]),
                ratio, SIDE_TARGET[size], errors,
                f"{median([p.server_cpu for p in mine['nginx']]):.0%}", f"{median([p.server_cpu for p in mine['seproxy']]):.0%}",
                "PASS" if passed else "FAIL",
            ]
        )  # fmt: skip
    print()
    headers = ["file", "connections", "nginx req/s", "seproxy req/s", "ratio", "target", "errors", "nginx CPU", "seproxy CPU", "verdict"]
    print_table(headers, rows)
    return verdicts


def _progress(round_number: int, what: str, rate: float, unit: str) -> None:
    print(f"  round {round_number + 1}: {what} {rate:9.0f} {unit}", flush=True)


def _size(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


# -- RPC calls ----------------------------------------------------------------


@dataclass(frozen=True)
class RPCPoint:
    workers: str
    method: str
    clients: int
    calls_per_second: float
    failures: int
    server_cpu: float
    client_cpu: float


def call_request(port: int, method: str, args: list[Any]) -> bytes:
    form = urlencode({"method": method, "args": json.dumps(args), "clientVO": "unknown", "clientSetup": "None"})
    return (
        f"POST {ROUTE} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: keep-alive\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n{form}"
    ).encode()


def run_rpc(directory: Path, credentials: DevCredentials, plan: Plan) -> tuple[list[RPCPoint], dict[str, Any]]:
    storage = directory / "rpc-files"
    storage.mkdir()
    (storage / "cached.dat").write_bytes(os.urandom(1 << 20))
    points: list[RPCPoint] = []
    tls = client_context(credentials.ca_dir, credentials.proxy)
    counts = {"1": 1, "auto": "auto"}
    with ExitStack() as stack:
        services: dict[str, ServiceTree] = {}
        for label, workers in counts.items():
            services[label] = ServiceTree(
                directory / f"rpc-{label}", service_config(credentials, directory / f"rpc-{label}", storage, workers)
            )
            stack.callback(services[label].stop)
            with rpc_client(services[label], credentials) as client:
                returnValueOrRaise(client.prepareFile("BenchSE", "/cached.dat"))  # staged: later calls find it cached
        for round_number in range(plan.rounds):
            for method, args in (("ping", []), ("prepareFile", ["BenchSE", "/cached.dat"])):
                for clients in RPC_CLIENTS:
                    order = list(services) if round_number % 2 == 0 else list(reversed(services))
                    for label in order:
                        request = call_request(services[label].port, method, args)
                        done = asyncio.run(measure(label, services[label], clients, tls, plan, request))
                        points.append(
                            RPCPoint(label, method, clients, done.calls_per_second, len(done.failures), done.server_cpu, done.client_cpu)
                        )
                        _progress(round_number, f"rpc {label:4} workers {method:11} {clients:2} clients", done.calls_per_second, "calls/s")
    return points, report_rpc(points)


def report_rpc(points: list[RPCPoint]) -> dict[str, Any]:
    rows, verdicts = [], {}
    for method in ("ping", "prepareFile"):
        for clients in RPC_CLIENTS:
            mine = {w: [p for p in points if (p.workers, p.method, p.clients) == (w, method, clients)] for w in ("1", "auto")}
            ratio = median([a.calls_per_second / o.calls_per_second for o, a in zip(mine["1"], mine["auto"])])
            failures = sum(p.failures for p in mine["1"] + mine["auto"])
            passed = failures == 0 and (clients == 1 or ratio >= RPC_TARGET)
            verdicts[f"{method}/{clients}"] = {"ratio": ratio, "failures": failures, "passed": passed}
            rows.append(
                [
                    method, clients,
                    median([p.calls_per_second for p in mine["1"]]), median([p.calls_per_second for p in mine["auto"]]),
                    ratio, RPC_TARGET if clients > 1 else "-", failures,
                    f"{median([p.server_cpu for p in mine['1']]):.0%} / {median([p.server_cpu for p in mine['auto']]):.0%}",
                    f"{median([p.client_cpu for p in mine['1']]):.0%} / {median([p.client_cpu for p in mine['auto']]):.0%}",
                    "PASS" if passed else "FAIL",
                ]
            )  # fmt: skip
    print()
    headers = [
        "method",
        "clients",
        "1 worker/s",
        "auto/s",
        "auto/1",
        "target",
        "failures",
        "server CPU (1 / auto)",
        "client CPU (1 / auto)",
        "verdict",
    ]
    print_table(headers, rows)
    return verdicts


# -- the run -----------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    with nginx_scratch("seproxy-bench-workers-", WRK) as directory:
        credentials = ensure_dev_credentials(directory / "credentials")
        print(
            f"workers: {plan.rounds} round(s) of {plan.warmup:g} s warm-up + {plan.duration:g} s per point, "
            f"{available_cores()} cores available (auto), {nginx_version()}, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        _, side = run_side(directory, credentials, plan)
        _, rpc = run_rpc(directory, credentials, plan)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    verdicts = {**side, **rpc}
    return {"passed": all(v["passed"] for v in verdicts.values()), **verdicts}
