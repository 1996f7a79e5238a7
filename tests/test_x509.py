"""Peer identity: from certificate chains, and from real TLS handshakes on loopback."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fixtures.handshake import server_sees

from seproxy.security.cadir import install_crl
from seproxy.security.pki import Credential, issue_crl, issue_proxy, issue_user
from seproxy.security.tls import client_context, server_context
from seproxy.security.x509 import dn_string, identity_from_chain, parse_dn, peer_chain_der

HOUR = datetime.timedelta(hours=1)


def chain_der(credential: Credential, root: Credential) -> list[bytes]:
    """What OpenSSL reports after verifying ``credential``: leaf first, root last."""
    return [cert.public_bytes(Encoding.DER) for cert in [credential.cert, *credential.chain, root.cert]]


@pytest.fixture(scope="module")
def user(pki) -> Credential:
    return Credential.read(pki.user_cert, pki.user_key)


def test_plain_user_certificate(pki, user):
    identity = identity_from_chain(chain_der(user, pki.ca))
    assert identity.dn == identity.subject == pki.user_dn
    assert identity.issuer == pki.ca.dn
    assert not identity.is_proxy and not identity.is_limited_proxy
    assert identity.dirac_group is None
    assert identity.not_after == user.cert.not_valid_after_utc


def test_rfc3820_proxy(pki, user):
    proxy = issue_proxy(user, lifetime=2 * HOUR)
    identity = identity_from_chain(chain_der(proxy, pki.ca))
    assert identity.dn == pki.user_dn
    assert identity.subject == dn_string(proxy.cert.subject) == f"{pki.user_dn}/CN={proxy.cert.serial_number}"
    assert identity.issuer == pki.user_dn
    assert identity.is_proxy and not identity.is_limited_proxy
    assert identity.not_after == proxy.cert.not_valid_after_utc
    assert 2 * 3600 - 60 <= identity.seconds_left() <= 2 * 3600


def test_limited_proxy_limits_the_proxies_issued_from_it(pki, user):
    limited = issue_proxy(user, limited=True)
    assert identity_from_chain(chain_der(limited, pki.ca)).is_limited_proxy
    # A full proxy of a limited proxy is still limited.
    identity = identity_from_chain(chain_der(issue_proxy(limited), pki.ca))
    assert identity.is_limited_proxy and identity.dn == pki.user_dn


def test_proxy_of_proxy(pki):
    proxy = Credential.read(pki.proxy_of_proxy)
    identity = identity_from_chain(chain_der(proxy, pki.ca))
    assert identity.dn == pki.user_dn
    assert identity.issuer == dn_string(proxy.chain[0].subject)
    assert identity.is_proxy
    assert len(identity.subject.split("/CN=")) == 4  # Test User, proxy, proxy


def test_dirac_group_comes_from_the_leaf_most_proxy_carrying_it(pki, user):
    grouped = issue_proxy(user, dirac_group="lab_user")
    assert identity_from_chain(chain_der(grouped, pki.ca)).dirac_group == "lab_user"
    regrouped = issue_proxy(grouped, dirac_group="lab_admin")
    assert identity_from_chain(chain_der(regrouped, pki.ca)).dirac_group == "lab_admin"
    assert identity_from_chain(chain_der(issue_proxy(grouped), pki.ca)).dirac_group == "lab_user"


def test_not_after_is_the_earliest_of_proxy_and_user(pki):
    short_user = issue_user(pki.ca, "/DC=org/DC=seproxy-test/CN=Short", days=1)
    # The proxy asks for more than the user certificate has left.
    proxy = issue_proxy(short_user, lifetime=datetime.timedelta(days=3))
    identity = identity_from_chain(chain_der(proxy, pki.ca))
    assert identity.not_after == short_user.cert.not_valid_after_utc
    assert identity.seconds_left(identity.not_after + HOUR) == 0
    assert identity.seconds_left(identity.not_after - HOUR) == 3600


def test_nonsense_chains_are_refused_clearly(pki, user):
    with pytest.raises(ValueError, match="no certificate"):
        identity_from_chain([])
    with pytest.raises(ValueError, match="certificate 0 of the chain"):
        identity_from_chain([b"not a certificate"])
    proxy = issue_proxy(user)
    # A proxy without the certificate that issued it.
    with pytest.raises(ValueError, match=r"certificate 0 of the chain: .*issuer"):
        identity_from_chain([proxy.cert.public_bytes(Encoding.DER), pki.ca.cert.public_bytes(Encoding.DER)])


@pytest.mark.parametrize(
    "dn",
    [
        "/DC=org/DC=example/CN=Alice",
        "/C=DE/ST=Baden-Württemberg/L=Karlsruhe/O=KIT/OU=SCC/CN=Jürgen Müller/emailAddress=j.m@example.org",
        "/DC=ch/DC=cern/OU=computers/CN=host/se.cern.ch",
        "/DC=org/OU=people+CN=Alice/UID=alice/serialNumber=42/1.2.3.4=custom",
    ],
)
def test_dn_round_trip(dn):
    assert dn_string(parse_dn(dn)) == dn


@pytest.mark.parametrize("text", ["", "DC=org/CN=x", "/", "/CN=", "/C=Germany", "/XX=y"])
def test_parse_dn_refuses(text):
    with pytest.raises(ValueError):
        parse_dn(text)


# --- real handshakes -------------------------------------------------------


@pytest.fixture(scope="module")
def server(pki) -> ssl.SSLContext:
    return server_context(pki.host_cert, pki.host_key, pki.ca_dir)


@pytest.mark.parametrize(
    "credential, limited, group",
    [
        ("user", False, None),
        ("proxy", False, None),
        ("limited_proxy", True, None),
        ("group_proxy", False, "lab_admin"),
        ("proxy_of_proxy", False, None),
    ],
)
def test_handshake_identifies_the_user(pki, server, credential, limited, group):
    if credential == "user":
        client = client_context(pki.ca_dir, pki.user_cert, pki.user_key)
    else:
        client = client_context(pki.ca_dir, getattr(pki, credential))  # one file: cert, key, chain
    seen = server_sees(server, client)
    assert isinstance(seen, list), seen
    identity = identity_from_chain(seen)
    assert (identity.dn, identity.is_limited_proxy, identity.dirac_group) == (pki.user_dn, limited, group)
    assert identity.is_proxy == (credential != "user")
    assert dn_string(x509.load_der_x509_certificate(seen[-1]).subject) == pki.ca.dn


@pytest.mark.parametrize("min_version", ["TLSv1.2", "TLSv1.3"])
def test_handshake_without_client_certificate(pki, min_version):
    server = server_context(pki.host_cert, pki.host_key, pki.ca_dir, min_version=min_version)
    assert server_sees(server, client_context(pki.ca_dir)) == []


@pytest.mark.parametrize(
    "cert, key, reason",
    [
        ("expired_cert", "expired_key", "certificate has expired"),
        ("foreign_cert", "foreign_key", "unable to get local issuer certificate"),
    ],
)
def test_handshake_refuses(pki, server, cert, key, reason):
    seen = server_sees(server, client_context(pki.ca_dir, getattr(pki, cert), getattr(pki, key)))
    assert isinstance(seen, ssl.SSLCertVerificationError)
    assert reason in seen.verify_message


def test_crl_check_refuses_a_revoked_user_but_not_others(pki, tmp_path):
    ca_dir = tmp_path / "certificates"
    ca_dir.mkdir()
    for entry in pki.ca_dir.iterdir():
        (ca_dir / entry.name).write_bytes(entry.read_bytes())
    revoked_cert, revoked_key = pki.issue_user("/DC=org/DC=seproxy-test/OU=people/CN=Revoked")
    install_crl(ca_dir, issue_crl(pki.ca, [x509.load_pem_x509_certificate(revoked_cert.read_bytes())]))
    server = server_context(pki.host_cert, pki.host_key, ca_dir, crl_check=True)

    seen = server_sees(server, client_context(ca_dir, revoked_cert, revoked_key))
    assert isinstance(seen, ssl.SSLCertVerificationError) and "revoked" in seen.verify_message
    # Proxies have no CRL of their own; OpenSSL checks their user certificate.
    seen = server_sees(server, client_context(ca_dir, pki.proxy))
    assert isinstance(seen, list) and identity_from_chain(seen).dn == pki.user_dn


def test_server_context_names_the_faulty_file(pki, tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(FileNotFoundError, match=r"missing\.pem"):
        server_context(missing, pki.host_key, pki.ca_dir)
    with pytest.raises(ValueError, match=f"{pki.user_key}.*does not belong.*{pki.host_cert}"):
        server_context(pki.host_cert, pki.user_key, pki.ca_dir)
    with pytest.raises(ValueError, match="not a PEM certificate"):
        server_context(pki.host_key, pki.host_key, pki.ca_dir)
    with pytest.raises(FileNotFoundError, match="CA directory"):
        server_context(pki.host_cert, pki.host_key, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="min_version"):
        server_context(pki.host_cert, pki.host_key, pki.ca_dir, min_version="SSLv3")


def test_server_context_settings(pki):
    context = server_context(pki.host_cert, pki.host_key, pki.ca_dir, crl_check=True)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.verify_flags & ssl.VERIFY_ALLOW_PROXY_CERTS
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


def test_peer_chain_of_an_ssl_object(pki, server):
    """asyncio speaks TLS through SSLObject and memory buffers rather than SSLSocket."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client = client_context(pki.ca_dir, pki.group_proxy)
    client_side = client.wrap_bio(client_in, client_out, server_hostname="localhost")
    for _ in range(5):
        for end in (client_side, server_side):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    assert identity_from_chain(peer_chain_der(server_side)).dirac_group == "lab_admin"
