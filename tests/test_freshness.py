"""Freshness of cached copies: revalidation, stale-if-error, and writes that drop cached copies.

Real services in front of a real file element, a real WebDAV server
(wsgidav) and a real XRootD server, read through the RPC methods, the storage door and the side
server as users read them (requests, curl). Sources are changed behind the
service's back on their directories; a WebDAV server is stopped to make its
element unreachable. Services that must not revalidate within a test run
with ``revalidate_after`` of an hour, so that only what is tested (a
``no-cache``, a write through seproxy) can make new bytes visible.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.http_side import curl
from fixtures.proxy import (
    Place,
    ProxyService,
    file_place,
    ok,
    proxy_config,
    refused,
    unique,
    webdav_place,
    xroot_place,
)
from fixtures.service import start_service
from fixtures.storage_servers import LOOPBACK, LoopbackCA, XRootDServer, run_webdav

from seproxy.cache import Cache, StagingWriter
from seproxy.config import ConfigError, settings_from_dict

FILE, DAV, XROOT = "FRESH-FILE", "FRESH-DAV", "FRESH-XROOT"
ELEMENTS = {"file": FILE, "webdav": DAV, "xroot": XROOT}
HOUR = 3600
WARNING = '111 - "Revalidation Failed"'


def start_fresh(pki: Any, directory: Path, places: list[Place], revalidate_after: float) -> ProxyService:
    """A service with the side server on, LFNs looked for on ``places`` in order."""
    config = proxy_config(pki, directory / "state", places, revalidate_after=revalidate_after)
    names = [place.name for place in places]
    config["http"] = {"enabled": True, "host": LOOPBACK, "port": 0, "lfn_storage_elements": names}
    return ProxyService(start_service(directory, config), pki, {place.name: place for place in places})


@pytest.fixture(scope="module")
def services(
    pki: Any, tmp_path_factory: pytest.TempPathFactory, storage_ca: LoopbackCA, xrootd_server: XRootDServer
) -> Iterator[dict[str, ProxyService]]:
    """"hour": copies stay fresh for an hour; "second": for one second. Each with a file element, and
    directories of their own on one WebDAV server and on the XRootD server."""
    directory = tmp_path_factory.mktemp("freshness")
    dav_root = directory / "dav"
    dav_root.mkdir()
    with ExitStack() as stack:
        url = stack.enter_context(run_webdav(dav_root, storage_ca))
        running = {}
        for name, seconds in (("hour", HOUR), ("second", 1)):
            places = [
                file_place(FILE, directory / name / "file-se"),
                webdav_place(DAV, url, dav_root, storage_ca),
                xroot_place(XROOT, xrootd_server),
            ]
            running[name] = start_fresh(pki, directory / name, places, seconds)
            stack.callback(running[name].process.stop)
            stack.callback(running[name].close_clients)
        yield running


@pytest.fixture
def hour(services: dict[str, ProxyService]) -> ProxyService:
    return services["hour"]


def source_file(service: ProxyService, se: str, lfn: str) -> Path:
    """Where the file of ``lfn`` lives on element ``se`` (the LFN is its path there)."""
    path = service.place(se).root / lfn.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


_STAMPS = itertools.count(1_700_000_000)


def rewrite(path: Path, data: bytes) -> None:
    """Change a source behind the service's back, with an mtime of its own: a file element keeps a
    file's ADLER32 with the second of its mtime (XRootD's record), so after a rewrite within the same
    second the old record would still look valid and the new bytes would fail their checksum."""
    path.write_bytes(data)
    stamp = next(_STAMPS)
    os.utime(path, (stamp, stamp))


def door_url(service: ProxyService, lfn: str) -> str:
    return service.url.split("/DataManagement/")[0] + "/lfn" + lfn


def door(service: ProxyService, method: str, lfn: str, **kwargs: Any) -> requests.Response:
    """A door request as the writer (a proxy of group lab_admin)."""
    return requests.request(
        method, door_url(service, lfn), cert=service.writer.for_requests, verify=str(service.pki.ca_dir), timeout=60, **kwargs
    )


def staged_copies(service: ProxyService, se: str, path: str) -> list[Any]:
    return [entry for entry in service.cache_entries(se=se) if entry.source_path == path]


# -- revalidation ----------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ELEMENTS)
def test_a_fresh_copy_is_served_without_asking_and_no_cache_gets_the_new_bytes(hour: ProxyService, plugin: str) -> None:
    se, lfn = ELEMENTS[plugin], f"/{unique('fresh')}"
    source = source_file(hour, se, lfn)
    first, second, third = os.urandom(1000), os.urandom(1500), os.urandom(700)
    source.write_bytes(first)
    assert door(hour, "GET", lfn).content == first

    rewrite(source, second)
    served = door(hour, "GET", lfn)
    assert served.status_code == 200 and served.content == first and "Warning" not in served.headers
    assert ok(hour.call("prepareFile", se, lfn))["Size"] == len(first)

    renewed = door(hour, "GET", lfn, headers={"Cache-Control": "no-cache"})
    assert renewed.status_code == 200 and renewed.content == second, renewed.text
    assert door(hour, "GET", lfn).content == second
    rewrite(source, third)
    assert door(hour, "GET", lfn, headers={"Pragma": "no-cache"}).content == third
    assert len(staged_copies(hour, se, lfn)) == 1, "each outdated copy went once nobody read it"


@pytest.mark.parametrize("plugin", ELEMENTS)
def test_after_revalidate_after_a_changed_source_is_staged_again_and_an_unchanged_one_is_kept(
    services: dict[str, ProxyService], plugin: str
) -> None:
    service = services["second"]
    se, lfn = ELEMENTS[plugin], f"/{unique('due')}"
    source = source_file(service, se, lfn)
    first, second = os.urandom(2000), os.urandom(2500)
    source.write_bytes(first)
    assert service.fetch(se, lfn) == first
    (kept,) = staged_copies(service, se, lfn)
    assert kept.checked is None

    time.sleep(1.2)
    assert service.fetch(se, lfn) == first  # compared with the source, found current: the same copy
    (checked,) = staged_copies(service, se, lfn)
    assert checked.id == kept.id and checked.checked is not None and checked.checked > kept.created

    rewrite(source, second)
    time.sleep(1.2)
    assert service.fetch(se, lfn) == second
    assert [entry.xxh3 for entry in staged_copies(service, se, lfn)] == [ok(service.call("prepareFile", se, lfn))["xxh3"]]


# -- stale-if-error -------------------------------------------------------------------------


def test_an_unreachable_source_serves_its_cached_copy_marked_stale(
    pki: Any, tmp_path: Path, storage_ca: LoopbackCA
) -> None:
    se = "DOWN-DAV"
    dav_root = tmp_path / "dav"
    dav_root.mkdir()
    with ExitStack() as stack:
        server = stack.enter_context(ExitStack())
        place = webdav_place(se, server.enter_context(run_webdav(dav_root, storage_ca)), dav_root, storage_ca)
        service = start_fresh(pki, tmp_path / "service", [place], revalidate_after=0)  # always compared
        stack.callback(service.process.stop)
        stack.callback(service.close_clients)
        kept, gone, never = (f"/{unique(name)}" for name in ("kept", "gone", "never"))
        data = os.urandom(5000)
        for lfn in (kept, gone, never):
            source_file(service, se, lfn).write_bytes(data)
        assert service.fetch(se, kept) == data
        assert service.fetch(se, gone) == data

        # "No such file" from a reachable source is an answer: the copy goes with it.
        source_file(service, se, gone).unlink()
        assert gone in refused(service.call("prepareFile", se, gone), errno.ENOENT)
        assert staged_copies(service, se, gone) == []

        server.close()  # the element is down from now on
        prepared = ok(service.call("prepareFile", se, kept))
        assert prepared["Size"] == len(data)
        assert f"{se}: {kept}: storage at {LOOPBACK}:" in prepared["Stale"], prepared
        assert service.download(prepared["FileId"]).content == data
        line = next(line for line in service.process.log().splitlines() if "could not be revalidated" in line)
        assert f"{se}: {kept}: serving the cached copy" in line and "unreachable" in line, line

        served = door(service, "GET", kept)
        assert served.status_code == 200 and served.content == data
        assert served.headers["Warning"] == WARNING

        http = ok(service.call("prepareFileForHTTP", kept))
        assert f"{se}: {kept}" in http["Files"][kept]["Stale"]
        fetched = curl("-D", "-", "-o", str(tmp_path / "got"), "--fail", http["HttpURL"]).stdout.decode()
        assert f"Warning: {WARNING}" in fetched.splitlines(), fetched
        assert (tmp_path / "got").read_bytes() == data

        # Nothing cached: nothing to fall back on, and the error says why.
        message = refused(service.call("prepareFile", se, never), errno.ECONNREFUSED)
        assert f"{se}: {never}: storage at {LOOPBACK}:" in message
        cold = door(service, "GET", never)
        assert cold.status_code == 500 and f"{se}: {never}: storage at" in cold.text, cold.text
        assert "Traceback" not in service.process.log()


# -- writes through seproxy drop cached copies ----------------------------------------------


@pytest.mark.parametrize("plugin", ELEMENTS)
def test_an_overwrite_by_upload_file_is_read_at_once(hour: ProxyService, plugin: str) -> None:
    se, lfn = ELEMENTS[plugin], f"/{unique('overwritten')}"
    first, second = os.urandom(3000), os.urandom(3000)  # the same size
    hour.store(se, lfn, first)
    assert hour.fetch(se, lfn) == first
    old_url = ok(hour.call("prepareFileForHTTP", lfn))["HttpURL"]
    assert requests.get(old_url, timeout=30).content == first  # its read lease lingers a moment after

    hour.store(se, lfn, second)
    old_name = hour.download(f"getFile/{lfn.lstrip('/')}")
    assert old_name.status_code == 400 and "call prepareFile first" in old_name.text, "the old getFile name went"
    assert requests.get(old_url, timeout=30).status_code == 404, "the old URL serves no old bytes"
    assert hour.fetch(se, lfn) == second
    assert door(hour, "GET", lfn).content == second


@pytest.mark.parametrize("plugin", ELEMENTS)
def test_a_removal_by_remove_file_or_remove_directory_is_seen_at_once(hour: ProxyService, plugin: str) -> None:
    se, directory = ELEMENTS[plugin], f"/{unique('removed')}"
    single, inside = f"{directory}-file", f"{directory}/sub/file"
    for lfn in (single, inside):
        hour.store(se, lfn, os.urandom(1000))
        hour.fetch(se, lfn)

    assert hour.bulk(se, "removeFile", single)["Successful"] == {single: True}
    refused(hour.call("prepareFile", se, single), errno.ENOENT)
    assert hour.bulk(se, "removeDirectory", directory, True)["Successful"][directory]["FilesRemoved"] == 1
    refused(hour.call("prepareFile", se, inside), errno.ENOENT)
    assert staged_copies(hour, se, single) == staged_copies(hour, se, inside) == []


def test_door_put_and_delete_are_read_at_once(hour: ProxyService) -> None:
    lfn = f"/{unique('door')}"  # the door writes to the first place: FRESH-FILE
    first, second = os.urandom(4000), os.urandom(4000)
    assert door(hour, "PUT", lfn, data=first).status_code == 201
    assert door(hour, "GET", lfn).content == first
    assert door(hour, "PUT", lfn, data=second).status_code == 204
    assert door(hour, "GET", lfn).content == second
    assert door(hour, "DELETE", lfn).status_code == 204
    assert door(hour, "GET", lfn).status_code == 404
    assert staged_copies(hour, FILE, lfn) == []


# -- the cache's side of it -----------------------------------------------------------------


def bytes_of(data: bytes) -> Any:
    def fetch(writer: StagingWriter) -> None:
        writer.expect(len(data), {})
        writer.write(data)

    return fetch


def test_a_dropped_copy_stays_for_its_reader_and_for_no_one_else(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        read = cache.stage("SE", "/d/f", bytes_of(b"old"))
        unread = cache.stage("SE", "/d/sub/g", bytes_of(b"g"))
        beside = cache.stage("SE", "/d2", bytes_of(b"h"))
        cache.set_alias("alice", "getFile/f", read.id)
        cache.pin(read.id, time.time() + HOUR)
        lease = cache.acquire_read(read.id)

        assert cache.drop_source("SE", "/d", tree=True) == 2
        assert cache.lookup("SE", "/d/f") is None and cache.lookup("SE", "/d/sub/g") is None
        assert cache.lookup("SE", "/d2") is not None and cache.lookup("SE", "/d2").id == beside.id  # type: ignore[union-attr]
        assert cache.resolve_alias("alice", "getFile/f") is None
        with pytest.raises(FileNotFoundError):
            cache.acquire_read(read.id)
        assert lease.path.read_bytes() == b"old", "the reader keeps its bytes"
        assert cache.get(unread.id) is None and not unread.path.exists(), "a copy nobody reads goes at once"

        cache.release(lease)
        assert cache.hold(read.id) is None, "unpinned: nothing keeps it once its reader is done"
        again = cache.stage("SE", "/d/f", bytes_of(b"new"))
        assert again.id != read.id and again.path.read_bytes() == b"new"


def test_a_drop_waits_for_the_staging_in_progress_and_drops_it_too(tmp_path: Path) -> None:
    started, finish = threading.Event(), threading.Event()

    def slow(writer: StagingWriter) -> None:
        writer.expect(3, {})
        started.set()
        assert finish.wait(10)
        writer.write(b"old")

    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache, ThreadPoolExecutor(2) as pool:
        staging = pool.submit(cache.stage, "SE", "/f", slow)
        assert started.wait(10)
        dropping = pool.submit(cache.drop_source, "SE", "/f")
        time.sleep(0.3)
        assert not dropping.done(), "the drop waits for the staging that holds the source's lock"
        finish.set()
        staged = staging.result(10)
        assert dropping.result(10) == 1
        assert cache.lookup("SE", "/f") is None and cache.get(staged.id) is None


def test_a_revalidation_restarts_freshness_and_a_failed_one_marks_the_copy_until_one_succeeds(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache", quota=1 << 30, min_free=0) as cache:
        entry = cache.stage("SE", "/f", bytes_of(b"f"))
        assert entry.fresh_since == entry.created and entry.unverified is None
        cache.record_check(entry.id, failure="SE: /f: storage at host: unreachable")
        failed = cache.get(entry.id)
        assert failed is not None and failed.unverified and failed.fresh_since > entry.created
        cache.record_check(entry.id)
        current = cache.get(entry.id)
        assert current is not None and current.unverified is None and current.fresh_since >= failed.fresh_since


def test_revalidate_after_is_a_duration_of_zero_or_more() -> None:
    assert settings_from_dict({}).cache.revalidate_after == 600
    assert settings_from_dict({"cache": {"revalidate_after": "2h"}}).cache.revalidate_after == 7200
    assert settings_from_dict({"cache": {"revalidate_after": 0}}).cache.revalidate_after == 0
    with pytest.raises(ConfigError, match=r"cache\.revalidate_after"):
        settings_from_dict({"cache": {"revalidate_after": -1}})
