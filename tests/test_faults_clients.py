"""Clients that leave in the middle of a download, and clocks that disagree about a URL's expiry.

A client that reads part of a file and then closes its connection must leave
nothing held: the service drops its read lease on the cache entry (so the
operator's purge may remove it) and the connection (the transfer gauge goes
back to zero; the side server's only connection slot is free again), and
goes on serving. A URL just past its expiry, but within the clock skew that
instances are allowed, still finds its file: the pin covers the skew too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.http_side import SE, SECRET, HTTPService
from fixtures.proxy import MiB, wait_until
from fixtures.service import free_port, post_form, rpc_fields

from seproxy.http_side.signing import CLOCK_SKEW, Signer
from seproxy.transfer import returnValueOrRaise

pytestmark = pytest.mark.cases("faults", "clients that leave or disagree on the clock")

# Far more than the socket buffers on the way hold: the service is mid-stream when the client leaves.
SIZE = 24 * MiB
# What the client reads before it leaves.
TASTE = MiB


@pytest.fixture
def watched(start_http_service: Callable[..., HTTPService]) -> HTTPService:
    """A service with its metrics on, whose side server takes one connection at a time."""
    port = free_port()

    def with_metrics(config: dict[str, Any]) -> None:
        config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}

    return start_http_service(with_metrics, max_connections=1)


def transfers(service: HTTPService, kind: str) -> float:
    """The ``seproxy_active_transfers`` gauge of ``kind`` (stream, http), as Prometheus reads it."""
    port = service.process.config["metrics"]["port"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    prefix = f'seproxy_active_transfers{{kind="{kind}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def purge(service: HTTPService, *options: str) -> dict[str, list[str]]:
    """``seproxy cache purge --all OPTIONS``: the source paths of the entries it removed and kept."""
    config = str(service.process.config_path)
    command = [sys.executable, "-m", "seproxy", "cache", "purge", "--all", *options, "--json", "--config", config]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    report = json.loads(done.stdout)
    return {outcome: [entry["source_path"] for entry in report[outcome]] for outcome in ("removed", "kept")}


def assert_released(service: HTTPService, kind: str, path: str) -> None:
    """The transfer of ``path`` is over for the service: no gauge counts it, no lease keeps its entry."""
    wait_until(lambda: transfers(service, kind) == 0, f"the {kind} transfer to end")
    removed = wait_until(lambda: purge(service, "--force")["removed"], "the purge to remove the entry")
    assert removed == [path]
    errors = [line for line in service.log().splitlines() if " ERROR " in line or "Traceback" in line]
    assert errors == [], "a client that leaves is no error of the service"


def test_a_client_leaving_a_stream_releases_the_file(watched: HTTPService, pki: Any) -> None:
    path, data = "/lab/streamed.dat", os.urandom(SIZE)
    watched.put(path, data)
    returnValueOrRaise(watched.client.prepareFile(SE, path))
    fields = rpc_fields("streamToClient", "getFile/streamed.dat", "", rawContent="True")

    response = post_form(watched.process.url, fields, pki, cert=str(pki.proxy), stream=True)
    assert response.status_code == 200 and response.raw.read(TASTE) == data[:TASTE]
    assert transfers(watched, "stream") == 1
    assert purge(watched, "--force") == {"removed": [], "kept": [path]}, "a file being read stays"
    response.close()

    assert_released(watched, "stream", path)
    returnValueOrRaise(watched.client.prepareFile(SE, path))
    assert post_form(watched.process.url, fields, pki, cert=str(pki.proxy)).content == data


def read_partly(sock: socket.socket, count: int) -> tuple[bytes, bytes]:
    """(head, the first ``count`` or more bytes of the body) of the answer coming in on ``sock``."""
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0 or len(received) - end - 4 < count:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {len(received)} bytes"
        received += chunk
    return bytes(received[:end]), bytes(received[end + 4 :])


def test_a_client_leaving_a_side_server_download_releases_file_and_connection(watched: HTTPService) -> None:
    path, data = "/lab/left.dat", os.urandom(SIZE)
    url = watched.url(path, data)
    parts = urlsplit(url)

    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        head, body = read_partly(sock, TASTE)
        assert head.startswith(b"HTTP/1.1 200 ") and data.startswith(body)
        # The worker counts its downloads once per turn of its loop, which may end after these first bytes.
        wait_until(lambda: transfers(watched, "http") == 1, "the download to be counted")
        assert requests.get(url, timeout=10).status_code == 503, "the only connection slot is taken"
        assert purge(watched, "--force") == {"removed": [], "kept": [path]}, "a file being read stays"

    assert "(cut)" in watched.wait_for_log(" bytes=")
    assert_released(watched, "http", path)
    again = watched.url(path, data)
    answer = wait_until(lambda: (got := requests.get(again, timeout=30)).status_code != 503 and got, "a free slot")
    assert answer.status_code == 200 and answer.content == data


def test_a_url_within_the_clock_skew_still_finds_its_file(start_http_service: Callable[..., HTTPService]) -> None:
    service = start_http_service(url_lifetime=1)
    data = os.urandom(1000)
    service.put("/lab/skew.dat", data)
    url = service.prepare("/lab/skew.dat")["HttpURL"]
    parts = urlsplit(url)
    key_id, link_id, expires = parts.path.split("/")[1].split(".")[:3]
    wait_until(lambda: time.time() > int(expires) + 0.5, "the URL's expiry to pass")

    # Another instance's clock may still be before the expiry: the file stays, and the URL works.
    assert purge(service) == {"removed": [], "kept": ["/lab/skew.dat"]}, "pinned for the clock skew too"
    assert requests.get(url, timeout=10).content == data
    beyond_skew = Signer(key_id, SECRET.encode()).sign(link_id, int(time.time()) - CLOCK_SKEW - 1, "skew.dat")
    refusal = requests.get(f"{parts.scheme}://{parts.netloc}/{beyond_skew}/skew.dat", timeout=10)
    assert refusal.status_code == 403 and "expired" in refusal.text


def test_a_cache_file_cut_short_on_disk_cuts_a_multi_range_answer(watched: HTTPService) -> None:
    """A vectored read's slices are read, then sent from the file mapped: a slice past the file's end cuts the
    answer there, as the slices read do, rather than sending anything that is not the file."""
    path, data = "/lab/damaged-ranges.dat", os.urandom(4 * MiB)
    url = watched.url(path, data)
    cache_data = watched.process.directory / "state" / "cache" / "data"
    (cached,) = [file for file in cache_data.rglob("*") if file.is_file()]
    os.truncate(cached, MiB + 500)
    ranges = ",".join(f"{n * MiB // 2}-{n * MiB // 2 + 999}" for n in range(8))

    response = requests.get(url, headers={"Range": f"bytes={ranges}"}, stream=True, timeout=30)
    assert response.status_code == 206 and response.headers["Content-Type"].startswith("multipart/byteranges")
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in response.iter_content(100):  # small: the read that meets the cut loses its bytes
            received += chunk
    assert data[MiB // 2 : MiB // 2 + 1000] in received, "the slices before the cut went out"
    assert data[MiB : MiB + 500] not in received, "nothing of the slice past the end"
    assert f"{cached} ended" in watched.wait_for_log("cutting the connection")
    # The one connection slot comes free once the worker has closed the cut connection.
    again = wait_until(
        lambda: (got := requests.get(url, headers={"Range": "bytes=0-9,20-29"}, timeout=10)).status_code != 503 and got,
        "a free slot",
    )
    assert again.status_code == 206


def test_a_cache_file_cut_short_on_disk_cuts_the_stream(watched: HTTPService, pki: Any) -> None:
    """The head promised the index's length: the client must see a broken transfer, never a short "whole" file."""
    path, data = "/lab/damaged.dat", os.urandom(4 * MiB)
    watched.put(path, data)
    returnValueOrRaise(watched.client.prepareFile(SE, path))
    cache_data = watched.process.directory / "state" / "cache" / "data"
    (cached,) = [file for file in cache_data.rglob("*") if file.is_file()]
    os.truncate(cached, MiB)

    fields = rpc_fields("streamToClient", "getFile/damaged.dat", "", rawContent="True")
    response = post_form(watched.process.url, fields, pki, cert=str(pki.proxy), stream=True)
    assert response.status_code == 200 and response.headers["Content-Length"] == str(len(data))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = response.content
    assert "cutting the connection" in watched.wait_for_log("failed mid-way")
    watched.wait_for_log("method=streamToClient status=200")  # the call is over: all its lines are out
    assert "raised an unexpected error" not in watched.log()
    assert returnValueOrRaise(watched.client.ping())

