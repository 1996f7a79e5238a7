"""The RPC client against real HTTPS servers on loopback.

The servers here are plain ``http.server`` endpoints with TLS, test doubles
of "some DIRAC-shaped HTTPS service": each records what it received and
answers as a test tells it to, down to hanging up or answering too late.
"""

import datetime
import errno
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from urllib3.exceptions import MaxRetryError, NameResolutionError

from seproxy import __version__
from seproxy.security import pki
from seproxy.transfer import codec, rpc_client
from seproxy.transfer.network_errors import NetworkFailure, classify
from seproxy.transfer.returnvalues import S_ERROR, S_OK
from seproxy.transfer.rpc_client import RPCClient

SERVICE_PATH = "/DataManagement/StorageElementProxy"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SYSTEM_CA_DIR = "/etc/ssl/certs"


# --- a small grid PKI ---------------------------------------------------------


@dataclass
class Grid:
    root: Path
    ca_dir: Path  # hashed, holding the test CA
    foreign_ca_dir: Path  # hashed, holding an unrelated CA only
    ca_bundle: Path  # a PEM bundle with the test CA, for the environment variables
    foreign_bundle: Path
    user: pki.Credential

    def server_tls(self, *, trusting: Path | None = None, mode: ssl.VerifyMode = ssl.CERT_OPTIONAL) -> ssl.SSLContext:
        """The host's TLS context; by default it accepts anonymous clients and users of the test CA."""
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.root / "hostcert.pem", self.root / "hostkey.pem")
        tls.load_verify_locations(cafile=trusting or self.ca_bundle)
        tls.verify_mode = mode
        tls.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        return tls


def pem_file(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path


def install_hashed(cert: x509.Certificate, directory: Path) -> Path:
    """A CA directory holding ``cert`` under OpenSSL's subject-hash name."""
    directory.mkdir()
    pem = pem_file(cert, directory / "incoming.pem")
    name = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(pem)], check=True, capture_output=True, text=True
    ).stdout.strip()
    pem.replace(directory / f"{name}.0")
    return directory


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    ca = pki.make_ca("/DC=org/DC=seproxy-test/CN=Client Test CA")
    foreign = pki.make_ca("/DC=org/CN=Some Other CA")
    pki.issue_host(ca, ["127.0.0.1", "localhost"]).write(root / "hostcert.pem", root / "hostkey.pem")
    return Grid(
        root=root,
        ca_dir=install_hashed(ca.cert, root / "certificates"),
        foreign_ca_dir=install_hashed(foreign.cert, root / "foreign"),
        ca_bundle=pem_file(ca.cert, root / "bundle.pem"),
        foreign_bundle=pem_file(foreign.cert, root / "foreign.pem"),
        user=pki.issue_user(ca, "/DC=org/DC=seproxy-test/CN=Client Test User"),
    )


@pytest.fixture()
def proxy_file(grid, tmp_path):
    path = tmp_path / "x509up"
    pki.issue_proxy(grid.user).write(path)
    return path


@pytest.fixture()
def make_client(grid, proxy_file):
    clients = []

    def make(urls, **options):
        options = {"proxy": str(proxy_file), "ca_dir": str(grid.ca_dir), **options}
        clients.append(RPCClient(urls, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# --- recording HTTPS servers --------------------------------------------------


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    peer_cert: bytes | None
    connection: int


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    declared_length: int | None = None  # a Content-Length that lies, to cut the body off


Responder = Callable[[Call], Answer | None]  # None: hang up without answering


def echo(call: Call) -> Answer:
    result = S_OK({"method": call.form["method"], "args": codec.decode(call.form["args"])})
    return Answer(body=codec.encode(result).encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service
    server: "RecordingServer"

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1
        self.connection_number = self.server.connections

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        call = Call(
            path=self.path,
            headers=dict(self.headers),
            form={name: values[0] for name, values in parse_qs(body.decode()).items()},
            peer_cert=self.connection.getpeercert(binary_form=True),
            connection=self.connection_number,
        )
        self.server.calls.append(call)
        answer = self.server.respond(call)
        if answer is None:
            self.close_connection = True
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(answer.declared_length or len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
        self.close_connection = answer.declared_length is not None

    def log_message(self, *args) -> None:
        pass


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: ssl.SSLContext, respond: Responder) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = tls
        self.respond = respond
        self.calls: list[Call] = []
        self.connections = 0
        self.handshake_errors: list[str] = []
        self.url = f"https://127.0.0.1:{self.server_port}{SERVICE_PATH}"

    def finish_request(self, request, client_address) -> None:
        # The handshake runs in the connection's thread, so a slow or failing
        # client never blocks the others.
        try:
            tls_socket = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            return
        with tls_socket:
            super().finish_request(tls_socket, client_address)

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up are part of the tests


@pytest.fixture()
def serve(grid):
    servers = []

    def start(respond: Responder = echo, tls: ssl.SSLContext | None = None) -> RecordingServer:
        server = RecordingServer(tls or grid.server_tls(), respond)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def closed_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}{SERVICE_PATH}"


@pytest.fixture()
def silent_listener():
    """A port that completes TCP handshakes (in its backlog) but never speaks TLS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def pending_connections(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            sock.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


# --- trust: the grid CA directory, and nothing else ---------------------------


def test_the_environment_trap_is_real(grid, serve, monkeypatch):
    """A plain Session's verify loses to REQUESTS_CA_BUNDLE: why the client overrides it."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
    session = requests.Session()
    session.verify = str(grid.ca_dir)
    with session, pytest.raises(requests.exceptions.SSLError):
        session.post(serve().url, data={"method": "ping", "args": "[]"}, timeout=10)


def test_verifies_against_the_ca_dir_despite_the_environment(make_client, serve, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)
    monkeypatch.setenv("SSL_CERT_DIR", SYSTEM_CA_DIR)
    assert make_client(serve().url).ping() == S_OK({"method": "ping", "args": []})


def test_trusts_nothing_but_the_ca_dir(grid, make_client, serve, monkeypatch):
    # The environment would trust the server; the configured directory does not.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(grid.ca_bundle))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(grid.ca_bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(grid.ca_dir))
    server = serve()
    result = make_client(server.url, ca_dir=str(grid.foreign_ca_dir)).ping()
    assert result["OK"] is False
    assert result["Errno"] == errno.ECONNABORTED
    assert f"cannot connect to {server.url}: certificate verify failed" in result["Message"]
    assert server.calls == []


# --- what goes on the wire ----------------------------------------------------


def test_a_call_is_a_dirac_form_post(make_client, serve):
    server = serve()
    when = datetime.datetime(2024, 5, 17, 12, 30, 5)
    result = make_client(server.url).prepareFile("SE-1", "/lhcb/file", (1, 2), when, b"\x00\xff")
    assert result == S_OK({"method": "prepareFile", "args": ["SE-1", "/lhcb/file", [1, 2], when, b"\x00\xff"]})
    (call,) = server.calls
    assert call.path == SERVICE_PATH
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.headers["Accept"] == "application/json"
    assert call.headers["User-Agent"] == f"seproxy-client/{__version__} python-requests/{requests.__version__}"
    assert call.form == {
        "method": "prepareFile",
        "args": codec.encode(["SE-1", "/lhcb/file", [1, 2], when, b"\x00\xff"]),
        "clientVO": "unknown",
        "clientSetup": "None",
    }


def test_vo_setup_and_extra_credentials_travel_in_the_form(make_client, serve):
    server = serve()
    client = make_client(server.url, vo="lhcb", setup="LHCb-Production", extra_credentials=["/DN", "group"])
    assert client.executeRPC("echo", "x")["OK"]
    assert server.calls[0].form == {
        "method": "echo",
        "args": '["x"]',
        "clientVO": "lhcb",
        "clientSetup": "LHCb-Production",
        "extraCredentials": '["/DN","group"]',
    }


def test_private_names_are_not_remote_methods(make_client, serve):
    client = make_client(serve().url)
    for name in ("_secret", "__deepcopy__"):
        with pytest.raises(AttributeError):
            getattr(client, name)


def test_arguments_json_cannot_carry_are_an_error_not_a_call(make_client, serve):
    server = serve()
    result = make_client(server.url).echo(object())
    assert result["Errno"] == errno.EINVAL and "cannot send the arguments of echo" in result["Message"]
    assert server.calls == []


def test_calls_share_one_kept_alive_connection(make_client, serve):
    server = serve()
    client = make_client(server.url)
    assert client.ping()["OK"] and client.ping()["OK"]
    assert [call.connection for call in server.calls] == [1, 1]


def test_urls_must_be_https_service_urls():
    for bad in ("", "http://host:1/A/B", "host:1/A/B", "https://host:99999/A/B", ["https://ok:1/A/B", "ftp://x/A/B"]):
        with pytest.raises(ValueError):
            RPCClient(bad)


# --- the client certificate, renewed during a long job ------------------------


@pytest.mark.parametrize("renewal", ["replaced", "rewritten in place"])
def test_a_renewed_proxy_is_presented_on_the_next_call(renewal, grid, make_client, serve, proxy_file, tmp_path):
    server = serve()
    client = make_client(server.url)
    first = pki.Credential.read(proxy_file)
    assert client.ping()["OK"]

    renewed = pki.issue_proxy(grid.user)
    if renewal == "replaced":
        renewed.write(proxy_file)
    else:
        renewed.write(tmp_path / "staging")
        stat = proxy_file.stat()
        proxy_file.write_bytes((tmp_path / "staging").read_bytes())
        # A real renewal comes hours later; make that visible however coarse the file system clock.
        os.utime(proxy_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert client.ping()["OK"]

    presented = [call.peer_cert for call in server.calls]
    assert presented == [first.cert.public_bytes(Encoding.DER), renewed.cert.public_bytes(Encoding.DER)]
    assert [call.connection for call in server.calls] == [1, 2]


def test_a_vanished_proxy_is_an_error_without_a_call(make_client, serve, proxy_file):
    server = serve()
    client = make_client(server.url)
    proxy_file.unlink()
    result = client.ping()
    assert result["Errno"] == errno.ENOENT and str(proxy_file) in result["Message"]
    assert server.calls == []


# --- failover, and when not to fail over --------------------------------------


def test_fails_over_from_a_closed_port(make_client, serve, closed_url):
    server = serve()
    assert make_client(f"{closed_url}, {server.url}").ping()["OK"]  # DIRAC's comma-separated form
    assert len(server.calls) == 1


def test_every_failed_url_is_named_with_its_reason(grid, make_client, serve, closed_url):
    server = serve()
    result = make_client([closed_url, server.url], ca_dir=str(grid.foreign_ca_dir)).ping()
    assert result["OK"] is False
    assert (
        f"all 2 service URLs failed: {closed_url}: connection refused; "
        f"{server.url}: certificate verify failed"
    ) in result["Message"]


def test_a_tls_handshake_timeout_fails_over_and_later_calls_start_where_it_worked(make_client, serve, silent_listener):
    server = serve()
    silent_url = f"https://127.0.0.1:{silent_listener.getsockname()[1]}{SERVICE_PATH}"
    client = make_client([silent_url, server.url], connect_timeout=0.3)
    assert client.ping()["OK"]
    assert pending_connections(silent_listener) == 3  # the first try and two connect retries
    assert client.ping()["OK"]
    assert pending_connections(silent_listener) == 0
    assert len(server.calls) == 2


def test_a_name_that_does_not_resolve_is_a_failure_to_connect():
    # Built as urllib3 and requests nest it, since the tests stay off DNS.
    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    exc = requests.ConnectionError(MaxRetryError(None, "/X/Y", NameResolutionError("nowhere.invalid", None, lookup)))
    assert classify(exc) == NetworkFailure(errno.EHOSTUNREACH, "cannot resolve the host name", False)


def test_a_server_refusing_the_client_certificate_never_ran_the_call(grid, make_client, serve):
    refusing = serve(tls=grid.server_tls(trusting=grid.foreign_bundle, mode=ssl.CERT_REQUIRED))
    other = serve()
    assert make_client([refusing.url, other.url]).ping()["OK"]
    assert (len(refusing.calls), len(other.calls)) == (0, 1)
    assert refusing.handshake_errors


def test_randomize_shuffles_the_urls(make_client, serve, monkeypatch):
    first, second = serve(), serve()
    monkeypatch.setattr(rpc_client.random, "shuffle", list.reverse)
    client = make_client([first.url, second.url], randomize=True)
    assert client.ping()["OK"] and client.ping()["OK"]
    assert (len(first.calls), len(second.calls)) == (0, 2)


def test_a_hang_up_after_the_request_may_have_executed_and_is_not_sent_elsewhere(make_client, serve):
    hangs_up, other = serve(lambda call: None), serve()
    result = make_client([hangs_up.url, other.url]).ping()
    assert result["OK"] is False and result["Errno"] == errno.ECONNRESET
    assert f"{hangs_up.url}: connection lost" in result["Message"]
    assert "the call may have been executed by the server" in result["Message"]
    assert (len(hangs_up.calls), len(other.calls)) == (1, 0)


def test_no_answer_in_time_may_have_executed_and_is_not_sent_elsewhere(make_client, serve):
    released = threading.Event()
    slow, other = serve(lambda call: released.wait(10) and echo(call)), serve()
    try:
        result = make_client([slow.url, other.url], timeout=0.3).ping()
    finally:
        released.set()
    assert result["OK"] is False and result["Errno"] == errno.ETIMEDOUT
    assert "the call may have been executed by the server" in result["Message"]
    assert (len(slow.calls), len(other.calls)) == (1, 0)


def test_a_cut_off_answer_may_have_executed(make_client, serve):
    server = serve(lambda call: Answer(body=b'{"OK": true, "Va', declared_length=100))
    result = make_client(server.url).ping()
    assert result["Errno"] == errno.ECONNRESET
    assert f"{server.url}: answer cut off" in result["Message"]
    assert "the call may have been executed by the server" in result["Message"]


# --- what the server answered -------------------------------------------------


def test_a_json_error_body_comes_back_as_it_is(make_client, serve):
    refusal = S_ERROR(errno.EPERM, "ping needs the Admin property")
    server = serve(lambda call: Answer(403, codec.encode(refusal).encode()))
    assert make_client(server.url).ping() == refusal


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        (Answer(401, b""), errno.EACCES, "401 Unauthorized"),
        (Answer(403, b"<html>Forbidden</html>", "text/html"), errno.EACCES, "403 Forbidden"),
        (Answer(501, b"not here", "text/plain"), errno.ENOSYS, "501 Not Implemented"),
        (Answer(500, b"<html><body>Traceback</body></html>", "text/html"), errno.EIO, "500 Internal Server Error"),
        (Answer(302, b""), errno.EIO, "302 Found"),
    ],
)
def test_an_error_status_without_a_dirac_body(answer, code, words, make_client, serve):
    server = serve(lambda call: answer)
    result = make_client(server.url).ping()
    assert result["OK"] is False and result["Errno"] == code
    assert words in result["Message"] and server.url in result["Message"]
    assert "Traceback" not in result["Message"]


@pytest.mark.parametrize("body", [b"<html>hello</html>", b'["OK", true]', b'{"OK": true}'])
def test_an_answer_that_is_not_a_dirac_result(body, make_client, serve):
    server = serve(lambda call: Answer(200, body))
    result = make_client(server.url).ping()
    assert result["Errno"] == errno.EPROTO
    assert f"{server.url} answered something that is not a DIRAC result" in result["Message"]
