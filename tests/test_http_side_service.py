"""The side server as part of the service: HTTPS, the embedded default, off, start and stop."""

import os
import socket
import stat
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.http_side import curl, multipart_parts
from fixtures.service import ServiceThread

from seproxy.defaults import embedded_settings
from seproxy.http_side.signing import load_secret
from seproxy.proxy import StorageElementProxyHandler
from seproxy.security.devcreds import ensure_dev_credentials
from seproxy.transfer import RPCClient, returnValueOrRaise


def test_https_side_server(pki, start_http_service, tmp_path):
    service = start_http_service(tls=True)
    data = os.urandom(3 * 1024 * 1024 + 5)
    url = service.url("/lab/tls.dat", data)
    assert url.startswith("https://localhost:")
    curl("--fail", "--capath", str(pki.ca_dir), "-o", str(tmp_path / "out"), url)
    assert (tmp_path / "out").read_bytes() == data
    ranged = requests.get(url, headers={"Range": "bytes=1000-"}, verify=str(pki.ca_dir), timeout=30)
    assert ranged.status_code == 206 and ranged.content == data[1000:]
    # Through TLS, small ranges and their part heads go out joined into one write.
    vectored = requests.get(url, headers={"Range": "bytes=0-9,5000-70000,2000000-"}, verify=str(pki.ca_dir), timeout=30)
    assert vectored.status_code == 206
    assert multipart_parts(vectored.headers["Content-Type"], vectored.content) == [
        (0, 9, len(data), data[:10]), (5000, 70000, len(data), data[5000:70001]), (2000000, len(data) - 1, len(data), data[2000000:]),
    ]  # fmt: skip
    plain_http = curl("http" + url[5:], check=False)
    assert plain_http.returncode != 0 or not plain_http.stdout.endswith(data)


def test_embedded_default_serves_localse_by_lfn(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPROXY_STATE_DIR", str(tmp_path / "state"))
    settings = embedded_settings()
    assert settings.http.enabled and settings.http.port == 9180
    settings.service.port = settings.http.port = settings.metrics.port = 0  # any free ports: tests run beside other services
    local_se = tmp_path / "state" / "storage" / "LocalSE"
    data = os.urandom(10_000)
    (local_se / "vo").mkdir()
    (local_se / "vo" / "a.dat").write_bytes(data)
    with ServiceThread(settings, StorageElementProxyHandler) as running:
        dev = ensure_dev_credentials(tmp_path / "state" / "dev-credentials")
        with RPCClient(running.url, proxy=str(dev.proxy), ca_dir=str(dev.ca_dir)) as client:
            value = returnValueOrRaise(client.prepareFileForHTTP("/vo/a.dat"))
        assert urlsplit(value["HttpURL"]).hostname == "localhost"
        assert requests.get(value["HttpURL"], timeout=10).content == data
    with socket.socket() as probe:  # the side server stopped with the service
        assert probe.connect_ex(("127.0.0.1", urlsplit(value["HttpURL"]).port)) != 0
    secret = tmp_path / "state" / "http-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert load_secret(secret) == secret.read_text().strip().encode(), "the generated secret is kept"


def test_disabled_side_server(service, pki):
    with RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir)) as client:
        result = client.prepareFileForHTTP("/lab/a.dat")
    assert not result["OK"] and "not enabled" in result["Message"]


def test_secret_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s" * 64)
    secret.chmod(0o644)
    with pytest.raises(PermissionError, match="must not be accessible to other users"):
        load_secret(secret)


def test_a_taken_port_stops_the_start_with_a_clear_message(start_http_service):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"http.port: the side server cannot listen on 127.0.0.1:{port}"):
            start_http_service(port=port)


def nice_values(pid: int) -> list[int]:
    """The nice value of each thread of process ``pid`` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    values = []
    for stat_file in os.scandir(f"/proc/{pid}/task"):
        with open(f"{stat_file.path}/stat") as stream:
            values.append(int(stream.read().rsplit(")", 1)[1].split()[16]))
    return values


@pytest.mark.parametrize("niceness", [10, 0])
def test_side_server_threads_yield_the_cpu_to_rpc(start_http_service, niceness):
    service = start_http_service(threads=3, niceness=niceness)
    values = nice_values(service.process.process.pid)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert values.count(base + niceness) == (3 if niceness else len(values)), values
