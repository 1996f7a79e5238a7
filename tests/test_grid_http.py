"""The side server as grid clients use it: checksums, stat and listing, vectored and conditional reads.

Every client here is the real one from Debian (davix, gfal2 with its HTTP
plugin, xrdcp with XrdClHttp, curl, aria2), run as a grid job would run it,
against a real service. A missing client fails the test (``tool``).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import re
import socket
import subprocess
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.http_side import curl, multipart_parts, tool

from seproxy.cache import Cache

MiB = 1024 * 1024
# The source's modification time, which Last-Modified, PROPFIND and gfal-stat must report.
SOURCE_MTIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def run(*command: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run a client; its output, or a failure showing what it said."""
    done = subprocess.run(
        [tool(command[0]), *command[1:]], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def gfal(*command: str) -> str:
    """The gfal CLI runs on the Debian Python, which has the gfal2 bindings (not this virtualenv's)."""
    python = "/usr/bin/python3"
    assert Path(python).exists(), "the gfal CLI needs the Debian python3 (scripts/setup test)"
    return run(*command, env={"GFAL_PYTHONBIN": python, "PYTHONPATH": ""})


@pytest.fixture(scope="module")
def served(http_service) -> tuple[str, bytes]:
    """(HttpURL, content) of a 3 MiB file whose source was last modified at ``SOURCE_MTIME``."""
    data = os.urandom(3 * MiB + 12345)
    http_service.put("/grid/conventions.dat", data)
    os.utime(http_service.se_root / "grid/conventions.dat", (SOURCE_MTIME, SOURCE_MTIME))
    return http_service.prepare("/grid/conventions.dat")["HttpURL"], data


# -- checksums ----------------------------------------------------------------------------------


def test_gfal_sum_adler32_and_md5(served):
    url, data = served
    assert gfal("gfal-sum", url, "ADLER32").split() == [url, adler32(data)]
    assert gfal("gfal-sum", url, "MD5").split() == [url, md5(data)]


def test_digest_headers_in_the_clients_order(served):
    url, data = served
    response = requests.head(url, headers={"Want-Digest": "MD5, adler32;q=0.5, SHA-256"}, timeout=30)
    b64 = lambda digest: base64.b64encode(digest).decode()  # noqa: E731
    expected = f"md5={b64(hashlib.md5(data).digest())},adler32={adler32(data)},sha-256={b64(hashlib.sha256(data).digest())}"
    assert response.headers["Digest"] == expected
    assert "Repr-Digest" not in response.headers
    response = requests.get(url, headers={"Want-Repr-Digest": "sha-256=10, md5=0", "Range": "bytes=0-9"}, timeout=30)
    assert response.status_code == 206 and response.content == data[:10]
    assert response.headers["Repr-Digest"] == f"sha-256=:{b64(hashlib.sha256(data).digest())}:"  # the whole file's
    assert response.headers["Digest"] == f"adler32={adler32(data)}"  # always, for seproxy's own client


def test_gfal_copy_verifies_adler32(served, tmp_path):
    url, data = served
    gfal("gfal-copy", "-K", "ADLER32", url, f"file://{tmp_path}/copy.dat")
    assert (tmp_path / "copy.dat").read_bytes() == data


def test_xrdcp_copies_and_checks_adler32(served, tmp_path):
    """xrdcp through its HTTP plugin (XrdClHttp). ``--cksum adler32:source`` needs the plugin to ask the
    server (Want-Digest); the XrdClHttp of Debian 12 (xrootd 5.5) has no checksum query at all and
    fails before sending a request, so this checks the bytes and the checksum xrdcp computes."""
    url, data = served
    command = [tool("xrdcp"), "--nopbar", "--allow-http", "--cksum", "adler32:print", url, str(tmp_path / "x.dat")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.dat").read_bytes() == data
    label, value = done.stderr.split()[:2]  # xrdcp prints it there, without leading zeros
    assert label == "adler32:" and int(value, 16) == zlib.adler32(data), done.stderr


# -- stat and listing ---------------------------------------------------------------------------


def test_last_modified_is_the_sources(served):
    url, _ = served
    response = requests.head(url, timeout=30)
    assert email.utils.parsedate_to_datetime(response.headers["Last-Modified"]).timestamp() == SOURCE_MTIME


def test_gfal_stat_and_ls_show_size_and_modification_time(served):
    url, data = served
    for scheme_url in (url, url.replace("http://", "dav://")):
        output = gfal("gfal-stat", scheme_url)
        assert re.search(rf"Size: {len(data)}\s+regular file", output), output
        assert "Modify: 2023-11-14 22:13:20" in output, output
    (line,) = gfal("gfal-ls", "-l", url).splitlines()
    assert str(len(data)) in line.split() and "Nov 14  2023" in line, line


def test_davix_ls_lists_the_file(served):
    """dav:// is WebDAV over HTTP to davix (PROPFIND); for http:// davix stats a file with HEAD and
    shows no date, whatever the server sends."""
    url, data = served
    (line,) = run("davix-ls", "-l", url.replace("http://", "dav://")).splitlines()
    fields = line.split()
    assert fields[2] == str(len(data)) and fields[3:5] == ["2023-11-14", "22:13:20"], line
    (line,) = run("davix-ls", "-l", url).splitlines()
    assert line.split()[2] == str(len(data)), line


def test_propfind_depth_0_describes_the_file(served):
    url, data = served
    response = requests.request("PROPFIND", url, headers={"Depth": "0"}, timeout=30)
    assert response.status_code == 207 and response.headers["Content-Type"].startswith("application/xml")
    text = response.text
    assert f"<d:getcontentlength>{len(data)}</d:getcontentlength>" in text
    assert "<d:getlastmodified>Tue, 14 Nov 2023 22:13:20 GMT</d:getlastmodified>" in text
    assert f"adler32={adler32(data)}" in text and "<d:resourcetype/>" in text
    head = requests.head(url, timeout=30)
    assert f"<d:getetag>{head.headers['ETag']}</d:getetag>" in text


def test_propfind_of_named_properties(served):
    url, data = served
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="urn:x"><D:prop>'
        b"<D:getcontentlength/><X:unknown/></D:prop></D:propfind>"
    )
    response = requests.request("PROPFIND", url, data=body, headers={"Depth": "0"}, timeout=30)
    assert response.status_code == 207
    ok, missing = response.text.split("<d:propstat>")[1:]
    assert f"<d:getcontentlength>{len(data)}</d:getcontentlength>" in ok and "200 OK" in ok and "getetag" not in ok
    assert "unknown/>" in missing and "404 Not Found" in missing


def test_a_tar_bundle_lists_itself(http_service):
    for name in ("a", "b"):
        http_service.put(f"/grid/bundle/{name}.dat", os.urandom(1000))
    url = http_service.prepare(["/grid/bundle/a.dat", "/grid/bundle/b.dat"])["HttpURL"]
    response = requests.request("PROPFIND", url, headers={"Depth": "1"}, timeout=30)
    assert response.status_code == 207 and response.text.count("<d:response>") == 1
    size = len(requests.get(url, timeout=30).content)
    assert f"<d:getcontentlength>{size}</d:getcontentlength>" in response.text
    (line,) = run("davix-ls", "-l", url.replace("http://", "dav://")).splitlines()
    assert line.split()[2] == str(size), line


def test_options(served):
    url, _ = served
    response = requests.options(url, timeout=30)
    assert response.status_code == 200 and response.headers["DAV"] == "1"
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS, PROPFIND"


# -- vectored and conditional reads -------------------------------------------------------------

RANGES = [(0, 9), (1000, 1009), (2 * MiB, 2 * MiB + 99_999), (3 * MiB, 3 * MiB + 12344)]


def test_curl_multi_range(served):
    url, data = served
    spec = ",".join(f"{first}-{last}" for first, last in RANGES)
    result = curl("--fail", "-D", "-", "-r", spec, url)
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    (content_type,) = [line.split(": ", 1)[1] for line in head.decode().split("\r\n") if line.lower().startswith("content-type:")]
    parts = multipart_parts(content_type, body)
    assert [(first, last) for first, last, _, _ in parts] == RANGES
    assert all(part == data[first : last + 1] for first, last, _, part in parts)


def test_many_ranges_to_a_slow_reader(served):
    """Small ranges go out read and gathered, big ones by sendfile; a reader that takes its time makes the
    server stop mid-gather again and again, and every byte must still come in order."""
    url, data = served
    parts = urlsplit(url)
    spans = [(n * 9_000, n * 9_000 + 4_095) for n in range(200)] + [(2 * MiB, 3 * MiB + 12_000)]
    spec = ",".join(f"{first}-{last}" for first, last in spans)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\nRange: bytes={spec}\r\nConnection: close\r\n\r\n".encode())
        received = bytearray()
        while chunk := sock.recv(4096):
            received += chunk
            if len(received) < 256 * 1024:
                time.sleep(0.0005)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    content_type = re.search(rb"(?i)\r\ncontent-type: ([^\r]+)", head).group(1).decode()
    answered = multipart_parts(content_type, body)
    assert [(first, last) for first, last, _, _ in answered] == spans
    assert all(part == data[first : last + 1] for first, last, _, part in answered)


def test_davix_vectored_read(served, davix_vector_reader, http_service):
    """davix's vectored read (ROOT's TDavixFile reads this way): one multi-range request, not one per range."""
    url, data = served
    before = http_service.log().count(" GET status=206 ")
    spec = [f"{first}:{last - first + 1}" for first, last in RANGES]
    output = subprocess.run([str(davix_vector_reader), url, *spec], capture_output=True, timeout=60)
    assert output.returncode == 0, output.stderr.decode()
    chunks = output.stdout.split(b"\n--chunk--\n")[:-1]
    assert chunks == [data[first : last + 1] for first, last in RANGES]
    deadline = time.monotonic() + 10  # the access log line comes just after the answer
    while http_service.log().count(" GET status=206 ") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_service.log().count(" GET status=206 ") == before + 1, "davix fell back to single ranges"


def test_curl_gets_304_for_its_etag_and_date(served, tmp_path):
    url, data = served
    etag = requests.head(url, timeout=30).headers["ETag"]
    for condition in (f"If-None-Match: {etag}", "If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"):
        result = curl("-D", "-", "-o", str(tmp_path / "body"), "-H", condition, url)
        assert result.stdout.startswith(b"HTTP/1.1 304 "), result.stdout
        assert not (tmp_path / "body").exists() or (tmp_path / "body").read_bytes() == b""
        assert f"ETag: {etag}".encode() in result.stdout
    changed = curl("-D", "-", "-o", str(tmp_path / "body"), "-H", 'If-None-Match: "other"', url)
    assert changed.stdout.startswith(b"HTTP/1.1 200 ") and (tmp_path / "body").read_bytes() == data
    # curl -z: download only if newer than the date given
    newer = curl("-D", "-", "-o", str(tmp_path / "body2"), "-z", "Mon, 13 Nov 2023 00:00:00 GMT", url)
    assert newer.stdout.startswith(b"HTTP/1.1 200 ")


def test_if_range(served):
    url, data = served
    head = requests.head(url, timeout=30)
    same = requests.get(url, headers={"Range": "bytes=5-9", "If-Range": head.headers["ETag"]}, timeout=30)
    assert same.status_code == 206 and same.content == data[5:10]
    by_date = requests.get(url, headers={"Range": "bytes=5-9", "If-Range": head.headers["Last-Modified"]}, timeout=30)
    assert by_date.status_code == 206 and by_date.content == data[5:10]
    older = requests.get(url, headers={"Range": "bytes=5-9", "If-Range": "Mon, 13 Nov 2023 00:00:00 GMT"}, timeout=30)
    assert older.status_code == 200 and older.content == data


def test_preconditions_that_fail(served):
    url, _ = served
    assert requests.get(url, headers={"If-Match": '"other"'}, timeout=30).status_code == 412
    assert requests.get(url, headers={"If-Unmodified-Since": "Mon, 13 Nov 2023 00:00:00 GMT"}, timeout=30).status_code == 412
    etag = requests.head(url, timeout=30).headers["ETag"]
    assert requests.head(url, headers={"If-Match": etag}, timeout=30).status_code == 200


def test_aria2_downloads_with_several_connections(served, tmp_path):
    url, data = served
    run("aria2c", "-q", "-x", "4", "-s", "4", "-k", "1M", "--check-integrity=true",
        f"--checksum=md5={md5(data)}", "-d", str(tmp_path), "-o", "a.dat", url)  # fmt: skip
    assert (tmp_path / "a.dat").read_bytes() == data


def test_md5_is_computed_once_and_kept(http_service):
    data = os.urandom(100_000)
    url = http_service.url("/grid/once.dat", data)
    for _ in range(2):
        response = requests.head(url, headers={"Want-Digest": "md5"}, timeout=30)
        assert response.headers["Digest"] == f"md5={base64.b64encode(hashlib.md5(data).digest()).decode()}"
    with Cache(http_service.process.directory / "state" / "cache", quota=1 << 30, min_free=0) as cache:
        (entry,) = [e for e in cache.entries() if e.source_path == "/grid/once.dat"]
        assert entry.md5 == md5(data) and entry.adler32 == adler32(data) and entry.sha256 is None


# -- a davix program doing what ROOT's TDavixFile does ------------------------------------------

VECTOR_READER = r"""
#include <davix.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
// usage: vector-read URL offset:length... ; prints each chunk followed by "\n--chunk--\n"
int main(int argc, char** argv) {
    Davix::Context context;
    Davix::DavPosix posix(&context);
    Davix::DavixError* error = nullptr;
    DAVIX_FD* fd = posix.open(nullptr, argv[1], O_RDONLY, &error);
    if (!fd) { fprintf(stderr, "open: %s\n", error->getErrMsg().c_str()); return 2; }
    std::vector<Davix::DavIOVecInput> in(argc - 2);
    std::vector<Davix::DavIOVecOuput> out(argc - 2);
    std::vector<std::vector<char>> buffers(argc - 2);
    for (int i = 2; i < argc; ++i) {
        unsigned long long offset = strtoull(argv[i], nullptr, 10);
        size_t length = strtoull(strchr(argv[i], ':') + 1, nullptr, 10);
        buffers[i - 2].resize(length);
        in[i - 2].diov_offset = offset;
        in[i - 2].diov_size = length;
        in[i - 2].diov_buffer = buffers[i - 2].data();
    }
    if (posix.preadVec(fd, in.data(), out.data(), in.size(), &error) < 0) {
        fprintf(stderr, "preadVec: %s\n", error->getErrMsg().c_str()); return 3;
    }
    for (size_t i = 0; i < in.size(); ++i) {
        fwrite(out[i].diov_buffer, 1, out[i].diov_size, stdout);
        fputs("\n--chunk--\n", stdout);
    }
    posix.close(fd, &error);
    return 0;
}
"""


@pytest.fixture(scope="module")
def davix_vector_reader(tmp_path_factory) -> Path:
    """A small program on libdavix's vectored read (DavPosix::preadVec), built with g++ and davix-dev."""
    directory = tmp_path_factory.mktemp("davix")
    (directory / "vector_read.cpp").write_text(VECTOR_READER)
    flags = run("pkg-config", "--cflags", "--libs", "davix").split()
    run("g++", "-O1", "-o", str(directory / "vector-read"), str(directory / "vector_read.cpp"), *flags)
    return directory / "vector-read"
