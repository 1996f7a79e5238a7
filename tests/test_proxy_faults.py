"""What the service refuses and how it fails: path escapes, bad file ids, unknown names, a full disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from fixtures.proxy import (
    DAV_SE,
    FILE_SE,
    XROOT_SE,
    MiB,
    ObservedStorage,
    Place,
    ProxyService,
    file_place,
    refused,
    unique,
    webdav_place,
)
from fixtures.small_fs import SMALL_FS_SIZE
from fixtures.storage_servers import LoopbackCA, run_webdav

from seproxy.transfer import codec


# -- paths that try to leave an element ------------------------------------------


@pytest.fixture(scope="module")
def outside(proxy_service: ProxyService) -> Path:
    """A directory beside the file element's base, with a sentinel, and a symlink to it from inside."""
    root = proxy_service.place(FILE_SE).root
    directory = root.parent / "outside"
    directory.mkdir()
    (directory / "sentinel").write_bytes(b"must stay as it is")
    (root / "escape").symlink_to(directory)
    return directory


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in directory.iterdir()}


# {dav}/{xroot}: the URL of the server behind that element, outside the element's base directory.
ESCAPES = [
    (FILE_SE, "../outside/sentinel"),
    (FILE_SE, "/../../etc/passwd"),
    (FILE_SE, "a/../../outside/sentinel"),
    (FILE_SE, "escape/sentinel"),
    (FILE_SE, "file:///etc/passwd"),
    (FILE_SE, "data\x00.txt"),
    (FILE_SE, "x" * 5000),
    (DAV_SE, "https://elsewhere.example.org/etc/passwd"),
    (DAV_SE, "{dav}/another-directory/file"),
    (DAV_SE, "{dav}/%2e%2e/etc/passwd"),
    (XROOT_SE, "root://elsewhere.example.org//etc/passwd"),
    (XROOT_SE, "{xroot}//etc/passwd"),
]


def server_of(place: Place) -> str:
    """The URL of the server behind an element, without the element's base directory."""
    parts = urlsplit(place.spec["base"])
    return f"{parts.scheme}://{parts.netloc}"


@pytest.mark.parametrize("se, pfn", ESCAPES, ids=lambda value: repr(value)[:40])
def test_paths_leaving_the_element_are_refused(proxy: ProxyService, outside: Path, se: str, pfn: str) -> None:
    pfn = pfn.format(dav=server_of(proxy.place(DAV_SE)), xroot=server_of(proxy.place(XROOT_SE)))
    before = snapshot(outside)
    assert "refused" in refused(proxy.call("prepareFile", se, pfn), errno.EPERM)
    refused(proxy.call("uploadFile", se, pfn), errno.EPERM)
    for operation in ("exists", "removeFile", "createDirectory", "listDirectory"):
        result = proxy.bulk(se, operation, pfn)
        assert result["Successful"] == {} and "refused" in result["Failed"][pfn], (operation, result)
    assert snapshot(outside) == before


# -- file ids --------------------------------------------------------------------

# {area}: the area the route serves (getFile to read, putFile to send); {other}: the other one.
BAD_FILE_IDS = [
    "{area}/../x",
    "{area}/..",
    "{area}/",
    "{area}/a/b",
    "{area}/nul\x00byte",
    "{area}/" + "n" * 300,
    "/etc/passwd",
    "../{area}/x",
    "{other}/x",
]


def answer_of(proxy: ProxyService, route: str, file_id: str) -> tuple[int, dict]:
    """(HTTP status, S_ERROR) of reading ``file_id`` (streamToClient) or sending it (form, stream)."""
    if route == "streamToClient":
        response = proxy.download(file_id)
        return response.status_code, codec.decode(response.content)
    # In a URL the whole id is one path segment, so that nothing on the way resolves its dots.
    return proxy.try_send(file_id if route == "form" else quote(file_id, safe=""), b"data", route)


@pytest.mark.parametrize("template", BAD_FILE_IDS, ids=lambda value: repr(value)[:30])
@pytest.mark.parametrize("route, status", [("streamToClient", 400), ("form", 200), ("stream", 400)])
def test_malformed_file_ids_are_refused(
    proxy: ProxyService, outside: Path, route: str, status: int, template: str
) -> None:
    area, other = ("getFile", "putFile") if route == "streamToClient" else ("putFile", "getFile")
    before = snapshot(outside), {entry.id for entry in proxy.cache_entries(owner="tester")}
    answer = answer_of(proxy, route, template.format(area=area, other=other))
    assert answer[0] == status, answer
    assert "file id" in refused(answer[1], errno.EINVAL)
    assert (snapshot(outside), {entry.id for entry in proxy.cache_entries(owner="tester")}) == before


def test_stream_to_client_needs_raw_content(proxy: ProxyService) -> None:
    assert "rawContent" in refused(proxy.call("streamToClient", "getFile/whatever", ""), errno.EINVAL)


def test_stream_of_an_unknown_file_id_is_a_404_with_an_error(proxy: ProxyService) -> None:
    response = proxy.download(f"getFile/{unique('never-prepared')}")
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"
    assert codec.decode(response.content)["Errno"] == errno.ENOENT


# -- names and options -------------------------------------------------------------


@pytest.mark.parametrize("name", ["__class__", "_private", "getattr", "putFile", "normalize", "upload", "_remove_tree"])
def test_unknown_operations_are_refused_by_name(proxy: ProxyService, name: str) -> None:
    assert repr(name) in refused(proxy.operation(FILE_SE, name, "/"), errno.ENOSYS)


@pytest.mark.parametrize("method", ["getFile", "putFile", "removeFile", "receiveFile", "stage", "element"])
def test_methods_that_are_not_exported_are_refused(proxy: ProxyService, method: str) -> None:
    assert method in refused(proxy.call(method, FILE_SE, "/"), errno.ENOSYS)


BAD_ARGUMENTS = [
    ("removeDirectory", ["{dir}"], {"force": True}, "no option 'force'"),
    ("removeDirectory", ["{dir}"], {"recursive": "yes"}, "must be a bool"),
    ("removeDirectory", ["{dir}", True, False], {}, "takes 1 option"),
    ("exists", ["{dir}", True], {}, "takes 0 option"),
    ("exists", [], {}, "first argument"),
    ("exists", [42], {}, "first argument"),
    ("exists", [["{dir}", 7]], {}, "every path must be a string"),
]


@pytest.mark.parametrize("name, args, kwargs, fragment", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_anything_runs(
    proxy: ProxyService, name: str, args: list, kwargs: dict, fragment: str
) -> None:
    directory = f"/{unique('kept')}"
    proxy.bulk(FILE_SE, "createDirectory", directory)
    args = [arg.format(dir=directory) if isinstance(arg, str) else arg for arg in args]
    assert fragment in refused(proxy.call("callProxyMethod", FILE_SE, name, args, kwargs), errno.EINVAL)
    assert (proxy.place(FILE_SE).root / directory.lstrip("/")).is_dir()


# -- a full disk ---------------------------------------------------------------------

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
