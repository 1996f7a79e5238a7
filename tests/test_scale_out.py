"""Three instances behind HAProxy (the shipped deploy/haproxy/seproxy.cfg), on loopback.

Files are staged through one route (an instance's own RPC port, or the
balancer's), downloaded through the balancer's side port, and each download
must reach the instance whose cache holds the file. Then one instance stops:
the others keep serving what they hold, and the balancer keeps answering RPC.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fixtures.http_side import SE, curl, http_config, raw_request, sha256, status_of
from fixtures.service import ServiceProcess, free_port, start_service

from bench.haproxy import HAProxy, Instance
from seproxy.transfer import RPCClient, returnValueOrRaise

ROUTES = ("s1", "s2", "s3")
RPC_PATH = "/DataManagement/StorageElementProxy"


@dataclass
class Cluster:
    pki: Any
    se_root: Path
    instances: dict[str, ServiceProcess]
    balancer: HAProxy

    def client(self, port: int) -> RPCClient:
        return RPCClient(f"https://localhost:{port}{RPC_PATH}", proxy=str(self.pki.proxy), ca_dir=str(self.pki.ca_dir))

    def prepare(self, port: int, lfn: str, data: bytes) -> str:
        """Put ``data`` on the shared element at ``lfn``, stage it through the RPC port ``port``: its URL."""
        path = self.se_root / lfn.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with self.client(port) as client:
            return returnValueOrRaise(client.prepareFileForHTTP(lfn))["HttpURL"]


@pytest.fixture(scope="module")
def cluster(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    se_root = directory / "se"
    se_root.mkdir()
    rpc_port, http_port = free_port(), free_port()
    instances: dict[str, ServiceProcess] = {}
    balancer = None
    try:
        for route in ROUTES:
            # One storage element for all; a cache, state and ports of each instance's own.
            config = http_config(pki, directory / route, route=route, port=free_port(), public_name="127.0.0.1", public_port=http_port)
            config["storage_elements"][SE]["base"] = str(se_root)
            instances[route] = start_service(directory / route, config)
        balancer = HAProxy(
            directory,
            [Instance(route, p.port, p.config["http"]["port"]) for route, p in instances.items()],
            rpc_port,
            http_port,
        )
        yield Cluster(pki, se_root, instances, balancer)
    finally:
        if balancer is not None:
            balancer.stop()
        for process in instances.values():
            process.stop()


def download(url: str) -> bytes:
    return curl("--fail", "--max-time", "30", url).stdout


def served_by(cluster: Cluster, url: str) -> list[str]:
    """The instances whose access log has a line for this URL's link."""
    link_id = urlsplit(url).path.split("/")[2].split(".")[1]
    return [route for route, process in cluster.instances.items() if f":{link_id} " in process.log()]


def test_each_download_reaches_the_instance_that_holds_the_file(cluster: Cluster) -> None:
    for route, process in cluster.instances.items():
        data = f"held by {route}\n".encode() * 1000
        url = cluster.prepare(process.port, f"/lab/scale/{route}.dat", data)
        assert url.startswith(f"{cluster.balancer.http_origin}/{route}/"), url
        for _ in range(3):
            assert sha256(download(url)) == sha256(data)
        assert served_by(cluster, url) == [route]


def test_any_instance_checks_any_url(cluster: Cluster) -> None:
    """A URL of s1 sent straight to s3: its signature is good (one secret), its file is elsewhere."""
    url = cluster.prepare(cluster.instances["s1"].port, "/lab/scale/checked.dat", b"checked")
    path = urlsplit(url).path
    s3_side = f"http://127.0.0.1:{cluster.instances['s3'].config['http']['port']}"
    answer = raw_request(s3_side, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) == 503 and b"held by the instance 's1'" in answer, answer[:300]
    route, key, name = path.strip("/").split("/")
    forged = f"/{route}/{key[:-1]}{'A' if key[-1] != 'A' else 'B'}/{name}"
    answer = raw_request(s3_side, f"GET {forged} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) == 403 and b"invalid link" in answer, answer[:300]


def test_rpc_through_the_balancer_sticks_to_one_instance(cluster: Cluster) -> None:
    """TLS passes through (the instance checks the proxy), and one client address stays on one instance."""
    before = {name: int(row["stot"]) for name, row in cluster.balancer.servers("seproxy_rpc").items()}
    data = b"through the balancer\n" * 500
    urls = [cluster.prepare(cluster.balancer.rpc_port, f"/lab/scale/lb{n}.dat", data) for n in range(4)]
    after = {name: int(row["stot"]) for name, row in cluster.balancer.servers("seproxy_rpc").items()}
    used = [name for name in ROUTES if after[name] > before[name]]
    assert len(used) == 1, (before, after)
    assert {urlsplit(url).path.split("/")[1] for url in urls} == set(used)
    for url in urls:
        assert download(url) == data
    with cluster.client(cluster.balancer.rpc_port) as client:
        assert returnValueOrRaise(client.whoami())["username"] == "tester"


def test_when_an_instance_stops_the_others_keep_serving(cluster: Cluster) -> None:
    held = {}
    for route, process in cluster.instances.items():
        data = f"{route} before the stop\n".encode() * 2000
        held[route] = (cluster.prepare(process.port, f"/lab/scale/kept-{route}.dat", data), data)
    cluster.instances["s2"].stop(signal.SIGTERM)
    cluster.balancer.wait_for_status({"s1": "UP", "s2": "DOWN", "s3": "UP"})

    for route in ("s1", "s3"):
        url, data = held[route]
        assert download(url) == data
    # s2's URL reaches a live instance, which tells the client what happened.
    lost_url, lost_data = held["s2"]
    answer = curl("--max-time", "30", "-i", lost_url).stdout
    assert status_of(answer) == 503 and b"held by the instance 's2'" in answer, answer[:300]
    # RPC through the balancer still works, and a new URL for that file is served by a live instance.
    fresh = cluster.prepare(cluster.balancer.rpc_port, "/lab/scale/kept-s2.dat", lost_data)
    assert urlsplit(fresh).path.split("/")[1] in ("s1", "s3")
    assert download(fresh) == lost_data
