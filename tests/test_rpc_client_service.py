"""The RPC client against a real seproxy service: credentials, failover, errors."""

import datetime
import errno

import pytest
from fixtures.service import free_port

from seproxy.transfer import RPCClient, returnValueOrRaise


@pytest.fixture()
def grid_env(pki, monkeypatch):
    """A grid user's environment: proxy and CA directory found through the usual variables."""
    monkeypatch.setenv("X509_USER_PROXY", str(pki.proxy))
    monkeypatch.setenv("X509_CERT_DIR", str(pki.ca_dir))


def test_whoami_with_credentials_from_the_environment(service, pki, grid_env):
    with RPCClient(service.url) as client:
        who = returnValueOrRaise(client.whoami())
    assert who["DN"] == pki.user_dn and who["isProxy"] is True


def test_explicit_certificate(service, pki, monkeypatch):
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    client = RPCClient(service.url, cert=str(pki.admin_cert), key=str(pki.admin_key), ca_dir=str(pki.ca_dir))
    assert returnValueOrRaise(client.whoami())["username"] == "boss"


def test_codec_types_survive_the_round_trip(service, grid_env):
    payload = [datetime.datetime(2026, 11, 21, 12, 0, 1), datetime.date(2026, 11, 21), b"\x01\x02", (1, "a")]
    result = RPCClient(service.url).echo(payload)
    assert result["OK"], result
    assert result["Value"] == [payload[0], payload[1], payload[2], [1, "a"]]


def test_failover_past_a_dead_url(service, grid_env):
    dead = f"https://localhost:{free_port()}/DataManagement/StorageElementProxy"
    client = RPCClient([dead, service.url])
    assert returnValueOrRaise(client.ping())["name"] == "DataManagement/StorageElementProxy"


def test_every_url_dead_lists_each_failure(grid_env):
    urls = [f"https://localhost:{free_port()}/DataManagement/StorageElementProxy" for _ in range(2)]
    result = RPCClient(urls, connect_timeout=5).ping()
    assert result["OK"] is False
    assert result["Errno"] == errno.ECONNREFUSED
    for url in urls:
        assert url in result["Message"]


def test_server_errors_keep_their_errno(service, grid_env):
    unknown = RPCClient(service.url).noSuchMethod()
    assert unknown["OK"] is False and unknown["Errno"] == errno.ENOSYS
    wrong = RPCClient(service.url).echo(1, 2)
    assert wrong["OK"] is False and wrong["Errno"] == errno.EINVAL and "wrong number of arguments" in wrong["Message"]


def test_refused_certificate_is_an_error_not_an_exception(service, pki, monkeypatch):
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    client = RPCClient(service.url, cert=str(pki.expired_cert), key=str(pki.expired_key), ca_dir=str(pki.ca_dir))
    result = client.ping()
    assert result["OK"] is False and service.url in result["Message"]
