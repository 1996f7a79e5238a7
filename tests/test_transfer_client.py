"""TransferClient and StorageElementProxyClient against the real service, over TLS, on loopback.

Large files go both ways and are compared byte for byte; a TCP forwarder
cuts downloads mid-file; a damaged cache file stands for bytes that changed
on the way. The bearer-token tests and the DIRAC-like service (no Range,
no checksum headers) use a small local HTTPS server that records what it
receives.
"""

import datetime
import errno
import filecmp
import io
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import xxhash
from fixtures.service import free_port
from fixtures.transfer_service import SE_NAME

from seproxy.security.pki import Credential, issue_proxy
from seproxy.transfer import StorageElementProxyClient, codec, credentials

MiB = 1024 * 1024


@pytest.fixture()
def client_for(pki):
    """``client_for(url, **options)``: a client with the test user's proxy, closed after the test."""
    made = []

    def make(url, **options):
        options = {"proxy": str(pki.proxy), "ca_dir": str(pki.ca_dir), **options}
        made.append(StorageElementProxyClient(url, **options))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture()
def client(client_for, se_service):
    return client_for(se_service.url)


def random_file(path, size):
    """A file of ``size`` random bytes, written in chunks."""
    with open(path, "wb") as stream:
        for start in range(0, size, 16 * MiB):
            stream.write(os.urandom(min(16 * MiB, size - start)))
    return path


def on_storage(se_service, name, data):
    """``data`` as ``/<name>`` on the test storage element; its PFN."""
    (se_service.se_root / name).write_bytes(data)
    return f"/{name}"


def leftovers(directory):
    """Files in ``directory``, temporary ones included."""
    return sorted(p.name for p in directory.iterdir())


def ok(result):
    assert result["OK"] is True, result
    return result["Value"]


def xxh3(path):
    digest = xxhash.xxh3_64()
    with open(path, "rb") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


# -- large files, both ways --------------------------------------------------------


def test_large_round_trip_with_putFile_and_getFile(client, se_service, tmp_path):
    source = random_file(tmp_path / "big.bin", 96 * MiB + 12345)
    stored = ok(client.putFile(str(source), SE_NAME, "/round/big.bin"))["Successful"]["/round/big.bin"]
    assert stored["Size"] == source.stat().st_size and stored["xxh3"] == xxh3(source)
    assert stored["PFN"].endswith("/round/big.bin")
    assert filecmp.cmp(source, se_service.se_root / "round" / "big.bin", shallow=False)

    (tmp_path / "back").mkdir()
    got = ok(client.getFile(SE_NAME, "/round/big.bin", tmp_path / "back"))
    assert got["Failed"] == {}
    assert got["Successful"]["/round/big.bin"]["Path"] == str(tmp_path / "back" / "big.bin")
    assert filecmp.cmp(source, tmp_path / "back" / "big.bin", shallow=False)
    assert leftovers(tmp_path / "back") == ["big.bin"]


def test_large_round_trip_with_sendFile_and_receiveFile(client, se_service, tmp_path):
    source = random_file(tmp_path / "send.bin", 64 * MiB + 1)
    sent = ok(client.sendFile(source, "putFile/send.bin"))
    assert sent["Size"] == 64 * MiB + 1 and sent["xxh3"] == xxh3(source)
    ok(client.uploadFile(SE_NAME, "/round/send.bin"))

    prepared = ok(client.prepareFile(SE_NAME, "/round/send.bin"))
    received = ok(client.receiveFile(tmp_path / "received.bin", prepared["FileId"]))
    assert received == {"Size": 64 * MiB + 1, "xxh3": sent["xxh3"], "Checksum": sent["Checksum"]}
    assert filecmp.cmp(source, tmp_path / "received.bin", shallow=False)


def test_progress_is_reported_up_to_the_total(client, se_service, tmp_path):
    pfn = on_storage(se_service, "progress.bin", os.urandom(3 * MiB + 5))
    seen = []
    ok(client.getFile(SE_NAME, pfn, tmp_path / "p.bin", progress=lambda *call: seen.append(call)))
    assert seen[-1] == (pfn, 3 * MiB + 5, 3 * MiB + 5)
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)
    sent = []
    ok(client.sendFile(tmp_path / "p.bin", "putFile/p.bin", progress=lambda *call: sent.append(call)))
    assert sent[-1] == (3 * MiB + 5, 3 * MiB + 5)


# -- broken connections and damaged bytes -------------------------------------------


def test_a_cut_download_resumes_where_it_broke_off(client_for, client, se_service, forwarder, tmp_path):
    data = os.urandom(40 * MiB + 7)
    pfn = on_storage(se_service, "cut.bin", data)
    prepared = ok(client.prepareFile(SE_NAME, pfn))
    cutting = forwarder(cuts=[6 * MiB, 9 * MiB])
    seen = []
    received = ok(
        client_for(cutting.url(se_service.url)).receiveFile(
            tmp_path / "cut.bin", prepared["FileId"], progress=lambda done, total: seen.append(done)
        )
    )
    assert received["Size"] == len(data) and received["xxh3"] == xxhash.xxh3_64_hexdigest(data)
    assert (tmp_path / "cut.bin").read_bytes() == data
    assert cutting.connections == 3
    # Resumed with Range, never started again: the byte count only ever grew.
    assert seen == sorted(seen) and seen[-1] == len(data)
    assert leftovers(tmp_path) == ["cut.bin"]


def test_a_download_cut_too_often_fails_and_leaves_nothing(client_for, client, se_service, forwarder, tmp_path):
    pfn = on_storage(se_service, "cut-often.bin", os.urandom(20 * MiB))
    prepared = ok(client.prepareFile(SE_NAME, pfn))
    cutting = forwarder(cuts=[3 * MiB] * 3)
    result = client_for(cutting.url(se_service.url), max_resumes=1).receiveFile(
        tmp_path / "cut-often.bin", prepared["FileId"]
    )
    assert result["OK"] is False and result["Errno"] == errno.ECONNRESET
    assert "after 1 resume(s)" in result["Message"]
    assert cutting.connections == 2
    assert leftovers(tmp_path) == []


def damage_cached_copy(se_service, data):
    """Flip one byte of the cache's copy of ``data``: the bytes the service sends no longer match its index."""
    (copy,) = [
        path
        for path in se_service.cache_root.rglob("*")
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    ]
    with open(copy, "r+b") as stream:
        stream.seek(len(data) // 2)
        stream.write(bytes([data[len(data) // 2] ^ 0xFF]))


@pytest.mark.parametrize("destination", ["path", "open file"])
def test_damaged_bytes_are_refused_and_nothing_is_kept(destination, client, se_service, tmp_path):
    data = os.urandom(5 * MiB + 3)
    pfn = on_storage(se_service, f"damaged-{destination.replace(' ', '-')}.bin", data)
    prepared = ok(client.prepareFile(SE_NAME, pfn))
    damage_cached_copy(se_service, data)
    target = tmp_path / "target.bin"
    if destination == "path":
        result = client.receiveFile(target, prepared["FileId"])
    else:
        with open(target, "wb") as stream:
            stream.write(b"kept header")
            result = client.receiveFile(stream, prepared["FileId"])
    assert result["OK"] is False and result["Errno"] == errno.EIO
    assert "xxh3" in result["Message"] and "nothing was kept" in result["Message"]
    if destination == "path":
        assert leftovers(tmp_path) == []
    else:
        assert target.read_bytes() == b"kept header"


def test_an_unknown_file_id_is_an_error_and_leaves_nothing(client, tmp_path):
    result = client.receiveFile(tmp_path / "nothing.bin", "getFile/never-prepared.bin")
    assert result["OK"] is False and result["Errno"] == errno.ENOENT
    assert leftovers(tmp_path) == []


# -- file objects, bulk calls, overwriting ------------------------------------------


def test_open_file_objects_both_ways(client, se_service, tmp_path):
    data = os.urandom(2 * MiB + 11)
    source = io.BytesIO(b"skipped" + data)
    source.seek(len(b"skipped"))  # sent from the current position on
    stored = ok(client.putFile(source, SE_NAME, "/objects/from-bytesio.bin"))["Successful"]
    assert stored["/objects/from-bytesio.bin"]["Size"] == len(data)
    assert (se_service.se_root / "objects" / "from-bytesio.bin").read_bytes() == data

    with open(tmp_path / "with-header.bin", "wb") as stream:
        stream.write(b"header:")
        got = ok(client.getFile(SE_NAME, "/objects/from-bytesio.bin", stream))["Successful"]
    assert got["/objects/from-bytesio.bin"]["Path"] is None
    assert (tmp_path / "with-header.bin").read_bytes() == b"header:" + data


def test_an_empty_file_goes_both_ways(client, se_service, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    ok(client.putFile(tmp_path / "empty", SE_NAME, "/objects/empty"))
    assert (se_service.se_root / "objects" / "empty").read_bytes() == b""
    got = ok(client.getFile(SE_NAME, "/objects/empty", tmp_path / "empty-back"))
    assert got["Failed"] == {} and (tmp_path / "empty-back").read_bytes() == b""


def test_bulk_calls_report_each_file(client, se_service, tmp_path):
    sources = [tmp_path / name for name in ("one.txt", "two.txt")]
    for source in sources:
        source.write_bytes(source.name.encode() * 1000)
    put = ok(client.putFile([str(source) for source in sources], SE_NAME, "/bulk"))
    assert sorted(put["Successful"]) == ["/bulk/one.txt", "/bulk/two.txt"] and put["Failed"] == {}
    into_directory = ok(client.putFile(sources[0], SE_NAME, "/bulk/copies/"))
    assert list(into_directory["Successful"]) == ["/bulk/copies/one.txt"]

    (tmp_path / "back").mkdir()
    got = ok(client.getFile(SE_NAME, ["/bulk/one.txt", "/bulk/missing.txt", "/bulk/two.txt"], tmp_path / "back"))
    assert sorted(got["Successful"]) == ["/bulk/one.txt", "/bulk/two.txt"]
    assert list(got["Failed"]) == ["/bulk/missing.txt"] and "No such file" in got["Failed"]["/bulk/missing.txt"]
    assert leftovers(tmp_path / "back") == ["one.txt", "two.txt"]

    several_into_a_file = client.getFile(SE_NAME, ["/bulk/one.txt", "/bulk/two.txt"], sources[0])
    assert several_into_a_file["OK"] is False and several_into_a_file["Errno"] == errno.EINVAL
    same_name = client.getFile(SE_NAME, ["/bulk/one.txt", "/other/one.txt"], tmp_path / "back")
    assert same_name["OK"] is False and "two files would go to" in same_name["Message"]


def test_what_exists_is_kept_unless_overwrite(client, se_service, tmp_path):
    # One rule with the CLI's get and put (and gfal-copy): replaced only when asked.
    pfn = on_storage(se_service, "keep.txt", b"on the storage")
    (tmp_path / "keep.txt").write_bytes(b"local")
    got = ok(client.getFile(SE_NAME, pfn, tmp_path))
    assert "File exists" in got["Failed"][pfn] and (tmp_path / "keep.txt").read_bytes() == b"local"
    put = ok(client.putFile(tmp_path / "keep.txt", SE_NAME, pfn))
    assert "File exists" in put["Failed"][pfn] and (se_service.se_root / "keep.txt").read_bytes() == b"on the storage"
    ok(client.getFile(SE_NAME, pfn, tmp_path, overwrite=True))
    assert (tmp_path / "keep.txt").read_bytes() == b"on the storage"
    (tmp_path / "keep.txt").write_bytes(b"local again")
    ok(client.putFile(tmp_path / "keep.txt", SE_NAME, pfn, overwrite=True))
    assert (se_service.se_root / "keep.txt").read_bytes() == b"local again"


class Shrinking(io.BytesIO):
    """A source that ends early, as a file truncated while it is being sent."""

    def read(self, size=-1):
        return super().read(size) if self.tell() < MiB else b""


def test_a_source_that_shrinks_while_sent_is_an_error_and_not_kept(client, tmp_path):
    result = client.sendFile(Shrinking(os.urandom(3 * MiB)), "putFile/shrinking.bin")
    assert result["OK"] is False and result["Errno"] == errno.EIO
    assert "the file shrank to 1048576 bytes while it was being sent" in result["Message"]
    refused = client.uploadFile(SE_NAME, "/objects/shrinking.bin")  # the service dropped the partial upload
    assert refused["OK"] is False and refused["Errno"] == errno.ENOENT


def test_an_upload_fails_over_past_a_dead_url(client_for, se_service, tmp_path):
    dead = f"https://localhost:{free_port()}/DataManagement/StorageElementProxy"
    (tmp_path / "failover.bin").write_bytes(b"x" * MiB)
    sent = ok(client_for([dead, se_service.url]).sendFile(tmp_path / "failover.bin", "putFile/failover.bin"))
    assert sent["Size"] == MiB and sent["xxh3"] == xxhash.xxh3_64_hexdigest(b"x" * MiB)


# -- a renewed certificate between two downloads ------------------------------------


def test_a_renewed_proxy_is_presented_on_the_next_transfer(pki, client_for, client, se_service, forwarder, tmp_path):
    pfn = on_storage(se_service, "renewal.bin", os.urandom(MiB))
    file_id = ok(client.prepareFile(SE_NAME, pfn))["FileId"]
    user = Credential.read(pki.user_cert, pki.user_key)
    short = issue_proxy(user, lifetime=datetime.timedelta(seconds=4))
    proxy = tmp_path / "x509up"
    short.write(proxy)
    counting = forwarder()
    renewing = client_for(counting.url(se_service.url), proxy=str(proxy))
    ok(renewing.receiveFile(tmp_path / "1.bin", file_id))
    ok(renewing.receiveFile(tmp_path / "2.bin", file_id))
    assert counting.connections == 1  # kept alive while the file did not change

    expired_at = short.cert.not_valid_after_utc.timestamp()
    time.sleep(max(0.0, expired_at - time.time() + 1))
    issue_proxy(user).write(proxy)
    ok(renewing.receiveFile(tmp_path / "3.bin", file_id))
    # A new connection, which the service accepted: it presented the renewed proxy, not the expired one.
    assert counting.connections == 2
    issue_proxy(user).write(proxy)  # renewed again: the upload, too, starts on a new connection
    ok(renewing.sendFile(tmp_path / "3.bin", "putFile/renewal.bin"))
    assert counting.connections == 3
    short.write(tmp_path / "expired")
    stale = client_for(counting.url(se_service.url), proxy=str(tmp_path / "expired"))
    assert stale.receiveFile(tmp_path / "4.bin", file_id)["OK"] is False


# -- a small recording HTTPS server: tokens, and a service as DIRAC's --------------


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "RecordingService"

    def do_POST(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
        self.server.seen.append((dict(self.headers), form, self.connection.getpeercert()))
        if form["method"] != "streamToClient":
            self._send(200, codec.encode({"OK": True, "Value": "pong"}).encode(), "application/json")
            return
        # As DIRAC's own service: the whole file every time, no Range, no checksum headers.
        data, declared = self.server.file, len(self.server.file)
        cut = self.server.cut_first and len(self.server.seen) == 1
        self._send(200, data[: len(data) // 2] if cut else data, "application/octet-stream", declared)

    def _send(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        if length is not None and length != len(body):
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


class RecordingService(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, pki) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.host_cert, pki.host_key)
        tls.load_verify_locations(capath=str(pki.ca_dir))
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.seen: list[tuple[dict[str, str], dict[str, str], dict]] = []
        self.file = b""
        self.cut_first = False
        self.url = f"https://localhost:{self.server_port}/DataManagement/StorageElementProxy"

    def handle_error(self, request, client_address) -> None:
        pass


@pytest.fixture()
def recording(pki):
    server = RecordingService(pki)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def token_home(monkeypatch, tmp_path):
    """No token in the environment, and the default token locations inside ``tmp_path``."""
    for name in ("BEARER_TOKEN", "BEARER_TOKEN_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(credentials, "TOKEN_DIR", str(tmp_path))
    return tmp_path


def test_the_bearer_token_is_sent_beside_the_proxy_and_re_read_each_time(recording, client_for, token_home, monkeypatch):
    token_file = token_home / "token"
    token_file.write_text("first-token\n")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token_file))
    client = client_for(recording.url)
    ok(client.ping())
    token_file.write_text("renewed-token")
    ok(client.ping())
    assert [headers["Authorization"] for headers, _, _ in recording.seen] == ["Bearer first-token", "Bearer renewed-token"]
    assert all(peer_cert for _, _, peer_cert in recording.seen)  # and the proxy, both times


def test_bearer_token_discovery_follows_the_wlcg_order(token_home, monkeypatch):
    uid_file = f"bt_u{os.getuid()}"
    assert credentials.find_bearer_token() is None
    (token_home / uid_file).write_text("from-tmp")
    assert credentials.find_bearer_token() == credentials.BearerToken("from-tmp", str(token_home / uid_file))
    runtime = token_home / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert credentials.find_bearer_token().value == "from-tmp"  # no file there: the next step
    (runtime / uid_file).write_text("from-xdg")
    assert credentials.find_bearer_token().value == "from-xdg"
    (token_home / "named").write_text(" from-file \n")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token_home / "named"))
    assert credentials.find_bearer_token() == credentials.BearerToken("from-file", "BEARER_TOKEN_FILE")
    monkeypatch.setenv("BEARER_TOKEN", "from-env")
    assert credentials.find_bearer_token() == credentials.BearerToken("from-env", "BEARER_TOKEN")


def test_a_named_token_file_that_is_missing_fails_the_call_before_sending(recording, client_for, token_home, monkeypatch):
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(token_home / "absent"))
    result = client_for(recording.url).ping()
    assert result["OK"] is False and result["Errno"] == errno.EACCES
    assert f"bearer token file {token_home / 'absent'} (from BEARER_TOKEN_FILE) does not exist" in result["Message"]
    assert recording.seen == []


def test_a_service_without_range_or_checksums_gets_the_whole_file_again(recording, client_for, tmp_path):
    recording.file = os.urandom(3 * MiB)
    recording.cut_first = True  # after half of the file
    seen = []
    received = ok(
        client_for(recording.url).receiveFile(
            tmp_path / "dirac.bin", "getFile/dirac.bin", "a-token", progress=lambda done, total: seen.append(done)
        )
    )
    assert received == {"Size": 3 * MiB, "xxh3": xxhash.xxh3_64_hexdigest(recording.file), "Checksum": ""}
    assert (tmp_path / "dirac.bin").read_bytes() == recording.file
    (first_headers, first_form, _), (second_headers, second_form, _) = recording.seen
    assert first_form == second_form == {
        "method": "streamToClient",
        "args": '["getFile/dirac.bin","a-token"]',
        "rawContent": "True",
        "clientVO": "unknown",
        "clientSetup": "None",
    }
    assert "Range" not in first_headers and second_headers["Range"] == f"bytes={3 * MiB // 2}-"
    restart = next(i for i in range(1, len(seen)) if seen[i] < seen[i - 1])
    assert seen[restart - 1] == 3 * MiB // 2 and seen[-1] == 3 * MiB
    assert leftovers(tmp_path) == ["dirac.bin"]
