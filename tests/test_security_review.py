"""The claims of docs/security.md, checked against real TLS, real services and a real log.

Each finding the review fixed has a test here that fails without the fix: the
cipher policy, TLS session resumption (the caller turned anonymous), CRLs and
CAs that change while the service runs, certificates named like pre-RFC
proxies, chains whose identity cannot be read, and the client's token repr.
"""

from __future__ import annotations

import datetime
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fixtures.handshake import server_sees
from fixtures.http_side import SECRET, curl, tool
from fixtures.service import base_config, post_form, rpc_fields, start_service

from seproxy.proxy import StorageElementProxyHandler
from seproxy.rpc.handler import DEFAULT_AUTH
from seproxy.security import der
from seproxy.security import pki as issuing
from seproxy.security.cadir import install_crl, subject_hash
from seproxy.security.pki import Credential
from seproxy.security.tls import client_context, server_context
from seproxy.security.x509 import DIRAC_GROUP, INHERIT_ALL_POLICY, PROXY_CERT_INFO, identity_from_chain
from seproxy.transfer import RPCClient, codec, returnValueOrRaise
from seproxy.transfer.credentials import find_bearer_token

DOC = Path(__file__).parent.parent / "docs" / "security.md"
HOUR = datetime.timedelta(hours=1)
Extension = tuple[x509.ExtensionType, bool]  # (extension, critical)


# -- TLS versions and ciphers ---------------------------------------------------------------------


def s_client(port: int, *options: str) -> tuple[str, str]:
    """What ``openssl s_client`` negotiates with the service: (cipher or "(NONE)", its error output)."""
    done = subprocess.run(
        [tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", *options],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    found = re.search(rb"Cipher is (\S+)", done.stdout)
    return (found.group(1).decode() if found else "(NONE)"), done.stderr.decode(errors="replace")


@pytest.mark.parametrize(
    "options, negotiated",
    [
        (["-tls1_3"], "TLS_AES_256_GCM_SHA384"),
        (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], "ECDHE-RSA-AES128-GCM-SHA256"),
        (["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"], "ECDHE-RSA-CHACHA20-POLY1305"),
    ],
)
def test_strong_tls_is_negotiated(service, options, negotiated):
    assert s_client(service.port, *options)[0] == negotiated


@pytest.mark.parametrize(
    "options, alert",
    [
        # Static RSA key exchange, CBC modes, DHE (a Python server has no DH parameters).
        (["-tls1_2", "-cipher", "AES128-GCM-SHA256"], "alert handshake failure"),
        (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"], "alert handshake failure"),
        (["-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA384"], "alert handshake failure"),
        (["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"], "alert handshake failure"),
        # Without SECLEVEL=0 the client's own security level would refuse TLS 1.1 first.
        (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "alert protocol version"),
    ],
)
def test_weak_tls_is_refused_by_the_service(service, options, alert):
    """The alert comes from the service: a handshake the client gave up on itself has none."""
    cipher, errors = s_client(service.port, *options)
    assert cipher == "(NONE)" and alert in errors, errors


def test_tls12_suites_offered_are_ecdhe_with_aead_only(pki):
    offered = server_context(pki.host_cert, pki.host_key, pki.ca_dir).get_ciphers()
    suites = [suite for suite in offered if suite["protocol"] == "TLSv1.2"]
    assert suites and all(suite["kea"] == "kx-ecdhe" and suite["aead"] for suite in suites), suites


# -- session resumption -----------------------------------------------------------------------------


def test_every_connection_of_a_client_keeps_its_identity(service, pki):
    """curl resumes the TLS session for its second connection; a resumed session has no verified
    chain, so the caller was anonymous there (the service now issues no session tickets)."""
    call = ["--capath", str(pki.ca_dir), "--cert", str(pki.proxy), "-H", "Connection: close",
            "-d", "method=whoami&args=[]", service.url]  # fmt: skip
    answers = curl(*call, "--next", *call).stdout.decode()
    assert re.findall(r'"username":"(\w+)"', answers) == ["tester", "tester"], answers


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_no_session_is_resumed(service, pki, version):
    client = client_context(pki.ca_dir, pki.proxy)
    client.minimum_version = client.maximum_version = version
    session = None
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        with client.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            tls.recv(1)  # TLS 1.3 tickets arrive after the handshake, with the first data
            assert not tls.session_reused
            session = tls.session


# -- certificate and proxy checks at the handshake ------------------------------------------------

SIGNING: Extension = (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
DRAFT_PROXY_INFO = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")  # Globus Toolkit 3, before RFC 3820


def proxy_info(path_length: int | None = None, oid: x509.ObjectIdentifier = PROXY_CERT_INFO) -> Extension:
    """A ProxyCertInfo extension, optionally with a path length constraint."""
    length = der.encode(der.INTEGER, bytes([path_length])) if path_length is not None else b""
    value = der.encode(der.SEQUENCE, length + der.encode(der.SEQUENCE, der.encode_oid(INHERIT_ALL_POLICY)))
    return x509.UnrecognizedExtension(oid, value), True


def below(issuer: Credential, *cns: str) -> x509.Name:
    """The issuer's subject with more CNs, as a proxy's subject is."""
    extra = [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) for cn in cns]
    return x509.Name([*issuer.cert.subject.rdns, *extra])


def signed_by(
    issuer: Credential, subject: x509.Name, *extensions: Extension, hours: tuple[int, int] = (-1, 1)
) -> Credential:
    now = datetime.datetime.now(datetime.UTC)
    return issuing.issue(issuer, subject, extensions, now + hours[0] * HOUR, now + hours[1] * HOUR)


def proxy(
    issuer: Credential, *extensions: Extension, path_length: int | None = None, hours: tuple[int, int] = (-1, 1)
) -> Credential:
    return signed_by(issuer, below(issuer, "12345"), proxy_info(path_length), SIGNING, *extensions, hours=hours)


def not_a_signer(pki) -> Credential:
    """A certificate of the CA whose key usage lacks digitalSignature."""
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    end_entity = (x509.BasicConstraints(ca=False, path_length=None), True)
    return signed_by(pki.ca, below(pki.ca, "no signing"), end_entity, (usage, True))


def the_user(pki) -> Credential:
    return Credential.read(pki.user_cert, pki.user_key)


def the_admin(pki) -> Credential:
    return Credential.read(pki.admin_cert, pki.admin_key)


def not_yet_valid_user(pki) -> Credential:
    return issuing.issue_user(pki.ca, pki.user_dn, not_before=datetime.datetime.now(datetime.UTC) + HOUR)


# What to present, made from the test PKI, and what OpenSSL says about it.
REFUSED = {
    "proxy naming another user": (
        lambda pki: signed_by(the_user(pki), below(the_admin(pki), "1"), proxy_info(), SIGNING),
        "proxy subject name violation",
    ),
    "proxy adding two CNs": (
        lambda pki: signed_by(the_user(pki), below(the_user(pki), "1", "2"), proxy_info(), SIGNING),
        "proxy subject name violation",
    ),
    "proxy beyond its issuer's path length": (
        lambda pki: proxy(proxy(the_user(pki), path_length=0)),
        "proxy path length constraint exceeded",
    ),
    "expired proxy": (lambda pki: proxy(the_user(pki), hours=(-3, -2)), "certificate has expired"),
    "proxy not yet valid": (lambda pki: proxy(the_user(pki), hours=(2, 3)), "certificate is not yet valid"),
    "user certificate not yet valid": (not_yet_valid_user, "certificate is not yet valid"),
    "Globus 2 proxy (CN=proxy, no extension)": (
        lambda pki: signed_by(the_user(pki), below(the_user(pki), "proxy"), SIGNING),
        "invalid CA certificate",
    ),
    "Globus 3 draft proxy": (
        lambda pki: signed_by(the_user(pki), below(the_user(pki), "1"), proxy_info(oid=DRAFT_PROXY_INFO), SIGNING),
        "unhandled critical extension",
    ),
    "proxy of a certificate that may not sign": (lambda pki: proxy(not_a_signer(pki)), "unsuitable certificate purpose"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_chains_are_refused_at_the_handshake(pki, tmp_path, case):
    make, reason = REFUSED[case]
    presented = tmp_path / "presented.pem"
    make(pki).write(presented)  # one file: certificate, key, chain
    seen = server_sees(server_context(pki.host_cert, pki.host_key, pki.ca_dir), client_context(pki.ca_dir, presented))
    assert isinstance(seen, ssl.SSLCertVerificationError), seen
    assert reason in seen.verify_message


def test_a_ca_issued_certificate_named_like_a_legacy_proxy_is_its_own_subject(pki, tmp_path):
    """Read as a pre-RFC proxy, it made its issuer, the CA, the caller."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issuing.issue_user(pki.ca, f"{pki.ca.dn}/CN=proxy").write(cert, key)
    seen = server_sees(server_context(pki.host_cert, pki.host_key, pki.ca_dir), client_context(pki.ca_dir, cert, key))
    assert isinstance(seen, list), seen
    identity = identity_from_chain(seen)
    assert identity.dn == f"{pki.ca.dn}/CN=proxy" and not identity.is_proxy


def test_a_chain_whose_identity_cannot_be_read_is_a_clear_401(service, pki, tmp_path):
    """OpenSSL verifies the chain, but the proxy's DIRAC group is not a string: a 401 that names
    the certificate and the extension, not a 500 with a traceback in the log."""
    group = x509.UnrecognizedExtension(DIRAC_GROUP, der.encode(der.INTEGER, b"\x05"))
    proxy(the_user(pki), (group, False)).write(tmp_path / "proxy.pem")
    response = post_form(service.url, rpc_fields("whoami"), pki, cert=str(tmp_path / "proxy.pem"))
    assert response.status_code == 200, response.text  # a JSON call's refusal: the S_ERROR says 401's why
    message = codec.decode(response.content)["Message"]
    assert "client certificate refused: certificate 0 of the chain" in message and "1.2.42.42" in message


# -- trust that changes while the service runs ----------------------------------------------------


def copied_ca_dir(pki, directory: Path) -> Path:
    ca_dir = directory / "certificates"
    shutil.copytree(pki.ca_dir, ca_dir)
    return ca_dir


def test_a_withdrawn_ca_stops_being_trusted_without_a_restart(pki, tmp_path):
    ca_dir = copied_ca_dir(pki, tmp_path)
    server = server_context(pki.host_cert, pki.host_key, ca_dir)
    client = client_context(pki.ca_dir, pki.proxy)
    assert isinstance(server_sees(server, client), list)
    (ca_dir / f"{subject_hash(pki.ca.cert)}.0").unlink()
    seen = server_sees(server, client)
    assert isinstance(seen, ssl.SSLCertVerificationError) and "local issuer" in seen.verify_message


def test_a_renewed_crl_counts_without_a_restart(pki, tmp_path):
    ca_dir = copied_ca_dir(pki, tmp_path)
    install_crl(ca_dir, issuing.issue_crl(pki.ca))
    config = base_config(pki, tmp_path / "state")
    config["tls"].update(ca_dir=str(ca_dir), crl_check=True)
    service = start_service(tmp_path / "service", config)
    try:
        cert, key = pki.issue_user(f"/DC=org/DC=seproxy-test/OU=people/CN=Revoked {uuid.uuid4().hex[:8]}")

        def whoami(**credentials: str) -> dict:
            with RPCClient(service.url, ca_dir=str(ca_dir), **credentials) as client:
                return client.whoami()

        assert whoami(cert=str(cert), key=str(key))["OK"]
        # As fetch-crl does: the new CRL is renamed into place; no restart, no SIGHUP.
        install_crl(ca_dir, issuing.issue_crl(pki.ca, [x509.load_pem_x509_certificate(cert.read_bytes())]))
        assert not whoami(cert=str(cert), key=str(key))["OK"]
        deadline = time.monotonic() + 10  # the client may only see the connection end: the service says why
        while "certificate revoked" not in service.log():
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.05)
        assert returnValueOrRaise(whoami(proxy=str(pki.proxy)))["username"] == "tester"
    finally:
        service.stop()


def test_sighup_serves_the_new_host_certificate_and_still_checks_clients(pki, tmp_path):
    cert, key = tmp_path / "hostcert.pem", tmp_path / "hostkey.pem"
    issuing.issue_host(pki.ca, ["localhost", "127.0.0.1"]).write(cert, key)
    config = base_config(pki, tmp_path / "state")
    config["tls"].update(host_cert=str(cert), host_key=str(key))
    service = start_service(tmp_path / "service", config)
    try:
        renewed = issuing.issue_host(pki.ca, ["localhost", "127.0.0.1"])
        renewed.write(cert, key)
        service.process.send_signal(signal.SIGHUP)
        served = renewed.cert.public_bytes(serialization.Encoding.DER)
        deadline = time.monotonic() + 10
        while ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", service.port))) != served:
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.1)
        with RPCClient(service.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir)) as client:
            assert returnValueOrRaise(client.whoami())["username"] == "tester"
    finally:
        service.stop()


# -- what the log never holds ---------------------------------------------------------------------


def test_the_log_holds_no_secret_key_token_or_form_body(pki, start_http_service, tmp_path):
    """A real run at DEBUG level: URL signatures, the signing secret, bearer tokens and form
    bodies never reach the log, while the lines that say who did what are there."""
    issuer, audience = "https://iam.review.example/", "https://seproxy.review.example"
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        signing_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def with_tokens(config: dict) -> None:
        config["tokens"] = {"audiences": [audience], "issuers": {"iam": {"issuer": issuer, "keys": [str(public)]}}}

    service = start_http_service(config=with_tokens)
    service.put("/lab/review/log.dat", b"x" * 1000)
    prepared = service.prepare("/lab/review/log.dat")
    key = prepared["HttpKey"]
    signature = key.rsplit(".", 1)[1]
    assert requests.get(prepared["HttpURL"], timeout=10).content == b"x" * 1000
    forged = key.replace(signature, "A" * len(signature))
    assert requests.get(prepared["HttpURL"].replace(key, forged), timeout=10).status_code == 403

    marker = f"form-body-marker-{uuid.uuid4().hex}"
    assert returnValueOrRaise(service.client.echo(marker)) == marker
    now = int(time.time())
    claims = {"iss": issuer, "sub": "nobody-registered", "aud": audience, "iat": now, "exp": now + 600}
    token = jwt.encode(claims, signing_key, algorithm="RS256")
    for bearer in (token, token[:-8] + "AAAAAAAA"):  # verified, then refused
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/x-www-form-urlencoded"}
        form = {"method": "whoami", "args": "[]"}
        requests.post(service.process.url, data=form, headers=headers, verify=str(pki.ca_dir), timeout=10)

    service.wait_for_log("key=- GET status=403")
    service.wait_for_log("method=whoami status=200 outcome=error(errno=13)")  # refused: a token that does not verify
    log = service.log()
    assert f"k1:{key.split('.')[1]} GET status=200" in log and "method=echo" in log and pki.user_dn in log
    for secret in (signature, key, forged, SECRET, token, token.rsplit(".", 1)[1], marker):
        assert secret not in log


def test_a_bearer_token_found_by_the_client_never_shows_in_its_repr(monkeypatch):
    monkeypatch.setenv("BEARER_TOKEN", "eyJ.review-token-value.sig")
    found = find_bearer_token()
    assert found is not None and found.value == "eyJ.review-token-value.sig"
    assert "review-token-value" not in repr(found) and "BEARER_TOKEN" in repr(found)


# -- the authorization table of the review --------------------------------------------------------


def documented_rules() -> dict[str, list[str]]:
    table = DOC.read_text().split("<!-- authorization table -->")[1].split("<!-- end of authorization table -->")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, re.MULTILINE)
    return {method: [word.strip() for word in rule.split(",")] for method, rule in rows}


def test_the_documented_authorization_table_is_the_handlers():
    methods = [name.removeprefix("export_") for name in dir(StorageElementProxyHandler) if name.startswith("export_")]
    declared = {method: list(getattr(StorageElementProxyHandler, f"auth_{method}", DEFAULT_AUTH)) for method in methods}
    assert documented_rules() == declared
