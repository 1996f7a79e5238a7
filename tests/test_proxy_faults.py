"""What the service does when its disk is full: stagings and uploads that do not fit are refused, and
nothing of them is left. (Bad input, refused by name, is in test_bad_input_rpc.py.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.proxy import FILE_SE, MiB, ObservedStorage, ProxyService, file_place, refused, webdav_place
from fixtures.small_fs import SMALL_FS_SIZE
from fixtures.storage_servers import LoopbackCA, run_webdav

pytestmark = pytest.mark.cases("faults", "the service's full disk")

CHUNKED_DAV = "CHUNKED-DAV"
TOO_BIG = SMALL_FS_SIZE + 2 * MiB


@pytest.fixture
def full_disk_proxy(
    start_proxy: Callable[..., ProxyService], small_fs: Path, tmp_path: Path, storage_ca: LoopbackCA
) -> Iterator[ProxyService]:
    """A service whose cache is on a small tmpfs, with a file element and a WebDAV one that sends
    no Content-Length (the size is known only when the body ends)."""
    root = tmp_path / "chunked-dav"
    root.mkdir()
    with run_webdav(root, storage_ca, wrap=lambda app: ObservedStorage(app, hide_length=True)) as url:
        places = [file_place(FILE_SE, tmp_path / "file-se"), webdav_place(CHUNKED_DAV, url, root, storage_ca)]
        service = start_proxy(places, root=str(small_fs / "cache"), min_free=0)
        yield service
        service.process.stop()  # now: the small filesystem is unmounted next, and must not be busy


def assert_cache_empty(service: ProxyService) -> None:
    assert service.cache_files() == ([], [])
    assert service.cache_entries() == []


@pytest.mark.parametrize("se", [FILE_SE, CHUNKED_DAV])
def test_staging_bigger_than_the_free_space(full_disk_proxy: ProxyService, se: str) -> None:
    place = full_disk_proxy.place(se)
    (place.root / "big.dat").write_bytes(os.urandom(TOO_BIG))
    assert "No space left for the cache" in refused(full_disk_proxy.call("prepareFile", se, "/big.dat"), errno.ENOSPC)
    assert_cache_empty(full_disk_proxy)

    small = os.urandom(MiB)
    (place.root / "small.dat").write_bytes(small)
    assert full_disk_proxy.fetch(se, "/small.dat") == small


@pytest.mark.parametrize("route, status", [("form", 200), ("stream", 507)])
def test_upload_bigger_than_the_free_space(full_disk_proxy: ProxyService, route: str, status: int) -> None:
    answer = full_disk_proxy.try_send("putFile/big.dat", os.urandom(TOO_BIG), route)
    assert answer[0] == status, answer
    assert "No space left for the cache" in refused(answer[1], errno.ENOSPC)
    assert_cache_empty(full_disk_proxy)

    assert full_disk_proxy.send("small.dat", os.urandom(MiB), route)["Size"] == MiB
