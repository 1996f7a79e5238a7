"""prepareFileForHTTP against a slow WebDAV storage: several files staged at once, within the bound;
with ``http.answer_when = "started"``, the URL before the file is whole, served as the file grows."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.http_side import SECRET, curl, tool
from fixtures.proxy import (
    SLOW_RATE,
    SLOW_SE,
    MiB,
    ObservedStorage,
    Place,
    ProxyService,
    WatchedWebDav,
    adler32,
    element_spec,
    ok,
    proxy_config,
    refused,
    unique,
    wait_until,
    webdav_place,
)
from fixtures.service import start_service
from fixtures.storage_servers import LoopbackCA, StorageTarget

from seproxy.cache import Cache, Entry, Growing


@pytest.fixture
def slow_http(pki: Any, tmp_path: Path, slow_webdav: WatchedWebDav, storage_ca: LoopbackCA) -> Iterator[Callable[..., ProxyService]]:
    """Start a service whose LFNs live on the slow WebDAV storage (or on ``place``), with ``[http]``
    options of the test's own; ``cache``: the cache root of another one, shared."""
    started: list[ProxyService] = []

    def start(place: Place | None = None, cache: Path | None = None, **http: Any) -> ProxyService:
        place = place or webdav_place(SLOW_SE, slow_webdav.url, slow_webdav.root, storage_ca)
        directory = tmp_path / f"service{len(started)}"
        config = proxy_config(pki, directory / "state", [place], **({"root": str(cache)} if cache else {}))
        config["http"] = {"enabled": True, "port": 0, "host": "127.0.0.1", "secret": SECRET, **http}
        started.append(ProxyService(start_service(directory, config), pki, {SLOW_SE: place}))
        return started[-1]

    yield start
    for service in started:
        print(f"service log:\n{service.process.log()}")
        service.close_clients()
        service.process.stop()


def put_files(service: ProxyService, count: int, size: int) -> dict[str, bytes]:
    """``count`` files of ``size`` random bytes on the slow storage: {LFN: content}."""
    root = service.place(SLOW_SE).root
    files = {f"/{unique('bundle')}.dat": os.urandom(size) for _ in range(count)}
    for lfn, data in files.items():
        (root / lfn.lstrip("/")).write_bytes(data)
    return files


@pytest.mark.parametrize("bound", [1, 3])
def test_several_lfns_are_staged_at_once_within_the_bound(
    slow_http: Callable[..., ProxyService], slow_webdav: WatchedWebDav, tmp_path: Path, bound: int
) -> None:
    service = slow_http(staging_concurrency=bound)
    files = put_files(service, 7, 2 * MiB)  # about 1/3 s each from the slow storage
    value = ok(service.call("prepareFileForHTTP", list(files)))

    names = [lfn.lstrip("/") for lfn in files]
    assert all(slow_webdav.observer.gets(name) == 1 for name in names)
    # The storage saw as many downloads at once as the bound allows, never more.
    assert slow_webdav.observer.most_at_once(names) == bound
    assert list(value["Files"]) == list(files), "the answer keeps the order asked"
    curl("--fail", "-o", str(tmp_path / "bundle.tar"), value["HttpURL"])
    with tarfile.open(tmp_path / "bundle.tar") as archive:
        assert archive.getnames() == names
        for lfn, data in files.items():
            member = archive.extractfile(lfn.lstrip("/"))
            assert member is not None and member.read() == data


def test_failures_of_concurrent_stagings_are_named_in_the_order_asked(
    slow_http: Callable[..., ProxyService],
) -> None:
    service = slow_http(staging_concurrency=4)
    files = put_files(service, 3, 64 * 1024)
    first, second, third = files
    missing = [f"/{unique('missing')}.dat" for _ in range(2)]
    asked = [missing[0], first, second, missing[1], third]
    message = refused(service.call("prepareFileForHTTP", asked), errno.ENOENT)
    assert "prepareFileForHTTP: 2 of 5 file(s) could not be staged: " in message
    assert message.index(missing[0]) < message.index(missing[1])
    assert first not in message and third not in message


# -- answer_when = "started": the URL before the file is whole ------------------


def growing(service: ProxyService, name: str) -> Growing | None:
    """The staging of ``/<name>`` on the slow storage in progress, as the cache tells any process."""
    with Cache(service.cache_root, quota=1 << 40, min_free=0, read_only=True) as cache:
        return cache.growing(SLOW_SE, f"/{name}")


def staged(service: ProxyService, name: str) -> Entry:
    (entry,) = [entry for entry in service.cache_entries(se=SLOW_SE) if entry.source_path == f"/{name}"]
    return entry


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_file_is_served_while_it_is_staged(slow_http: Callable[..., ProxyService], pki: Any, tls: bool) -> None:
    service = slow_http(answer_when="started", tls=tls)
    ((lfn, data),) = put_files(service, 1, 6 * MiB).items()  # a second on the slow storage
    name = lfn.lstrip("/")
    value = ok(service.call("prepareFileForHTTP", lfn))
    assert value["Staged"] is False and value["Size"] == len(data)
    described = value["Files"][lfn]
    assert described["Staging"] is True and described["Size"] == len(data) and described["xxh3"] == ""

    with requests.get(value["HttpURL"], stream=True, verify=str(pki.ca_dir), timeout=60) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Length"] == str(len(data))
        assert response.headers["Digest"] == f"adler32={adler32(data)}" == f"adler32={described['Checksum']}"
        assert "X-Checksum-Xxh3" not in response.headers  # not known before the last byte
        first = response.raw.read(256 * 1024)
        assert growing(service, name) is not None, "the first bytes arrived while the staging ran"
        rest = response.raw.read()
    assert first + rest == data
    # Once whole, the file is an entry, pinned for as long as the URL is valid.
    entry = wait_until(lambda: (e := staged(service, name)).pinned_until > time.time() and e, "the pin after the staging")
    assert entry.size == len(data) and entry.pinned_until >= value["Expires"].replace(tzinfo=UTC).timestamp()
    again = requests.get(value["HttpURL"], verify=str(pki.ca_dir), timeout=60)
    assert again.status_code == 200 and again.content == data
    assert again.headers["X-Checksum-Xxh3"] == entry.xxh3


def test_head_and_propfind_of_a_growing_file_tell_what_the_source_announced(
    slow_http: Callable[..., ProxyService],
) -> None:
    service = slow_http(answer_when="started")
    ((lfn, data),) = put_files(service, 1, 6 * MiB).items()
    url = ok(service.call("prepareFileForHTTP", lfn))["HttpURL"]
    head = requests.head(url, timeout=30)
    described = requests.request("PROPFIND", url, headers={"Depth": "0"}, timeout=30)
    assert growing(service, lfn.lstrip("/")) is not None, "both answered while the staging ran"
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data)) and head.headers["Digest"] == f"adler32={adler32(data)}"
    assert head.headers["ETag"].startswith('"staging-'), "a validator of this staging, not of the whole file"
    assert described.status_code == 207
    assert f"<d:getcontentlength>{len(data)}</d:getcontentlength>" in described.text, described.text


def test_a_download_begun_while_staging_holds_the_committed_file(slow_http: Callable[..., ProxyService]) -> None:
    service = slow_http(answer_when="started")
    ((lfn, data),) = put_files(service, 1, 12 * MiB).items()  # more than the socket buffers hold
    name = lfn.lstrip("/")
    parts = urlsplit(ok(service.call("prepareFileForHTTP", lfn))["HttpURL"])
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        body = bytearray(slow.recv(65536)).partition(b"\r\n\r\n")[2]
        assert growing(service, name) is not None, "the download began while the staging ran"
        wait_until(lambda: growing(service, name) is None, "the end of the staging")
        entry = staged(service, name)
        with Cache(service.cache_root, quota=1 << 40, min_free=0) as cache:
            # Read on: the server sends on, finds the file committed and takes its read lease.
            while cache.hold(entry.id, force=True) != "in use":
                assert len(body) < len(data), "the whole file was sent without a read lease"
                body += slow.recv(256 * 1024)
            assert cache.remove(entry.id, force=True) is False, "a file being sent is never removed"
        while len(body) < len(data):
            body += slow.recv(1 << 20)
    assert bytes(body) == data


def test_another_process_on_the_cache_serves_the_file_while_its_neighbour_stages_it(
    slow_http: Callable[..., ProxyService],
) -> None:
    staging = slow_http(answer_when="started")
    serving = slow_http(place=staging.place(SLOW_SE), cache=staging.cache_root)
    files = put_files(staging, 2, 6 * MiB)
    lfn, other = files
    # The side port of the second process, from a URL of its own.
    port = urlsplit(ok(serving.call("prepareFileForHTTP", other))["HttpURL"]).port
    url = urlsplit(ok(staging.call("prepareFileForHTTP", lfn))["HttpURL"])._replace(netloc=f"127.0.0.1:{port}").geturl()
    with requests.get(url, stream=True, timeout=60) as response:
        assert response.status_code == 200 and response.headers["Content-Length"] == str(len(files[lfn]))
        first = response.raw.read(256 * 1024)
        assert growing(staging, lfn.lstrip("/")) is not None, "the first bytes arrived while the other process staged"
        assert first + response.raw.read() == files[lfn]


def test_a_range_beyond_what_arrived_waits_for_it(slow_http: Callable[..., ProxyService]) -> None:
    service = slow_http(answer_when="started")
    ((lfn, data),) = put_files(service, 1, 6 * MiB).items()
    url = ok(service.call("prepareFileForHTTP", lfn))["HttpURL"]
    assert growing(service, lfn.lstrip("/")) is not None
    start = len(data) - 100_000
    response = requests.get(url, headers={"Range": f"bytes={start}-{len(data) - 2}"}, timeout=60)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{len(data) - 2}/{len(data)}"
    assert response.content == data[start:-1]


def test_a_staging_that_fails_cuts_the_download(slow_http: Callable[..., ProxyService], slow_webdav: WatchedWebDav, tmp_path: Path) -> None:
    service = slow_http(answer_when="started")
    ((lfn, data),) = put_files(service, 1, 12 * MiB).items()  # two seconds on the slow storage
    source = service.place(SLOW_SE).root / lfn.lstrip("/")
    url = ok(service.call("prepareFileForHTTP", lfn))["HttpURL"]
    download = subprocess.Popen([tool("curl"), "-sS", "--fail", "-o", str(tmp_path / "out"), url], stderr=subprocess.PIPE)
    wait_until(lambda: (tmp_path / "out").exists() and (tmp_path / "out").stat().st_size > 0, "the first bytes")
    os.truncate(source, MiB)  # the storage's file is cut short under its download
    _, errors = download.communicate(timeout=60)
    assert download.returncode == 18, errors  # "transfer closed with outstanding read data remaining"
    received = (tmp_path / "out").read_bytes()
    assert len(received) < len(data) and data.startswith(received)
    wait_until(lambda: growing(service, lfn.lstrip("/")) is None, "the end of the failed staging")
    gone = requests.get(url, timeout=30)
    assert gone.status_code == 404 and "no longer in the cache (removed, or its staging failed)" in gone.text
    assert service.cache_files()[0] == [], "nothing of the failed staging is left in the cache"


def test_a_file_of_unknown_size_is_sent_chunked(
    slow_http: Callable[..., ProxyService], start_webdav: Callable[..., StorageTarget], storage_ca: LoopbackCA
) -> None:
    hidden = start_webdav(wrap=lambda app: ObservedStorage(app, rate=SLOW_RATE, hide_length=True))
    place = Place(SLOW_SE, "webdav", hidden.root, element_spec("webdav", hidden.base, ca_dir=str(storage_ca.ca_dir)))
    service = slow_http(place=place, answer_when="started")
    ((lfn, data),) = put_files(service, 1, 6 * MiB).items()
    value = ok(service.call("prepareFileForHTTP", lfn))
    assert value["Size"] is None, "the storage tells the size only at the end"
    with requests.get(value["HttpURL"], stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in response.headers
        first = response.raw.read(256 * 1024)
        assert growing(service, lfn.lstrip("/")) is not None, "the first bytes arrived while the staging ran"
        assert first + response.raw.read() == data


def test_several_files_are_answered_when_all_are_staged(slow_http: Callable[..., ProxyService]) -> None:
    service = slow_http(answer_when="started")
    files = put_files(service, 2, MiB)
    value = ok(service.call("prepareFileForHTTP", list(files)))
    assert value["Staged"] is True and value["Archive"] is True
    assert all(growing(service, lfn.lstrip("/")) is None for lfn in files)
    assert all(described["xxh3"] and "Staging" not in described for described in value["Files"].values())
