"""prepareFileForHTTP and downloads from the side server with curl, wget and requests.

Headers, ranges and resume, HEAD, tar bundles, and the answer of the RPC call.
"""

import datetime
import email.utils
import io
import os
import socket
import subprocess
import tarfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import requests
import xxhash
from fixtures.http_side import SE, curl, raw_request, sha256, wget

from seproxy.cache import Cache
from seproxy.http_side.signing import CLOCK_SKEW


def test_answer_describes_the_url_and_the_file(http_service):
    data = http_service.put("/lab/answer/a.dat", os.urandom(100_000))
    value = http_service.prepare("/lab/answer/a.dat")
    url = urlsplit(value["HttpURL"])
    assert url.scheme == "http" and url.hostname == "localhost"
    assert url.path == f"/{value['HttpKey']}/a.dat"
    assert value["Size"] == len(data) and value["Archive"] is False and value["SingleUse"] is False
    lifetime = value["Expires"] - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(seconds=1790) < lifetime <= datetime.timedelta(seconds=1800)
    described = value["Files"]["/lab/answer/a.dat"]
    assert described["SE"] == SE and described["Size"] == len(data)
    assert described["xxh3"] == xxhash.xxh3_64_hexdigest(data)
    assert "ReplicaErrors" not in described


def test_curl_downloads_the_file_with_its_headers(http_service, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    url = http_service.url("/lab/curl/data.bin", data)
    result = curl("--fail", "-D", "-", "-o", str(tmp_path / "out"), url)
    assert (tmp_path / "out").read_bytes() == data
    head = result.stdout.decode()
    assert head.startswith("HTTP/1.1 200 OK\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head.split("\r\n")[1:] if line)}
    assert headers["content-length"] == str(len(data))
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == "attachment; filename=\"data.bin\"; filename*=UTF-8''data.bin"
    assert headers["accept-ranges"] == "bytes"
    assert headers["x-checksum-xxh3"] == xxhash.xxh3_64_hexdigest(data)
    assert headers["etag"] == f'"{xxhash.xxh3_64_hexdigest(data)}"'
    modified = email.utils.parsedate_to_datetime(headers["last-modified"])
    assert abs((datetime.datetime.now(datetime.UTC) - modified).total_seconds()) < 60


def test_digest_header_when_the_source_gives_adler32(start_http_service, webdav_target):
    def add_webdav(config):
        config["storage_elements"]["DAV"] = {"plugin": "webdav", "base": webdav_target.base, "ca_dir": str(webdav_target.ca_dir)}

    service = start_http_service(config=add_webdav, lfn_storage_elements=["DAV"])
    data = os.urandom(50_000)
    (webdav_target.root / "lab").mkdir()
    (webdav_target.root / "lab" / "d.dat").write_bytes(data)
    value = service.prepare("/lab/d.dat")
    adler32 = f"{zlib.adler32(data):08x}"
    assert value["Files"]["/lab/d.dat"]["Checksum"] == adler32
    response = requests.head(value["HttpURL"], timeout=30)
    assert response.headers["Digest"] == f"adler32={adler32}"


def test_wget_names_the_file_after_the_url(http_service, tmp_path):
    data = os.urandom(200_000)
    url = http_service.url("/lab/wget/named file.dat", data)
    wget("-P", str(tmp_path), url)
    assert (tmp_path / "named file.dat").read_bytes() == data


def test_requests_streams_the_file(http_service):
    data = os.urandom(5 * 1024 * 1024)
    url = http_service.url("/lab/requests/stream.dat", data)
    with requests.get(url, stream=True, timeout=30) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_content(1 << 20))
    assert received == data


def test_head_answers_the_headers_only(http_service):
    data = os.urandom(10_000)
    url = http_service.url("/lab/head/h.dat", data)
    response = requests.head(url, timeout=30)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["X-Checksum-XXH3"] == xxhash.xxh3_64_hexdigest(data)
    parts = urlsplit(url)
    answer = raw_request(url, f"HEAD {parts.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert answer.endswith(b"\r\n\r\n"), "a HEAD answer carries no body"


def test_single_ranges(http_service):
    data = os.urandom(100_000)
    url = http_service.url("/lab/range/r.dat", data)
    for header, start, end in [("bytes=0-99", 0, 99), ("bytes=99990-", 99990, 99999), ("bytes=-10", 99990, 99999),
                               ("bytes=50000-200000", 50000, 99999)]:  # fmt: skip
        response = requests.get(url, headers={"Range": header}, timeout=30)
        assert response.status_code == 206, header
        assert response.headers["Content-Range"] == f"bytes {start}-{end}/100000"
        assert response.content == data[start : end + 1]
    several = requests.get(url, headers={"Range": "bytes=0-1,5-6"}, timeout=30)  # test_grid_http: the parts
    assert several.status_code == 206 and several.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    for header in ("bytes=100000-", "bytes=-0", "bytes=10-5"):
        refused = requests.get(url, headers={"Range": header}, timeout=30)
        assert refused.status_code == 416, header
        assert refused.headers["Content-Range"] == "bytes */100000"
        assert refused.headers["Content-Type"].startswith("text/plain")
    stale = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"0000000000000000"'}, timeout=30)
    assert stale.status_code == 200 and stale.content == data


def _cut_download(url: str, keep: int) -> bytes:
    """Start a GET and hang up after about ``keep`` bytes of body: what a broken transfer leaves."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = bytearray()
        while len(received) < keep:
            received += sock.recv(65536)
    body = bytes(received).split(b"\r\n\r\n", 1)[1]
    return body[:keep]


def test_curl_resumes_a_cut_download(http_service, tmp_path):
    data = os.urandom(8 * 1024 * 1024)
    url = http_service.url("/lab/resume/big.dat", data)
    partial = tmp_path / "big.dat"
    partial.write_bytes(_cut_download(url, 3 * 1024 * 1024))
    result = curl("--fail", "-C", "-", "-D", "-", "-o", str(partial), url)
    assert b"206 Partial Content" in result.stdout
    assert sha256(partial.read_bytes()) == sha256(data)


def test_wget_continues_a_cut_download(http_service, tmp_path):
    data = os.urandom(4 * 1024 * 1024)
    url = http_service.url("/lab/resume/wget.dat", data)
    (tmp_path / "wget.dat").write_bytes(_cut_download(url, 1024 * 1024 + 3))
    wget("-c", "-P", str(tmp_path), url)
    assert sha256((tmp_path / "wget.dat").read_bytes()) == sha256(data)


def test_several_files_come_as_one_tar_archive(http_service, tmp_path):
    files = {
        "/lab/tar/one.dat": os.urandom(1000),
        "/lab/tar/sub/two.dat": os.urandom(512),  # exactly one block: no padding
        "/lab/tar/empty.dat": b"",
        "/lab/tar/" + "long-name-" * 20 + "é.dat": os.urandom(70_000),  # pax header for the name
    }
    for lfn, data in files.items():
        http_service.put(lfn, data)
    value = http_service.prepare([*files, "/lab/tar/one.dat"])  # the repeat is served once
    assert value["Archive"] is True and set(value["Files"]) == set(files)
    name = urlsplit(value["HttpURL"]).path.rsplit("/", 1)[1]
    assert name.endswith(".tar")
    with requests.get(value["HttpURL"], timeout=30) as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == value["Size"] == len(response.content)
        assert response.headers["Content-Disposition"].startswith(f'attachment; filename="{name}"')
        archive = response.content
    assert len(archive) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [lfn.lstrip("/") for lfn in files]
        for member, (_lfn, data) in zip(members, files.items()):
            assert member.isfile() and member.size == len(data) and member.mode == 0o644
            assert tar.extractfile(member).read() == data
    # The layout is the same on every request, so a cut archive resumes with Range.
    partial = tmp_path / name
    partial.write_bytes(archive[:1500])
    curl("--fail", "-C", "-", "-o", str(partial), value["HttpURL"])
    assert partial.read_bytes() == archive
    tail = requests.get(value["HttpURL"], headers={"Range": "bytes=-1000"}, timeout=30)
    assert tail.status_code == 206 and tail.content == archive[-1000:]


def test_gnu_tar_reads_the_archive(http_service, tmp_path):
    http_service.put("/lab/gnutar/a.txt", b"alpha\n")
    http_service.put("/lab/gnutar/b.txt", b"beta\n")
    url = http_service.prepare(["/lab/gnutar/a.txt", "/lab/gnutar/b.txt"])["HttpURL"]
    archive = tmp_path / "x.tar"
    curl("--fail", "-o", str(archive), url)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "lab/gnutar/a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "lab/gnutar/b.txt").read_bytes() == b"beta\n"


def test_lfn_errors(http_service):
    missing = http_service.client.prepareFileForHTTP("/lab/nowhere.dat")
    assert not missing["OK"] and missing["Errno"] == 2
    assert "/lab/nowhere.dat" in missing["Message"] and SE in missing["Message"]
    for bad, why in [([], "no LFN given"), ("relative.dat", "absolute path"), ("/lab/../etc/passwd", "'..'"),
                     ("/lab/dir/", "absolute path to a file"), ([1], "an LFN is a string"),
                     ("/lab/a\x00b", "control character")]:  # fmt: skip
        result = http_service.client.prepareFileForHTTP(bad)
        assert not result["OK"] and result["Errno"] == 22 and why in result["Message"], (bad, result)
    wrong_type = http_service.client.prepareFileForHTTP(3)
    assert not wrong_type["OK"] and "string or a list" in wrong_type["Message"]


def test_one_failing_lfn_fails_the_bundle(http_service):
    http_service.put("/lab/partial/there.dat", b"x")
    result = http_service.client.prepareFileForHTTP(["/lab/partial/there.dat", "/lab/partial/missing.dat"])
    assert not result["OK"]
    assert "1 of 2 file(s)" in result["Message"] and "/lab/partial/missing.dat" in result["Message"]


def test_pins_last_as_long_as_the_url(http_service):
    data = http_service.put("/lab/pin/p.dat", os.urandom(1000))
    value = http_service.prepare("/lab/pin/p.dat")
    expires = value["Expires"].replace(tzinfo=datetime.UTC).timestamp()
    with Cache(Path(http_service.process.config["service"]["state_dir"]) / "cache", quota=1 << 30) as cache:
        (entry,) = [e for e in cache.entries(area="staged") if e.name == "/lab/pin/p.dat"]
        assert entry.pinned_until == expires + CLOCK_SKEW
        assert entry.size == len(data)
        assert cache.remove(entry.id) is False, "a pinned entry is not removed without force"


def test_empty_file(http_service, tmp_path):
    url = http_service.url("/lab/empty/nothing.dat", b"")
    result = curl("--fail", "-D", "-", "-o", str(tmp_path / "out"), url)
    assert b"\r\nContent-Length: 0\r\n" in result.stdout
    assert (tmp_path / "out").read_bytes() == b""
    assert requests.get(url, headers={"Range": "bytes=0-"}, timeout=10).status_code == 416
