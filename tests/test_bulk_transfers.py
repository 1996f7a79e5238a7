"""Bulks (DIRAC's sendBulk, receiveBulk, listBulk): several files as one tar stream, against a real service."""

from __future__ import annotations

import errno
import io
import os
import socket
import ssl
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.proxy import ProxyService, file_place, ok, refused, start_proxy_service, unique, wait_until

from seproxy.transfer import SErrorException, TransferClient
from seproxy.transfer.bulk_transfers import unpack_bulk

FILE_SE = "FILE-SE"
BULK_ROUTE = "/DataManagement/StorageElementProxy/stream/bulk/putFile"


@pytest.fixture(scope="module")
def bulk_service(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyService]:
    """One service for this module's tests (each uses names of its own)."""
    directory = tmp_path_factory.mktemp("bulks")
    running = start_proxy_service(pki, directory, [file_place(FILE_SE, directory / "file-se")])
    yield running
    print(f"service log:\n{running.process.log()}")
    running.close_clients()
    running.process.stop()


def client(service: ProxyService, who: Any = None) -> TransferClient:
    who = who or service.writer
    proxy, cert = (who.cert, None) if who.key is None else (None, who.cert)
    return TransferClient(service.url, proxy=proxy, cert=cert, key=who.key, ca_dir=str(service.pki.ca_dir), timeout=120)


def local_files(directory: Path, contents: dict[str, bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in contents.items():
        (directory / name).write_bytes(data)
        paths.append(directory / name)
    return paths


def upload_entries(service: ProxyService) -> list[Any]:
    return service.cache_entries(area="upload")


@pytest.mark.parametrize("compress", [False, True, "bz2"])
def test_round_trip_of_several_files(bulk_service: ProxyService, tmp_path: Path, compress: Any) -> None:
    tag = unique("bulk")
    contents = {f"{tag}-big.dat": os.urandom(3 * 1024 * 1024 + 17), f"{tag}-empty.dat": b"", f"{tag}-été.txt": b"accents\n"}
    sender = client(bulk_service)
    stored = ok(sender.sendBulk(local_files(tmp_path / "out", contents), "putFile", "", compress))
    assert {name: info["Size"] for name, info in stored.items()} == {name: len(data) for name, data in contents.items()}
    listed = ok(sender.listBulk("putFile"))
    assert set(contents) <= set(listed) and not [name for name in listed if "/" in name], listed

    # They are ordinary putFile uploads: uploadFile pushes them, prepareFile brings them back as getFile/<name>.
    for name in contents:
        ok(sender.executeRPC("uploadFile", FILE_SE, f"/{name}"))
        ok(sender.executeRPC("prepareFile", FILE_SE, f"/{name}"))
    bulk_id = ":".join(f"getFile/{name}" for name in contents)
    assert ok(sender.listBulk(bulk_id)) == sorted(contents)
    destination = tmp_path / "in"
    destination.mkdir()
    assert sorted(ok(sender.receiveBulk(destination, bulk_id, "", compress))) == sorted(contents)
    assert {path.name: path.read_bytes() for path in destination.iterdir()} == contents

    everything = tmp_path / "all"
    everything.mkdir()
    assert set(contents) <= set(ok(sender.receiveBulk(everything, "getFile", "", compress)))


def test_a_bulk_id_that_lists_files_must_match_the_archive(bulk_service: ProxyService, tmp_path: Path) -> None:
    tag = unique("listed")
    paths = local_files(tmp_path, {f"{tag}-a": b"a", f"{tag}-b": b"b"})
    sender = client(bulk_service)
    before = upload_entries(bulk_service)
    message = refused(sender.sendBulk(paths, f"putFile/{tag}-a"), errno.EINVAL)
    assert f"bulk member '{tag}-b' is not among the files its bulk id names" in message
    message = refused(sender.sendBulk(paths[:1], f"putFile/{tag}-a:putFile/{tag}-b"), errno.EINVAL)
    assert f"the bulk lacks {tag}-b" in message
    assert upload_entries(bulk_service) == before, "a refused bulk leaves nothing"
    ok(sender.sendBulk(paths, f"putFile/{tag}-a:putFile/{tag}-b", compress=False))
    assert ok(sender.listBulk(f"putFile/{tag}-a:putFile/{tag}-b")) == [f"{tag}-a", f"{tag}-b"]


def test_another_users_bulk_is_not_reachable(bulk_service: ProxyService, tmp_path: Path) -> None:
    name = unique("mine")
    mine = client(bulk_service)
    ok(mine.sendBulk(local_files(tmp_path, {name: b"private"}), "putFile"))
    ok(mine.executeRPC("uploadFile", FILE_SE, f"/{name}"))
    ok(mine.executeRPC("prepareFile", FILE_SE, f"/{name}"))

    other = client(bulk_service, bulk_service.other)
    assert "no file" in refused(other.listBulk(f"getFile/{name}"), errno.ENOENT)
    destination = tmp_path / "stolen"
    destination.mkdir()
    assert "no file" in refused(other.receiveBulk(destination, f"getFile/{name}"), errno.ENOENT)
    assert name not in ok(other.listBulk("getFile")) and list(destination.iterdir()) == []

    reader = client(bulk_service, bulk_service.reader)  # may read, may not write anywhere
    assert "uploads are taken only from callers who may write" in refused(
        reader.sendBulk(local_files(tmp_path / "r", {unique("r"): b"x"}), "putFile"), errno.EACCES
    )


@pytest.mark.parametrize(
    "bulk_id, word",
    [
        ("", "a bulk id is getFile"),
        ("mybulk", "a bulk id is getFile"),
        ("getFile/a:putFile/b", "file id 'putFile/b' is not getFile/<name>"),
        ("getFile/../x", "is not getFile/<name>"),
        ("getFile/a/b", "is not getFile/<name>"),
        ("getFile/a:getFile/a", "a file is named twice"),
        (":".join(["getFile/x"] * 1001), "1001 files, at most 1000"),
    ],
)
def test_bad_bulk_ids(bulk_service: ProxyService, tmp_path: Path, bulk_id: str, word: str) -> None:
    reader = client(bulk_service, bulk_service.reader)
    assert word in refused(reader.listBulk(bulk_id), errno.EINVAL)
    assert word in refused(reader.receiveBulk(tmp_path, bulk_id), errno.EINVAL)
    assert list(tmp_path.iterdir()) == []  # the destination stays as it was


def test_each_bulk_goes_one_way(bulk_service: ProxyService, tmp_path: Path) -> None:
    writer = client(bulk_service)
    paths = local_files(tmp_path / "src", {"one.dat": b"1"})
    assert "a bulk id is putFile" in refused(writer.sendBulk(paths, "getFile"), errno.EINVAL)
    assert "a bulk id is getFile" in refused(writer.receiveBulk(tmp_path, "putFile"), errno.EINVAL)
    assert "compress='zip'" in refused(writer.receiveBulk(tmp_path, "getFile", "", "zip"), errno.EINVAL)
    assert "not a directory" in refused(writer.receiveBulk(tmp_path / "nowhere", "getFile"), errno.ENOTDIR)
    assert "not a file" in refused(writer.sendBulk([tmp_path / "src"], "putFile"), errno.EINVAL)


def tls_put(service: ProxyService, path: str, head: dict[str, str], body: bytes) -> socket.socket:
    """Send a PUT's head and ``body`` (maybe less than announced) on a TLS connection; the open socket."""
    pki = service.pki
    context = ssl.create_default_context(capath=str(pki.ca_dir))
    context.load_cert_chain(str(pki.group_proxy))
    raw = socket.create_connection(("localhost", service.process.port), timeout=30)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    lines = [f"PUT {path} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode() + body)
    return sock


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_cut_stream_leaves_nothing(bulk_service: ProxyService) -> None:
    tag = unique("cut")
    archive = tar_of({f"{tag}-1": b"1" * 100_000, f"{tag}-2": b"2" * 3_000_000})
    before = upload_entries(bulk_service)
    sock = tls_put(bulk_service, BULK_ROUTE, {"Content-Length": str(len(archive))}, archive[: len(archive) // 2])
    wait_until(lambda: len(upload_entries(bulk_service)) > len(before), "the first member in the cache")
    sock.close()  # mid-way through the second member
    wait_until(lambda: upload_entries(bulk_service) == before, "the first member removed again")
    assert not any(tag in name for name in ok(client(bulk_service).listBulk("putFile")))
    tmp, _ = bulk_service.cache_files()
    assert tmp == []


def refusal_of(service: ProxyService, body: bytes) -> str:
    sock = tls_put(service, BULK_ROUTE, {"Content-Length": str(len(body))}, body)
    answer = sock.recv(65536).decode(errors="replace")
    sock.close()
    return answer


def test_a_body_that_is_no_archive_is_refused(bulk_service: ProxyService) -> None:
    before = upload_entries(bulk_service)
    for body in [b"not a tar at all" * 100, tar_of({"x": b"x" * 5000})[:2000]]:
        answer = refusal_of(bulk_service, body)
        assert answer.startswith("HTTP/1.1 400") and "not a whole tar archive" in answer, answer
    info = tarfile.TarInfo("link")  # a member that is no regular file
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        archive.addfile(info)
    answer = refusal_of(bulk_service, out.getvalue())
    assert answer.startswith("HTTP/1.1 400") and "'link' is not a regular file" in answer, answer
    assert upload_entries(bulk_service) == before


def test_a_cut_download_leaves_nothing(tmp_path: Path) -> None:
    archive = tar_of({"a.dat": b"a" * 10_000, "b.dat": b"b" * 10_000})
    with pytest.raises(SErrorException) as refusal:
        unpack_bulk(io.BytesIO(archive[:15_000]), str(tmp_path))
    assert "did not arrive whole" in refusal.value.result["Message"]
    assert list(tmp_path.iterdir()) == []
    assert unpack_bulk(io.BytesIO(archive), str(tmp_path)) == ["a.dat", "b.dat"]
