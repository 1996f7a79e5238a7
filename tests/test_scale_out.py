"""Three instances behind HAProxy (the shipped deploy/haproxy/seproxy.cfg), on loopback.

Files are staged through one route (an instance's own RPC port, or the
balancer's), downloaded through the balancer's side port, and each download
must reach the instance whose cache holds the file. Any instance serves any
URL: one that holds no link for it checks the signature, stages the files its
grant names as the URL's user (with that user's rights there) and serves
them. Then one instance stops: the balancer sends its URLs to the others,
which stage them on demand, and keeps answering RPC. Single-use URLs are
served only by the instance that made them (which records their use).
"""

from __future__ import annotations

import io
import json
import secrets
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.http_side import SE, SECRET, curl, http_config, raw_request, sha256, status_of
from fixtures.service import ServiceProcess, free_port, start_service

from bench.haproxy import HAProxy, Instance
from seproxy.http_side.grants import MAX_ENCODED, Grant
from seproxy.http_side.signing import CLOCK_SKEW, Signer
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

    def put(self, lfn: str, data: bytes) -> None:
        path = self.se_root / lfn.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def prepare(self, port: int, lfn: str, data: bytes) -> str:
        """Put ``data`` on the shared element at ``lfn``, stage it through the RPC port ``port``: its URL."""
        self.put(lfn, data)
        return self.prepare_lfns(port, lfn)

    def prepare_lfns(self, port: int, lfns: str | list[str]) -> str:
        with self.client(port) as client:
            return returnValueOrRaise(client.prepareFileForHTTP(lfns))["HttpURL"]

    def side(self, route: str) -> str:
        """The side server of one instance, reached directly (not through the balancer)."""
        return f"http://127.0.0.1:{self.instances[route].config['http']['port']}"


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
            config["storage_elements"][SE].update(base=str(se_root), vos=["lab"])
            # A user of another VO, who may not read the element: URLs are never made for them here,
            # but an instance must apply the registry's rights to whatever a signed URL names.
            config["registry"]["users"]["outsider"] = {"dn": ["/O=Elsewhere/CN=outsider"], "groups": ["other_vo"]}
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


def staged_on_demand(cluster: Cluster, url: str) -> list[str]:
    """The instances that staged this URL's files on demand (their log says so, once per staging)."""
    link_id = urlsplit(url).path.split("/")[2].split(".")[1]
    return [route for route, process in cluster.instances.items() for line in process.log().splitlines() if f":{link_id} on demand for tester: " in line]


def cached(process: ServiceProcess) -> dict[str, dict[str, Any]]:
    """``seproxy cache ls --json`` of one instance: its cache entries by source path."""
    command = [sys.executable, "-m", "seproxy", "cache", "ls", "--json", "--config", str(process.config_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return {entry["source_path"]: entry for entry in json.loads(done.stdout)}


def get(side: str, path: str) -> bytes:
    return raw_request(side, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), timeout=30)


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def signed_path(route: str, link_id: str, name: str, grant: Grant | None, *, expires: int | None = None, secret: str = SECRET) -> str:
    """A URL path signed with the cluster's secret (or another), as an instance would sign it."""
    expires = int(time.time()) + 600 if expires is None else expires
    return f"/{route}/{Signer('k1', secret.encode()).sign(link_id, expires, name, route, grant)}/{name}"


def test_each_download_reaches_the_instance_that_holds_the_file(cluster: Cluster) -> None:
    for route, process in cluster.instances.items():
        data = f"held by {route}\n".encode() * 1000
        url = cluster.prepare(process.port, f"/lab/scale/{route}.dat", data)
        assert url.startswith(f"{cluster.balancer.http_origin}/{route}/"), url
        for _ in range(3):
            assert sha256(download(url)) == sha256(data)
        assert served_by(cluster, url) == [route]


def test_an_instance_without_the_link_stages_the_url_and_serves_it(cluster: Cluster) -> None:
    """A URL of s1 sent straight to s3: the signature is good (one secret), s3 holds no link for it,
    so it stages the file for the URL's user and serves it; its next requests use the link it kept."""
    data = b"staged again elsewhere\n" * 3000
    url = cluster.prepare(cluster.instances["s1"].port, "/lab/scale/checked.dat", data)
    path = urlsplit(url).path
    answer = get(cluster.side("s3"), path)
    assert status_of(answer) == 200 and body_of(answer) == data, answer[:300]
    ranged = raw_request(cluster.side("s3"), f"GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\nConnection: close\r\n\r\n".encode())
    assert status_of(ranged) == 206 and body_of(ranged) == data[5:10], ranged[:300]
    assert staged_on_demand(cluster, url) == ["s3"], "staged once on s3, then served from the link it kept"
    assert served_by(cluster, url) == ["s1", "s3"]  # s1 logged the link it made, s3 served it
    expires = int(urlsplit(url).path.split("/")[2].split(".")[2])
    pinned = cached(cluster.instances["s3"])["/lab/scale/checked.dat"]["pinned_until"]
    assert pinned is not None and datetime.fromisoformat(pinned).timestamp() >= expires, "kept while the URL is valid"


def test_an_instance_without_the_link_refuses_a_forged_expired_or_changed_url(cluster: Cluster) -> None:
    url = cluster.prepare(cluster.instances["s1"].port, "/lab/scale/guarded.dat", b"guarded")
    _, route, key, name = urlsplit(url).path.split("/")
    key_id, link_id, expires, grant, signature = key.split(".")
    other = Grant("tester", "lab_user", ("/lab/scale/checked.dat",), False).encode()
    cases = {
        "signature altered": (f"/{route}/{key[:-1]}{'A' if key[-1] != 'A' else 'B'}/{name}", "invalid link"),
        "LFN list changed": (f"/{route}/{key_id}.{link_id}.{expires}.{other}.{signature}/{name}", "invalid link"),
        "forged with another secret": (signed_path(route, "e" * 32, name, Grant.decode(grant), secret="x" * 64), "invalid link"),
        "expired": (signed_path(route, "d" * 32, name, Grant.decode(grant), expires=int(time.time()) - CLOCK_SKEW - 5), "expired"),
    }
    for case, (path, word) in cases.items():
        answer = get(cluster.side("s3"), path)
        assert status_of(answer) == 403 and word.encode() in body_of(answer), (case, answer[:300])
    assert staged_on_demand(cluster, url) == []


def test_an_instance_stages_for_the_urls_user_only_what_that_user_may_read(cluster: Cluster) -> None:
    """Signed as an instance with another registry could sign it: the serving instance applies its own."""
    cluster.put("/lab/scale/members-only.dat", b"lab only")
    refused = {
        "outsider": ("other_vo", "VO 'other' may not use storage element FileSE"),
        "tester": ("other_vo", "not in group 'other_vo' here"),
        "stranger": ("lab_user", "the user 'stranger' this URL was made for is not known here"),
    }
    for number, (user, (group, word)) in enumerate(refused.items()):
        grant = Grant(user, group, ("/lab/scale/members-only.dat",), False)
        answer = get(cluster.side("s2"), signed_path("s1", f"{number:032x}", "members-only.dat", grant))
        assert status_of(answer) == 403 and word.encode() in body_of(answer), (user, answer[:300])
    assert "/lab/scale/members-only.dat" not in cached(cluster.instances["s2"]), "nothing staged for them"
    allowed = Grant("tester", "lab_user", ("/lab/scale/members-only.dat",), False)
    answer = get(cluster.side("s2"), signed_path("s1", "b" * 32, "members-only.dat", allowed))
    assert status_of(answer) == 200 and body_of(answer) == b"lab only", answer[:300]


def test_a_url_without_a_grant_is_served_by_its_instance_only(cluster: Cluster) -> None:
    """A key as signed before grants (or one whose grant did not fit): its link is all there is."""
    url = cluster.prepare(cluster.instances["s1"].port, "/lab/scale/old-style.dat", b"old style")
    _, route, key, name = urlsplit(url).path.split("/")
    _, link_id, expires, _, _ = key.split(".")
    old_style = signed_path(route, link_id, name, None, expires=int(expires))
    assert body_of(get(cluster.side("s1"), old_style)) == b"old style"
    answer = get(cluster.side("s3"), old_style)
    assert status_of(answer) == 503 and b"held by the instance 's1'" in answer, answer[:300]


def test_a_url_of_too_many_lfns_to_carry_is_served_by_its_instance_only(cluster: Cluster) -> None:
    """The grant stays under MAX_ENCODED characters in the URL; beyond, the URL is as before grants."""
    lfns = [f"/lab/scale/many/{secrets.token_hex(10)}.dat" for _ in range(700)]
    assert len(Grant("tester", "lab_user", tuple(lfns), False).encode()) > MAX_ENCODED
    for lfn in lfns:
        cluster.put(lfn, lfn.encode())
    url = cluster.prepare_lfns(cluster.instances["s1"].port, lfns)
    path = urlsplit(url).path
    assert len(path.split("/")[2].split(".")) == 4 and len(url) < 200, url
    with tarfile.open(fileobj=io.BytesIO(body_of(get(cluster.side("s1"), path)))) as tar:
        assert len(tar.getnames()) == len(lfns)
    answer = get(cluster.side("s3"), path)
    assert status_of(answer) == 503 and b"held by the instance 's1'" in answer, answer[:300]


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


def test_when_an_instance_stops_the_others_serve_its_urls(cluster: Cluster) -> None:
    held = {}
    for route, process in cluster.instances.items():
        data = f"{route} before the stop\n".encode() * 20000
        held[route] = (cluster.prepare(process.port, f"/lab/scale/kept-{route}.dat", data), data)
    # A tar archive of s2 too, fetched while s2 is up: after the stop it must come back byte for byte.
    lfns = ["/lab/scale/bundle/one.dat", "/lab/scale/bundle/two.dat"]
    for lfn in lfns:
        cluster.put(lfn, f"{lfn}\n".encode() * 5000)
    archive_url = cluster.prepare_lfns(cluster.instances["s2"].port, lfns)
    archive = download(archive_url)
    etag = requests.head(archive_url, timeout=30).headers["ETag"]
    assert served_by(cluster, archive_url) == ["s2"]
    cluster.instances["s2"].stop(signal.SIGTERM)
    cluster.balancer.wait_for_status({"s1": "UP", "s2": "DOWN", "s3": "UP"})

    for route, (url, data) in held.items():
        assert sha256(download(url)) == sha256(data), route
    lost_url = held["s2"][0]
    (elsewhere,) = staged_on_demand(cluster, lost_url)
    assert elsewhere in ("s1", "s3") and set(served_by(cluster, lost_url)) == {"s2", elsewhere}
    assert download(archive_url) == archive
    # The same validator: a download of it broken off at s2 resumes elsewhere (If-Range, Range).
    resumed = requests.get(archive_url, headers={"Range": "bytes=1000-", "If-Range": etag}, timeout=30)
    assert resumed.status_code == 206 and resumed.content == archive[1000:]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == [lfn.lstrip("/") for lfn in lfns]
    assert len(staged_on_demand(cluster, archive_url)) == 1
    for route in ("s1", "s3"):
        assert staged_on_demand(cluster, held[route][0]) == [], "URLs of live instances go to them"
    # RPC through the balancer still works, and a new URL for that file is served by a live instance.
    fresh = cluster.prepare(cluster.balancer.rpc_port, "/lab/scale/kept-s2.dat", held["s2"][1])
    assert urlsplit(fresh).path.split("/")[1] in ("s1", "s3")
    assert download(fresh) == held["s2"][1]


def test_a_single_use_url_is_served_once_and_only_by_its_instance(pki: Any, tmp_path: Path) -> None:
    """Its use is recorded in its instance's link store: another instance answers 503 naming it."""
    processes = {}
    try:
        for route in ("a", "b"):
            config = http_config(pki, tmp_path / route, route=route, single_use=True, port=free_port())
            config["storage_elements"][SE]["base"] = str(tmp_path / "se")
            processes[route] = start_service(tmp_path / route, config)
        (tmp_path / "se" / "lab").mkdir(parents=True)
        (tmp_path / "se" / "lab" / "once.dat").write_bytes(b"once")
        with RPCClient(f"https://localhost:{processes['a'].port}{RPC_PATH}", proxy=str(pki.proxy), ca_dir=str(pki.ca_dir)) as client:
            url = returnValueOrRaise(client.prepareFileForHTTP("/lab/once.dat"))["HttpURL"]
        path = urlsplit(url).path
        side = {route: f"http://127.0.0.1:{process.config['http']['port']}" for route, process in processes.items()}
        answer = get(side["b"], path)
        assert status_of(answer) == 503 and b"held by the instance 'a'" in answer, answer[:300]
        assert body_of(get(side["a"], path)) == b"once"
        answer = get(side["a"], path)
        assert status_of(answer) == 403 and b"already used" in answer, answer[:300]
        assert status_of(get(side["b"], path)) == 503, "still not served elsewhere after its use"
    finally:
        for process in processes.values():
            process.stop()
