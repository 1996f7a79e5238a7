"""DIRAC's keyword names for client constructors, against a real service.

Code written for DIRAC 9.1's clients passes ``proxyLocation``,
``proxyString``, ``useCertificates``, ``skipCACheck``, ``VO``,
``extraCredentials``, ``setup``, ``timeout`` and ``keepAliveLapse``; each
must mean what it means in DIRAC's ``TornadoBaseClient``.
"""

import os
import shutil

import pytest
from fixtures.service import TEST_ADMIN, TEST_USER, ServiceThread, base_config

from seproxy.rpc.handler import RPCHandler
from seproxy.transfer import S_OK, RPCClient, StorageElementProxyClient, credentials, returnValueOrRaise

GRID_VARIABLES = ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "X509_CERT_DIR", "DIRAC_X509_HOST_CERT",
                  "DIRAC_X509_HOST_KEY", "BEARER_TOKEN", "BEARER_TOKEN_FILE")


@pytest.fixture(autouse=True)
def no_grid_environment(monkeypatch, tmp_path):
    """Only what a test passes counts: no grid variable, no default proxy, host certificate or token."""
    for name in GRID_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(credentials, "PROXY_DIR", str(tmp_path))
    monkeypatch.setattr(credentials, "TOKEN_DIR", str(tmp_path))
    monkeypatch.setattr(credentials, "HOST_CERT_DIR", str(tmp_path / "grid-security"))


class FieldsHandler(RPCHandler):
    """Shows the client fields of the call, which the standard methods do not."""

    auth_fields = ("all",)

    def export_fields(self):
        call = self.call
        return S_OK({"vo": call.client_vo, "setup": call.client_setup, "extra": call.extra_credentials})


@pytest.fixture(scope="module")
def fields_service(pki, tmp_path_factory):
    with ServiceThread(base_config(pki, tmp_path_factory.mktemp("fields") / "state"), FieldsHandler) as running:
        yield running


def whoami(client):
    with client:
        return returnValueOrRaise(client.whoami())["username"]


def test_proxy_location_is_the_proxy_file(service, pki):
    assert whoami(RPCClient(service.url, proxyLocation=str(pki.proxy), ca_dir=str(pki.ca_dir))) == TEST_USER
    same = RPCClient(service.url, proxy=str(pki.proxy), proxyLocation=str(pki.proxy), ca_dir=str(pki.ca_dir))
    assert whoami(same) == TEST_USER
    with pytest.raises(ValueError, match=r"proxy=.* and proxyLocation=.* disagree"):
        RPCClient(service.url, proxy=str(pki.proxy), proxyLocation=str(pki.limited_proxy))


def test_proxy_string_is_the_proxy_itself_in_a_private_file_removed_on_close(service, pki):
    client = StorageElementProxyClient(service.url, proxyString=pki.proxy.read_text(), ca_dir=str(pki.ca_dir))
    written = client.credentials.cert_file
    assert written != str(pki.proxy) and os.stat(written).st_mode & 0o777 == 0o600
    assert whoami(client) == TEST_USER
    assert not os.path.exists(written)
    with pytest.raises(ValueError, match="proxyString is not a proxy"):
        RPCClient(service.url, proxyString="not a proxy")


def test_use_certificates_presents_the_host_certificate(service, pki, monkeypatch, tmp_path):
    # The machine's certificate is whatever is installed there: here the admin's, so that the service knows it.
    monkeypatch.setenv("DIRAC_X509_HOST_CERT", str(pki.admin_cert))
    monkeypatch.setenv("DIRAC_X509_HOST_KEY", str(pki.admin_key))
    assert whoami(RPCClient(service.url, useCertificates=True, ca_dir=str(pki.ca_dir))) == TEST_ADMIN
    # As in DIRAC, a proxy file wins over useCertificates, and useCertificates over a proxyString.
    both = RPCClient(service.url, useCertificates=True, proxyLocation=str(pki.proxy), ca_dir=str(pki.ca_dir))
    assert whoami(both) == TEST_USER
    string = RPCClient(service.url, useCertificates=True, proxyString=pki.proxy.read_text(), ca_dir=str(pki.ca_dir))
    assert whoami(string) == TEST_ADMIN

    monkeypatch.delenv("DIRAC_X509_HOST_CERT")
    monkeypatch.delenv("DIRAC_X509_HOST_KEY")
    with pytest.raises(ValueError, match="no host certificate for useCertificates"):
        RPCClient(service.url, useCertificates=True, ca_dir=str(pki.ca_dir))
    (tmp_path / "grid-security").mkdir()
    shutil.copy(pki.admin_cert, tmp_path / "grid-security" / "hostcert.pem")
    shutil.copy(pki.admin_key, tmp_path / "grid-security" / "hostkey.pem")
    assert whoami(RPCClient(service.url, useCertificates=True, ca_dir=str(pki.ca_dir))) == TEST_ADMIN


def test_skip_ca_check_trusts_any_server(service, pki, tmp_path):
    no_cas = tmp_path / "no-cas"
    no_cas.mkdir()
    checked = RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(no_cas)).ping()
    assert checked["OK"] is False and "certificate verify failed" in checked["Message"]
    unchecked = RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(no_cas), skipCACheck=True)
    assert returnValueOrRaise(unchecked.ping())["name"] == "DataManagement/StorageElementProxy"


def test_vo_setup_extra_credentials_and_keep_alive_lapse(fields_service, pki):
    def fields(**options):
        with RPCClient(fields_service.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir), **options) as client:
            return returnValueOrRaise(client.fields())

    assert fields() == {"vo": "unknown", "setup": "None", "extra": None}
    assert fields(VO="lab", setup="Production", extraCredentials="hosts", keepAliveLapse=150) == {
        "vo": "lab", "setup": "Production", "extra": "hosts"
    }
    assert fields(vo="lab", VO="lab", extra_credentials="hosts")["vo"] == "lab"
    assert fields(VO="", extraCredentials="")["vo"] == "unknown"  # DIRAC sends neither when empty
    with pytest.raises(ValueError, match="vo='a' and VO='b' disagree"):
        RPCClient(fields_service.url, vo="a", VO="b")
