"""Every plugin keeps the same contract, each on a real server of its kind (file, webdav, xroot)."""

from __future__ import annotations

import errno
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.storage_servers import MemorySink, StorageTarget

from seproxy.storage import ChecksumMismatch, FileInfo, ReadOnlyStorage, StorageElement
from seproxy.storage.base import CHUNK_SIZE


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def put(element: StorageElement, tmp_path: Path, path: str, data: bytes, **kwargs: object) -> FileInfo:
    source = tmp_path / f"source-{len(data)}-{time.monotonic_ns()}"
    source.write_bytes(data)
    return element.upload(source, path, **kwargs)  # type: ignore[arg-type]


def reported_checksums(target: StorageTarget, data: bytes) -> dict[str, str]:
    """Every element reports adler32: the WebDAV (dCache-like) and XRootD servers, and a POSIX tree
    from the extended attribute it records (or computes)."""
    return {"adler32": adler32(data)}


def test_upload_then_download_gives_the_same_bytes(storage_target: StorageTarget, tmp_path: Path) -> None:
    element = storage_target.element()
    data = os.urandom(5 * 1024 * 1024 + 123)  # more than one chunk, not a multiple of it

    stored = put(element, tmp_path, "/vo/run1/a.dat", data, checksums={"adler32": adler32(data)})
    sink = MemorySink()
    fetched = element.download("vo/run1/a.dat", sink)

    assert bytes(sink.data) == data
    assert sink.announced == (len(data), reported_checksums(storage_target, data))
    assert len(sink.chunks) >= 2 and max(sink.chunks) <= CHUNK_SIZE
    assert stored.size == fetched.size == len(data)
    assert stored.path == fetched.path == "/vo/run1/a.dat"
    assert stored.checksums == reported_checksums(storage_target, data)
    assert (storage_target.root / "vo/run1/a.dat").read_bytes() == data


def test_upload_replaces_and_handles_an_empty_file(storage_target: StorageTarget, tmp_path: Path) -> None:
    element = storage_target.element()
    put(element, tmp_path, "/vo/e.dat", b"something")

    assert put(element, tmp_path, "/vo/e.dat", b"").size == 0
    sink = MemorySink()
    element.download("/vo/e.dat", sink)

    assert sink.data == b"" and sink.announced == (0, reported_checksums(storage_target, b""))
    assert (storage_target.root / "vo/e.dat").read_bytes() == b""
    assert not [name for name in os.listdir(storage_target.root / "vo") if name != "e.dat"], "no temporary left"


def test_directories_listing_and_sizes(storage_target: StorageTarget, tmp_path: Path) -> None:
    element = storage_target.element()
    element.mkdir("/vo/a/b/c")
    element.mkdir("/vo/a/b/c")  # an existing directory is fine
    put(element, tmp_path, "/vo/a/x.dat", b"abc")
    put(element, tmp_path, "/vo/a/b/c/y.dat", b"0123456789")

    listing = element.listdir("/vo/a")
    info = element.stat("/vo/a/x.dat")

    assert [(entry.path, entry.is_dir) for entry in listing] == [("/vo/a/b", True), ("/vo/a/x.dat", False)]
    assert listing[1].size == 3
    assert element.stat("/vo/a").is_dir and element.stat("/").is_dir
    assert (info.size, info.is_dir) == (3, False) and abs(time.time() - (info.mtime or 0)) < 300
    assert info.checksums == reported_checksums(storage_target, b"abc")
    assert element.exists("/vo/a/x.dat") and not element.exists("/vo/a/nothing")
    metadata = info.as_metadata()
    assert (metadata["Size"], metadata["File"], metadata["Directory"]) == (3, True, False)
    assert metadata["Checksum"] == reported_checksums(storage_target, b"abc").get("adler32", "")


def test_remove_and_rmdir(storage_target: StorageTarget, tmp_path: Path) -> None:
    element = storage_target.element()
    put(element, tmp_path, "/vo/a/x.dat", b"abc")
    put(element, tmp_path, "/vo/a/b/y.dat", b"xyz")
    element.mkdir("/vo/empty")

    with pytest.raises(OSError) as not_empty:
        element.rmdir("/vo/a")
    element.remove("/vo/a/x.dat")
    element.rmdir("/vo/empty")
    element.rmdir("/vo/a", recursive=True)

    assert not_empty.value.errno == errno.ENOTEMPTY
    assert element.listdir("/vo") == []
    assert os.listdir(storage_target.root / "vo") == []


def test_wrong_kinds_of_entry_are_refused(storage_target: StorageTarget, tmp_path: Path) -> None:
    element = storage_target.element()
    put(element, tmp_path, "/vo/f.dat", b"abc")

    with pytest.raises(IsADirectoryError):
        element.remove("/vo")
    with pytest.raises(IsADirectoryError):
        element.download("/vo", MemorySink())
    with pytest.raises(NotADirectoryError):
        element.rmdir("/vo/f.dat")
    with pytest.raises(NotADirectoryError):
        element.listdir("/vo/f.dat")
    with pytest.raises(FileExistsError):
        element.mkdir("/vo/f.dat")
    assert (storage_target.root / "vo/f.dat").read_bytes() == b"abc"


@pytest.mark.parametrize(
    "operation",
    [
        lambda element: element.stat("/vo/missing.dat"),
        lambda element: element.download("/vo/missing.dat", MemorySink()),
        lambda element: element.remove("/vo/missing.dat"),
        lambda element: element.listdir("/vo/missing"),
        lambda element: element.rmdir("/vo/missing"),
    ],
    ids=["stat", "download", "remove", "listdir", "rmdir"],
)
def test_missing_entries_raise_file_not_found(
    storage_target: StorageTarget, operation: Callable[[StorageElement], object]
) -> None:
    element = storage_target.element()

    with pytest.raises(FileNotFoundError) as missing:
        operation(element)

    assert missing.value.errno == errno.ENOENT
    assert "TEST-SE" in str(missing.value) and "/vo/missing" in str(missing.value)


def test_read_only_element_refuses_writes_before_any_io(storage_target: StorageTarget, tmp_path: Path) -> None:
    (storage_target.root / "kept").mkdir()
    element = storage_target.element(read_only=True)
    source = tmp_path / "x.dat"
    source.write_bytes(b"abc")

    for write in (
        lambda: element.upload(source, "/vo/x.dat"),
        lambda: element.mkdir("/vo"),
        lambda: element.remove("/kept"),
        lambda: element.rmdir("/kept", recursive=True),
    ):
        with pytest.raises(ReadOnlyStorage) as refused:
            write()
        assert refused.value.errno == errno.EROFS and "read-only" in str(refused.value)

    assert os.listdir(storage_target.root) == ["kept"]
    assert [entry.path for entry in element.listdir("/")] == ["/kept"]


def test_upload_with_a_different_checksum_is_removed(storage_target: StorageTarget, tmp_path: Path) -> None:
    element = storage_target.element()
    data = b"the bytes that were sent"
    wrong = adler32(b"other bytes")

    with pytest.raises(ChecksumMismatch) as mismatch:
        put(element, tmp_path, "/vo/c.dat", data, checksums={"adler32": wrong})

    assert mismatch.value.errno == errno.EIO
    assert wrong in str(mismatch.value) and adler32(data) in str(mismatch.value)
    assert not element.exists("/vo/c.dat")


def test_url_round_trips_through_normalize(storage_target: StorageTarget) -> None:
    element = storage_target.element()
    expected = {
        "file": f"file://{storage_target.root}/vo/a b.dat",
        "webdav": f"{storage_target.base}/vo/a%20b.dat",
        "xroot": f"{storage_target.base}/vo/a b.dat",
    }[storage_target.plugin]

    url = element.url("vo/a b.dat")

    assert url == expected
    assert element.normalize(url) == "/vo/a b.dat"


@pytest.mark.parametrize("new_size", [8, 1], ids=["more", "fewer"])
def test_a_download_that_differs_from_the_announced_size_fails(file_target: StorageTarget, new_size: int) -> None:
    source = file_target.root / "moving.dat"
    source.write_bytes(b"abc")

    class ChangingSink(MemorySink):
        """Resizes the file between the announcement and the first read, as a live writer would."""

        def expect(self, size: int | None, checksums: dict[str, str], mtime: float | None = None) -> None:
            super().expect(size, checksums, mtime)
            os.truncate(source, new_size)

    with pytest.raises(OSError) as wrong:
        file_target.element().download("/moving.dat", ChangingSink())

    assert wrong.value.errno == errno.EIO
    assert f"received {new_size} bytes, the storage announced 3" in str(wrong.value)
