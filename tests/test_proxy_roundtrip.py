"""Round trips through a real ``seproxy serve`` for every storage plugin, bytes compared exactly.

Send a file (DIRAC's ``streamFromClient`` or the streamed ``PUT``), push it
with ``uploadFile``, inspect it with ``callProxyMethod``, stage it with
``prepareFile``, stream it back whole and by ``Range``, remove it.
"""

from __future__ import annotations

import errno
import os

import pytest
import xxhash
from fixtures.proxy import PLUGINS, MiB, Place, ProxyService, adler32, ok, refused, unique

from seproxy.transfer import codec

PAYLOAD_SIZE = 3 * MiB + 12_345  # not a multiple of any chunk size


@pytest.fixture(params=PLUGINS)
def se(request: pytest.FixtureRequest, proxy: ProxyService) -> Place:
    return proxy.place(request.param)


def ranges(size: int) -> list[tuple[str, int, int]]:
    """(Range header, first byte, last byte): a-b, a-, -n and a range running past the end."""
    return [
        ("bytes=0-0", 0, 0),
        ("bytes=1000-1999999", 1000, 1_999_999),
        (f"bytes={size - 10}-", size - 10, size - 1),
        ("bytes=-4096", size - 4096, size - 1),
        (f"bytes={size - 5}-{size + 100}", size - 5, size - 1),
    ]


def assert_described(proxy: ProxyService, se: Place, pfn: str, data: bytes) -> None:
    """What ``callProxyMethod`` tells about the file ``pfn``, alone in its directory."""
    directory = pfn.rsplit("/", 1)[0]
    assert proxy.bulk(se.name, "exists", pfn) == {"Successful": {pfn: True}, "Failed": {}}
    assert proxy.bulk(se.name, "isFile", pfn)["Successful"] == {pfn: True}
    assert proxy.bulk(se.name, "getFileSize", pfn)["Successful"] == {pfn: len(data)}
    metadata = proxy.bulk(se.name, "getFileMetadata", pfn)["Successful"][pfn]
    assert metadata["Size"] == len(data) and metadata["File"] is True and metadata["Directory"] is False
    assert metadata["Checksum"] == adler32(data)  # a POSIX tree from the attribute the upload recorded
    listing = proxy.bulk(se.name, "listDirectory", directory)["Successful"][directory]
    assert list(listing["Files"]) == [pfn] and listing["SubDirs"] == {}
    assert listing["Files"][pfn]["Size"] == len(data)
    assert proxy.bulk(se.name, "getDirectorySize", directory)["Successful"] == {
        directory: {"Files": 1, "Size": len(data), "SubDirs": 0}
    }


def assert_served(proxy: ProxyService, file_id: str, data: bytes) -> None:
    """``streamToClient`` of ``file_id``: whole (as DIRAC's client asks), by ranges, and 416 past the end."""
    whole = proxy.client()._post("streamToClient", [file_id, ""], raw=True)
    assert whole.headers["Content-Type"] == "application/octet-stream"
    assert whole.content == data
    for header, first, last in ranges(len(data)):
        part = proxy.download(file_id, byte_range=header)
        assert part.status_code == 206, (header, part.text[:200])
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}", header
        assert part.content == data[first : last + 1], header
    past_the_end = proxy.download(file_id, byte_range=f"bytes={len(data)}-")
    assert past_the_end.status_code == 416 and past_the_end.headers["Content-Type"] == "application/json"
    assert past_the_end.headers["Content-Range"] == f"bytes */{len(data)}"
    refused(codec.decode(past_the_end.content), errno.EINVAL)


@pytest.mark.parametrize("route", ["form", "stream"])
def test_round_trip(proxy: ProxyService, se: Place, route: str) -> None:
    data = os.urandom(PAYLOAD_SIZE)
    directory, name = unique("dir"), unique("data") + ".bin"
    pfn = f"/{directory}/{name}"

    sent = proxy.send(name, data, route)
    assert (sent["Size"], sent["Checksum"], sent["xxh3"]) == (len(data), adler32(data), xxhash.xxh3_64_hexdigest(data))
    pushed = ok(proxy.call("uploadFile", se.name, pfn))
    assert pushed["Size"] == len(data) and pushed["Checksum"] == adler32(data)
    assert (se.root / directory / name).read_bytes() == data  # what the storage really holds
    refused(proxy.call("uploadFile", se.name, pfn), errno.ENOENT)  # pushed, so released: never pushed twice

    assert_described(proxy, se, pfn, data)
    prepared = ok(proxy.call("prepareFile", se.name, pfn))
    assert prepared["FileId"] == f"getFile/{name}" and prepared["Size"] == len(data)
    assert prepared["xxh3"] == xxhash.xxh3_64_hexdigest(data)
    assert prepared["Checksum"] == adler32(data)
    assert_served(proxy, prepared["FileId"], data)

    assert proxy.bulk(se.name, "removeFile", pfn) == {"Successful": {pfn: True}, "Failed": {}}
    assert proxy.bulk(se.name, "exists", pfn)["Successful"] == {pfn: False}
    assert not (se.root / directory / name).exists()
    removed = proxy.bulk(se.name, "removeDirectory", f"/{directory}", recursive=True)
    assert removed["Successful"] == {f"/{directory}": {"FilesRemoved": 0, "SizeRemoved": 0}}
    assert not (se.root / directory).exists()


@pytest.mark.parametrize("route", ["form", "stream"])
def test_empty_file_round_trip(proxy: ProxyService, se: Place, route: str) -> None:
    name = unique("empty")
    sent = proxy.send(name, b"", route)
    assert sent["Size"] == 0 and sent["Checksum"] == adler32(b"")
    assert ok(proxy.call("uploadFile", se.name, f"/{name}"))["Size"] == 0
    assert (se.root / name).read_bytes() == b""
    assert proxy.bulk(se.name, "getFileSize", f"/{name}")["Successful"] == {f"/{name}": 0}
    assert proxy.fetch(se.name, f"/{name}") == b""


def test_directory_tree_is_listed_measured_and_removed(proxy: ProxyService, se: Place) -> None:
    top = f"/{unique('tree')}"
    files = {f"{top}/a.dat": b"a" * 1000, f"{top}/b.dat": b"bb" * 700, f"{top}/sub/c.dat": b"c" * 10}
    for pfn, data in files.items():
        proxy.store(se.name, pfn, data)
    assert proxy.bulk(se.name, "createDirectory", f"{top}/empty")["Successful"] == {f"{top}/empty": True}

    assert proxy.bulk(se.name, "isDirectory", [top, f"{top}/a.dat"])["Successful"] == {top: True, f"{top}/a.dat": False}
    listing = proxy.bulk(se.name, "listDirectory", top)["Successful"][top]
    assert sorted(listing["Files"]) == [f"{top}/a.dat", f"{top}/b.dat"]
    assert sorted(listing["SubDirs"]) == [f"{top}/empty", f"{top}/sub"]
    assert proxy.bulk(se.name, "getDirectorySize", top)["Successful"][top] == {"Files": 2, "Size": 2400, "SubDirs": 2}

    not_empty = proxy.bulk(se.name, "removeDirectory", top)
    assert list(not_empty["Failed"]) == [top] and (se.root / top.lstrip("/") / "a.dat").exists()
    removed = proxy.bulk(se.name, "removeDirectory", top, True)  # the option may come positionally
    assert removed["Successful"][top] == {"FilesRemoved": 3, "SizeRemoved": sum(map(len, files.values()))}
    assert proxy.bulk(se.name, "exists", top)["Successful"] == {top: False}
    assert not (se.root / top.lstrip("/")).exists()


def test_bulk_calls_split_successful_and_failed(proxy: ProxyService, se: Place) -> None:
    present, missing = f"/{unique('here')}", f"/{unique('missing')}"
    proxy.store(se.name, present, b"x" * 123)

    assert proxy.bulk(se.name, "exists", [present, missing]) == {
        "Successful": {present: True, missing: False},
        "Failed": {},
    }
    for operation in ("getFileSize", "getFileMetadata", "isFile"):
        result = proxy.bulk(se.name, operation, [present, missing])
        assert list(result["Successful"]) == [present] and list(result["Failed"]) == [missing], operation
        assert missing in result["Failed"][missing], result  # the message names the path
    # DIRAC also passes a dict keyed by paths.
    assert proxy.bulk(se.name, "getFileSize", {present: None})["Successful"] == {present: 123}
