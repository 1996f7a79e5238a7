"""Several worker processes behind one supervisor: shared ports, one staging per file, signals, metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import tomli_w
from fixtures.proxy import (
    FILE_SE,
    SLOW_SE,
    MiB,
    ProxyService,
    WatchedWebDav,
    file_place,
    ok,
    proxy_config,
    unique,
    wait_until,
    webdav_place,
)
from fixtures.service import base_config, free_port, start_service
from fixtures.storage_servers import LoopbackCA

WORKERS = 2
# An access-log line of an RPC call, with the worker that answered it.
ACCESS = re.compile(r" w(\d+) seproxy\.\S+ \[[^]]+\] \S+ user=\S+ .*?\b(\w+) status=\d+")


def worker_pids(service: ProxyService) -> set[int]:
    """The processes the supervisor runs (its children)."""
    assert service.process.process is not None
    supervisor = service.process.process.pid
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def served_by(service: ProxyService, method: str) -> Counter[str]:
    """How many calls of ``method`` each worker answered, from the shared log."""
    return Counter(worker for worker, called in ACCESS.findall(service.process.log()) if called == method)


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in text.splitlines() if line[:1] not in ("", "#"))}


@pytest.fixture
def workers(pki: Any, tmp_path: Path, slow_webdav: WatchedWebDav, storage_ca: LoopbackCA) -> Iterator[Callable[..., ProxyService]]:
    """A service of ``WORKERS`` processes with a file element, the slow WebDAV, the side server and metrics."""
    running: list[ProxyService] = []

    def start(service_options: dict[str, Any] | None = None, **http: Any) -> ProxyService:
        places = [
            file_place(FILE_SE, tmp_path / "file-se"),
            webdav_place(SLOW_SE, slow_webdav.url, slow_webdav.root, storage_ca),
        ]
        config = proxy_config(pki, tmp_path / "state", places)
        config["service"].update(workers=WORKERS, **(service_options or {}))
        config["http"] = {"enabled": True, "host": "127.0.0.1", "port": 0, **http}
        config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
        service = ProxyService(start_service(tmp_path / "service", config), pki, {place.name: place for place in places})
        running.append(service)
        wait_until(lambda: f"{WORKERS} workers serving" in service.process.log(), "every worker listening", 60)
        return service

    yield start
    for service in running:
        service.close_clients()
        service.process.stop()
        print(f"service log:\n{service.process.log()}")


def test_twenty_callers_on_two_workers_share_one_download(workers: Callable[..., ProxyService], slow_webdav: WatchedWebDav) -> None:
    service = workers()
    place = service.place(SLOW_SE)
    name, data = unique("popular"), os.urandom(12 * MiB)  # about two seconds on the slow server
    (place.root / name).write_bytes(data)
    start = threading.Barrier(20)

    def prepare(_: int) -> dict[str, Any]:
        with service.new_client(service.writer) as client:  # a connection each: the kernel spreads them
            start.wait()
            return client.prepareFile(SLOW_SE, f"/{name}")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(prepare, range(20)))

    assert all(result["OK"] for result in results), results
    assert slow_webdav.observer.gets(name) == 1, "one staging for all the callers of both workers"
    assert len({result["Value"]["FileId"] for result in results}) == 1
    assert len([e for e in service.cache_entries(se=SLOW_SE) if e.source_path == f"/{name}"]) == 1
    by_worker = served_by(service, "prepareFile")
    assert sorted(by_worker) == ["0", "1"] and sum(by_worker.values()) == 20, by_worker

    # The one metrics port counts the calls of every worker.
    port = service.process.config["metrics"]["port"]
    prepared = 'seproxy_rpc_calls_total{method="prepareFile",outcome="ok"}'
    values = wait_until(lambda: (v := scrape(port)).get(prepared) == 20 and v, "the calls of both workers counted")
    assert values['seproxy_stagings_total{outcome="ok",se="SLOW-DAV"}'] == 1
    assert values['seproxy_rpc_call_duration_seconds_count{method="prepareFile"}'] == 20
    assert values['seproxy_active_transfers{kind="staging"}'] == 0


def test_bytes_and_lookups_add_up_over_workers(workers: Callable[..., ProxyService]) -> None:
    """seproxy_se_bytes_total and seproxy_cache_lookups_total sum the workers' counts, and `cache du`
    shows the counts each stored."""
    service = workers()
    data = os.urandom(100_000)
    (service.place(FILE_SE).root / "counted.dat").write_bytes(data)
    file_id = ok(service.call("prepareFile", FILE_SE, "/counted.dat"))["FileId"]
    for _ in range(20):  # a connection each, over both workers
        assert service.download(file_id).content == data
    assert sorted(served_by(service, "streamToClient")) == ["0", "1"]
    hit, miss = (f'seproxy_se_bytes_total{{kind="{kind}",se="{FILE_SE}"}}' for kind in ("hit", "miss"))
    port = service.process.config["metrics"]["port"]
    values = wait_until(lambda: (v := scrape(port)).get(hit) == 20 * len(data) and v, "the bytes of both workers counted")
    assert values[miss] == len(data)
    for _ in range(20):  # a connection each, over both workers: each finds the file cached
        with service.new_client(service.writer) as client:
            ok(client.prepareFile(FILE_SE, "/counted.dat"))
    assert sorted(served_by(service, "prepareFile")) == ["0", "1"]
    hits = 'seproxy_cache_lookups_total{result="hit"}'
    values = wait_until(lambda: (v := scrape(port)).get(hits) == 20 and v, "the cache hits of both workers counted")
    assert values['seproxy_cache_lookups_total{result="miss"}'] == 1
    service.close_clients()
    assert service.process.stop() == 0  # each worker stores what its heartbeat had not yet
    done = subprocess.run(
        [sys.executable, "-m", "seproxy", "cache", "du", "--json", "--config", str(service.process.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    traffic = json.loads(done.stdout)["traffic"]
    assert traffic == {FILE_SE: {"hit": 20 * len(data), "miss": len(data), "stream_through": 0, "hit_ratio": 0.95}}


def test_a_single_use_url_is_served_once_by_all_workers(workers: Callable[..., ProxyService]) -> None:
    service = workers(single_use=True)
    name, data = unique("once"), os.urandom(100_000)
    (service.place(FILE_SE).root / name).write_bytes(data)
    url = ok(service.call("prepareFileForHTTP", f"/{name}"))["HttpURL"]
    start = threading.Barrier(16)

    def get(_: int) -> int:
        with requests.Session() as session:  # a connection each, over both workers
            start.wait()
            return session.get(url, timeout=30).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(get, range(16)))
    assert statuses[200] == 1 and sum(statuses.values()) == 16, statuses
    assert set(statuses) <= {200, 403, 404, 410}, statuses


def test_log_lines_written_in_batches_arrive_whole(workers: Callable[..., ProxyService]) -> None:
    """Lines written a few at a time (log_flush_after, as a site runs it) all arrive soon after, each
    line whole: the two workers' batches share one stderr without mixing."""
    service = workers(service_options={"log_flush_after": "0.5s"})
    name, data = unique("logged"), os.urandom(1000)
    (service.place(FILE_SE).root / name).write_bytes(data)
    url = ok(service.call("prepareFileForHTTP", f"/{name}"))["HttpURL"]
    link_id = urlsplit(url).path.split("/")[1].split(".")[1]

    def get(_: int) -> bool:
        with requests.Session() as session:  # a connection each, over both workers
            return all(session.get(url, timeout=30).content == data for _ in range(25))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(get, range(8)))
    access = re.compile(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO w[01] seproxy\.http \[-\] 127\.0\.0\.1 "
        rf"key=\w+:{link_id} GET status=200 bytes=1000 [0-9.]+ms"
    )
    lines = wait_until(
        lambda: len(found := [line for line in service.process.log().splitlines() if f":{link_id} GET " in line]) >= 200 and found,
        "every access line written", 10,
    )  # fmt: skip
    assert len(lines) == 200 and all(access.fullmatch(line) for line in lines), lines
    assert {line.split()[3] for line in lines} == {"w0", "w1"}


def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(workers: Callable[..., ProxyService]) -> None:
    service = workers()
    before = worker_pids(service)
    assert len(before) == WORKERS
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel had queued for the killed worker die with it; from then on the other
    # worker answers every call, while the supervisor starts a new one.
    wait_until(lambda: f"pid {victim}) exited with status -9" in service.process.log(), "the supervisor seeing the death")
    for _ in range(10):
        with service.new_client(service.writer) as client:
            assert client.ping()["OK"]
    after = wait_until(lambda: (pids := worker_pids(service)) - before and len(pids) == WORKERS and pids, "a new worker")
    assert victim not in after and len(after & before) == 1
    listening = re.compile(r"seproxy \S+ serving https://")
    wait_until(lambda: len(listening.findall(service.process.log())) == WORKERS + 1, "the new worker listening", 60)
    assert f"pid {victim}) exited with status -9" in service.process.log()
    with service.new_client(service.writer) as client:
        assert client.ping()["OK"]


def test_sighup_reaches_every_worker(workers: Callable[..., ProxyService]) -> None:
    service = workers()
    assert service.process.process is not None
    service.process.process.send_signal(signal.SIGHUP)
    reloaded = re.compile(r" w(\d+) seproxy\.service \[-\] reloaded ")
    wait_until(lambda: len(set(reloaded.findall(service.process.log()))) == WORKERS, "a reload in every worker")
    assert worker_pids(service) and service.process.process.poll() is None


def test_sigterm_lets_calls_in_progress_finish_and_stops_every_worker(
    workers: Callable[..., ProxyService], slow_webdav: WatchedWebDav
) -> None:
    service = workers()
    name, data = unique("last"), os.urandom(12 * MiB)
    (service.place(SLOW_SE).root / name).write_bytes(data)
    pids = worker_pids(service)
    with ThreadPoolExecutor(1) as pool:
        staging = pool.submit(service.client().prepareFile, SLOW_SE, f"/{name}")
        wait_until(lambda: slow_webdav.observer.gets(name) == 1, "the staging under way")
        assert service.process.stop(signal.SIGTERM, timeout=60) == 0
        assert ok(staging.result())["Size"] == len(data)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    stopped = re.findall(r" w(\d+) seproxy\.service \[-\] stopping", service.process.log())
    assert sorted(stopped) == ["0", "1"]


def test_a_port_in_use_is_one_line_and_no_worker_starts(pki: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = base_config(pki, tmp_path / "state", port=taken.getsockname()[1])
        config["service"]["workers"] = WORKERS
        path = tmp_path / "seproxy.toml"
        path.write_text(tomli_w.dumps(config))
        done = subprocess.run([sys.executable, "-m", "seproxy", "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "service.port: cannot listen on 127.0.0.1:" in done.stderr, done.stderr


def test_workers_that_cannot_start_end_the_service_with_an_error(pki: Any, tmp_path: Path) -> None:
    config = base_config(pki, tmp_path / "state")
    config["service"]["workers"] = WORKERS
    config["service"]["port"] = free_port()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cache").write_text("a file where the cache folder must be")
    path = tmp_path / "seproxy.toml"
    path.write_text(tomli_w.dumps(config))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "seproxy", "serve", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "while starting" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "not a directory" in done.stderr.lower() and "listening" not in done.stderr
    assert time.monotonic() - started < 100


def test_workers_stop_when_the_supervisor_is_killed(workers: Callable[..., ProxyService]) -> None:
    service = workers()
    pids = worker_pids(service)
    service.process.stop(signal.SIGKILL)

    def running(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat[stat.rindex(")") + 2] not in "ZX"

    wait_until(lambda: not any(running(pid) for pid in pids), "the workers gone with their supervisor", 60)
