"""The cache keeps what a URL serves: pinned until expiry, leased while sent; and LFN failover."""

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from fixtures.http_side import SE

from seproxy.cache import Cache

MIB = 1024 * 1024


def cache_of(service) -> Cache:
    return Cache(Path(service.process.config["service"]["state_dir"]) / "cache", quota=1 << 40)


def test_a_valid_url_outlives_eviction(start_http_service):
    service = start_http_service(config=lambda c: c.update(cache={"quota": 4 * MIB, "min_free": 0}))
    kept = os.urandom(MIB)
    url = service.url("/lab/kept.dat", kept)
    for number in range(6):  # more than the quota: the unpinned ones make room for each other
        service.put(f"/lab/filler{number}.dat", os.urandom(MIB))
        result = service.client.prepareFile(SE, f"/lab/filler{number}.dat")
        assert result["OK"], result
    with cache_of(service) as cache:
        names = {entry.name for entry in cache.entries()}
    assert "/lab/filler0.dat" not in names, "eviction happened"
    assert requests.get(url, timeout=10).content == kept


def test_a_download_in_progress_keeps_its_file(http_service):
    data = os.urandom(32 * MIB)
    url = http_service.url("/lab/leased.dat", data)
    parts = urlsplit(url)
    with cache_of(http_service) as cache:
        (entry,) = [e for e in cache.entries(area="staged") if e.name == "/lab/leased.dat"]
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            slow.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            first = slow.recv(65536)  # the answer has begun
            assert cache.remove(entry.id, force=True) is False, "a file being sent is never removed"
            received = len(first.split(b"\r\n\r\n", 1)[1])
            while received < len(data):
                received += len(slow.recv(1 << 20))
        deadline = time.monotonic() + 10
        while not cache.remove(entry.id, force=True):  # the lease goes when the answer is out
            assert time.monotonic() < deadline, "the read lease was not released"
            time.sleep(0.05)
    gone = requests.get(url, timeout=10)
    assert gone.status_code == 404 and "no longer in the cache" in gone.text


def test_lfns_fail_over_to_the_next_storage_element(start_http_service, tmp_path):
    second = tmp_path / "second"
    second.mkdir()

    def two_elements(config):
        config["storage_elements"]["OtherVO"] = {"plugin": "file", "base": str(second), "vos": ["other"]}
        config["storage_elements"]["Second"] = {"plugin": "file", "base": str(second), "lfn_path": "/store{lfn}"}

    service = start_http_service(config=two_elements, lfn_storage_elements=[SE, "OtherVO", "Second"])
    data = os.urandom(1000)
    (second / "store" / "lab").mkdir(parents=True)
    (second / "store" / "lab" / "only-second.dat").write_bytes(data)
    value = service.prepare("/lab/only-second.dat")
    described = value["Files"]["/lab/only-second.dat"]
    assert described["SE"] == "Second"
    errors = described["ReplicaErrors"]
    assert list(errors) == [SE, "OtherVO"]
    assert "No such file" in errors[SE] and "VO 'lab' may not use" in errors["OtherVO"]
    assert requests.get(value["HttpURL"], timeout=10).content == data
    missing = service.client.prepareFileForHTTP("/lab/nowhere.dat")
    assert not missing["OK"]
    for element in (SE, "OtherVO", "Second"):
        assert f"{element}: " in missing["Message"]


def test_only_files_inside_the_cache_are_served(http_service, tmp_path):
    url = http_service.url("/lab/planted.dat", b"the real file")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not for download")
    with cache_of(http_service) as cache:
        (entry,) = [e for e in cache.entries(area="staged") if e.name == "/lab/planted.dat"]
    entry.path.unlink()
    entry.path.symlink_to(outside)  # what a local attacker with write access to the cache could plant
    response = requests.get(url, timeout=10)
    assert response.status_code == 404 and b"not for download" not in response.content
    assert "resolves outside" in http_service.wait_for_log("resolves outside")
