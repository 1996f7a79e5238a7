"""Staging through the service: fresh copies after a change, one download for many callers, crash safety."""

from __future__ import annotations

import errno
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.proxy import (
    PLUGINS,
    SLOW_SE,
    Credential,
    MiB,
    ProxyService,
    WatchedWebDav,
    ok,
    refused,
    unique,
    wait_until,
    webdav_place,
)
from fixtures.storage_servers import LoopbackCA

from seproxy.transfer import codec


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_changed_file_is_staged_again(proxy: ProxyService, plugin: str) -> None:
    se, pfn = proxy.place(plugin).name, f"/{unique('changing')}"
    first, second = os.urandom(64 * 1024), os.urandom(64 * 1024)  # same size: only the content tells
    proxy.store(se, pfn, first)
    assert proxy.fetch(se, pfn) == first
    assert proxy.fetch(se, pfn) == first  # unchanged: served from the cache

    proxy.store(se, pfn, second)
    assert proxy.fetch(se, pfn) == second
    staged = [entry for entry in proxy.cache_entries(se=se) if entry.source_path == pfn]
    assert len(staged) == 1, "the outdated copy is dropped once nobody reads it"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_missing_files_and_directories_are_not_staged(proxy: ProxyService, plugin: str) -> None:
    se, directory = proxy.place(plugin).name, f"/{unique('folder')}"
    ok(proxy.operation(se, "createDirectory", directory))
    assert directory in refused(proxy.call("prepareFile", se, f"{directory}/nothing"), errno.ENOENT)
    refused(proxy.call("prepareFile", se, directory), errno.EISDIR)


def test_a_symlink_leading_out_of_a_local_element_is_not_staged(proxy: ProxyService, tmp_path: Path) -> None:
    # The cache is looked up by the path's text; the storage, asked on a miss, sees where it leads.
    place = proxy.place("file")
    (tmp_path / "secret.dat").write_bytes(b"secret")
    name = unique("escape")
    (place.root / name).symlink_to(tmp_path / "secret.dat")
    assert "leads outside" in refused(proxy.call("prepareFile", place.name, f"/{name}"), errno.EPERM)
    assert not [entry for entry in proxy.cache_entries(se=place.name) if entry.source_path == f"/{name}"]


def test_concurrent_stagings_of_one_file_share_one_download(
    proxy: ProxyService, slow_webdav: WatchedWebDav
) -> None:
    place = proxy.place(SLOW_SE)
    name, data = unique("popular"), os.urandom(6 * MiB)  # about a second on the slow server
    (place.root / name).write_bytes(data)
    callers = [proxy.writer, proxy.reader, proxy.other] * 3
    start = threading.Barrier(len(callers))

    def prepare(who: Credential) -> dict:
        with proxy.new_client(who) as client:
            start.wait()
            return client.prepareFile(SLOW_SE, f"/{name}")

    with ThreadPoolExecutor(len(callers)) as pool:
        results = list(pool.map(prepare, callers))

    assert all(result["OK"] for result in results), results
    assert slow_webdav.observer.gets(name) == 1
    assert len({result["Value"]["xxh3"] for result in results}) == 1
    for who in callers[:3]:
        response = proxy.download(f"getFile/{name}", who=who)
        assert response.status_code == 200 and response.content == data
    assert len([entry for entry in proxy.cache_entries(se=SLOW_SE) if entry.source_path == f"/{name}"]) == 1


def test_a_service_killed_while_staging_leaves_no_whole_looking_file(
    start_proxy, slow_webdav: WatchedWebDav, storage_ca: LoopbackCA
) -> None:
    place = webdav_place(SLOW_SE, slow_webdav.url, slow_webdav.root, storage_ca)
    name, data = unique("interrupted"), os.urandom(16 * MiB)  # close to 3 s on the slow server
    (place.root / name).write_bytes(data)
    service = start_proxy([place])
    tmp = service.cache_root / "tmp"

    def staging_in_progress() -> bool:
        """Part of the file, not all of it, is in tmp/ (the staging writes blocks of 4 MiB)."""
        sizes = [path.stat().st_size for path in tmp.iterdir()]
        assert len(sizes) <= 1 and sum(sizes) < len(data), "the staging ended before it could be interrupted"
        return sum(sizes) > 0

    with ThreadPoolExecutor(1) as pool:
        staging = pool.submit(service.client().prepareFile, SLOW_SE, f"/{name}")
        wait_until(staging_in_progress, "a partial staging")
        service.process.stop(signal.SIGKILL)
        assert staging.result()["OK"] is False

    partial, whole = service.cache_files()
    assert len(partial) == 1 and whole == [], "the kill must come mid-staging for this test to mean anything"

    service.restart()
    assert service.cache_files() == ([], [])
    assert service.cache_entries(se=SLOW_SE) == []
    unknown = service.download(f"getFile/{name}")
    assert unknown.status_code == 400 and codec.decode(unknown.content)["Errno"] == errno.ENOENT
    assert service.fetch(SLOW_SE, f"/{name}") == data
