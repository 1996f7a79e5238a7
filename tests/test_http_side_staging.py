"""prepareFileForHTTP against a slow WebDAV storage: several files staged at once, within the bound."""

from __future__ import annotations

import errno
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.http_side import SECRET, curl
from fixtures.proxy import (
    SLOW_SE,
    MiB,
    ProxyService,
    WatchedWebDav,
    ok,
    proxy_config,
    refused,
    unique,
    webdav_place,
)
from fixtures.service import start_service
from fixtures.storage_servers import LoopbackCA


@pytest.fixture
def slow_http(pki: Any, tmp_path: Path, slow_webdav: WatchedWebDav, storage_ca: LoopbackCA) -> Iterator[Callable[..., ProxyService]]:
    """Start a service whose LFNs live on the slow WebDAV storage, with ``[http]`` options of the test's own."""
    started: list[ProxyService] = []

    def start(**http: Any) -> ProxyService:
        place = webdav_place(SLOW_SE, slow_webdav.url, slow_webdav.root, storage_ca)
        directory = tmp_path / f"service{len(started)}"
        config = proxy_config(pki, directory / "state", [place])
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
