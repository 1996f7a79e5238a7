"""Issuing credentials, the hashed CA directory, and the development credentials.

OpenSSL is the reference throughout: the hashes must be the ones it looks
for, and the files must be ones it (and Python's ssl) will load.
"""

from __future__ import annotations

import datetime
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from seproxy.security.cadir import crl_issuer_hash, install_ca, install_crl, subject_hash
from seproxy.security.devcreds import DEV_USER_DN, ensure_dev_credentials
from seproxy.security.pki import Credential, issue_crl, issue_host, issue_proxy, issue_user, make_ca
from seproxy.security.x509 import PROXY_CERT_INFO, dn_string

# Written by cryptography: C as PrintableString, DC and emailAddress as
# IA5String, the rest as UTF8String.
DNS = [
    "/DC=org/DC=example/CN=Alice",
    "/DC=ORG/DC=Example/OU=People/CN=  Alice   SMITH  ",
    "/C=DE/O=GridKa/OU=Steinbuch Centre for Computing/CN=Jürgen Müller",
    "/DC=org/DC=example/OU=people+CN=Alice",
    "/DC=org/CN=zeta+CN=Alpha+OU=Mid",
    "/DC=org/DC=example/CN=Alice/emailAddress=Alice.Smith@Example.ORG",
    "/C=JP/O=東京大学/CN=山田 太郎",
    "/O=Tabs\tand\nnew\r\nlines/CN=a \t\v\f b",
    "/DC=ch/DC=cern/OU=computers/CN=host/lxplus.cern.ch",
    "/C=CH/ST=Geneva/L=Meyrin/O=CERN/OU=IT/CN=Name",
    "/DC=org/1.2.3.4.5=Custom VALUE/CN=x",
    "/DC=org/UID=Alice/serialNumber=AB 12",
    "/CN=ÀÉÎ ÕÜ ß àéîõü",
    "/CN=Non\u00a0Breaking\u00a0Space   END",
]
# Written by OpenSSL with string_mask=default: PrintableString, T61String
# (Latin-1, which cryptography will not even parse) and BMPString.
OPENSSL_SUBJECTS = [
    "/C=DE/O=Jürgen  Ökö/CN=Привет   МИР/CN=PLAIN  Text",
    "/DC=org/DC=Example/CN=Mixed Case+OU=Multi  Valued",
    "/O=  Leading and trailing  /CN=é",
]


def openssl(*args: str, stdin: bytes | None = None) -> str:
    """Run the openssl CLI; a missing binary fails the test, as it must."""
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True)
    return done.stdout.decode().strip()


@pytest.mark.parametrize("dn", DNS)
def test_subject_hash_matches_openssl(pki, dn):
    cert = issue_user(pki.ca, dn).cert
    assert subject_hash(cert) == openssl("x509", "-noout", "-subject_hash", stdin=cert.public_bytes(Encoding.PEM))


@pytest.mark.parametrize("subject", OPENSSL_SUBJECTS)
def test_subject_hash_matches_openssl_on_its_own_encodings(tmp_path, subject):
    config = tmp_path / "req.cnf"
    config.write_text("[req]\ndistinguished_name = dn\nstring_mask = default\n[dn]\n")
    pem = tmp_path / "cert.pem"
    openssl(
        "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
        "-config", str(config), "-utf8", "-multivalue-rdn", "-subj", subject, "-days", "1", "-out", str(pem),
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    assert subject_hash(cert) == openssl("x509", "-noout", "-subject_hash", "-in", str(pem))


def test_crl_hash_matches_openssl(pki):
    crl = issue_crl(pki.ca)
    assert crl_issuer_hash(crl) == openssl("crl", "-noout", "-hash", stdin=crl.public_bytes(Encoding.PEM))
    assert crl_issuer_hash(crl) == subject_hash(pki.ca.cert)


def test_install_ca_is_idempotent_and_counts_up_on_collision(tmp_path):
    first, second = make_ca("/DC=org/CN=Twin CA"), make_ca("/DC=org/CN=Twin CA")
    path = install_ca(tmp_path, first.cert)
    assert path.name == f"{subject_hash(first.cert)}.0"
    assert install_ca(tmp_path, first.cert) == path
    assert install_ca(tmp_path, second.cert).name == f"{subject_hash(first.cert)}.1"
    assert install_ca(tmp_path, second.cert).name.endswith(".1")
    assert x509.load_pem_x509_certificate(path.read_bytes()) == first.cert
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name[:-1] + "1"]


def test_install_crl_replaces_the_issuers_older_crl(pki, tmp_path):
    old, new = issue_crl(pki.ca), issue_crl(pki.ca, [pki.ca.cert])
    path = install_crl(tmp_path, old)
    assert path.name == f"{subject_hash(pki.ca.cert)}.r0"
    assert install_crl(tmp_path, new) == path
    assert x509.load_pem_x509_crl(path.read_bytes()) == new


def test_proxy_follows_rfc3820(pki):
    user = issue_user(pki.ca, "/DC=org/DC=seproxy-test/CN=Proxy Maker")
    proxy = issue_proxy(user, lifetime=datetime.timedelta(hours=12))
    assert proxy.cert.issuer == user.cert.subject
    assert dn_string(proxy.cert.subject) == f"{user.dn}/CN={proxy.cert.serial_number}"
    assert proxy.cert.extensions.get_extension_for_oid(PROXY_CERT_INFO).critical
    usage = proxy.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert proxy.key.key_size == 2048 and proxy.key.public_key() != user.key.public_key()
    lifetime = proxy.cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(hours=11) < lifetime <= datetime.timedelta(hours=12)
    assert proxy.chain == [user.cert]
    assert issue_proxy(proxy).chain == [proxy.cert, user.cert]


def test_host_certificate_names(pki):
    host = issue_host(pki.ca, ["se.example.org", "127.0.0.1", "::1"])
    names = host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["se.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert host.dn == "/CN=se.example.org"


@pytest.mark.parametrize("name", ["proxy", "limited_proxy", "group_proxy", "proxy_of_proxy"])
def test_proxy_file_works_with_openssl_and_python(pki, name):
    path: Path = getattr(pki, name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [line for line in path.read_text().splitlines() if line.startswith("-----BEGIN")][:2] == [
        "-----BEGIN CERTIFICATE-----",
        "-----BEGIN RSA PRIVATE KEY-----",
    ]
    verify = ["verify", "-allow_proxy_certs", "-purpose", "sslclient", "-CApath", str(pki.ca_dir)]
    assert openssl(*verify, "-untrusted", str(path), str(path)) == f"{path}: OK"
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(path)


def test_credential_files(pki, tmp_path):
    user = Credential.read(pki.user_cert, pki.user_key)
    assert stat.S_IMODE(pki.user_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.user_cert.stat().st_mode) == 0o644
    proxy = Credential.read(pki.proxy_of_proxy)
    assert proxy.chain[1] == user.cert and proxy.dn.startswith(pki.user_dn + "/CN=")
    proxy.write(tmp_path / "copy.pem")
    assert (tmp_path / "copy.pem").read_bytes() == pki.proxy_of_proxy.read_bytes()


# --- development credentials -------------------------------------------------


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.rglob("*") if p.is_file()}


def test_dev_credentials_are_created_and_then_reused(tmp_path):
    creds = ensure_dev_credentials(tmp_path / "dev")
    assert stat.S_IMODE(creds.directory.stat().st_mode) == 0o700
    for key in (creds.host_key, creds.user_key, creds.proxy):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert creds.user_dn == DEV_USER_DN
    verify = ["verify", "-allow_proxy_certs", "-CApath", str(creds.ca_dir)]
    assert openssl(*verify, str(creds.host_cert)).endswith("OK")
    assert openssl(*verify, "-untrusted", str(creds.proxy), str(creds.proxy)).endswith("OK")
    proxy = Credential.read(creds.proxy)
    assert proxy.cert.not_valid_after_utc - proxy.cert.not_valid_before_utc > datetime.timedelta(days=7)

    before = snapshot(creds.directory)
    assert ensure_dev_credentials(tmp_path / "dev") == creds
    assert snapshot(creds.directory) == before


def test_dev_credentials_renew_an_expiring_proxy_only(tmp_path):
    creds = ensure_dev_credentials(tmp_path)
    user = Credential.read(creds.user_cert, creds.user_key)
    issue_proxy(user, lifetime=datetime.timedelta(hours=6)).write(creds.proxy)
    before = snapshot(tmp_path)
    ensure_dev_credentials(tmp_path)
    after = snapshot(tmp_path)
    assert {name for name in after if after[name] != before[name]} == {"proxy.pem"}
    left = Credential.read(creds.proxy).cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=6)


def test_dev_credentials_start_over_without_their_ca(tmp_path):
    creds = ensure_dev_credentials(tmp_path)
    old_user = creds.user_cert.read_bytes()
    (tmp_path / "ca-key.pem").unlink()
    ensure_dev_credentials(tmp_path)
    assert creds.user_cert.read_bytes() != old_user
    assert len(list(creds.ca_dir.iterdir())) == 1  # the old CA is trusted no more
    assert openssl("verify", "-allow_proxy_certs", "-CApath", str(creds.ca_dir), "-untrusted", str(creds.proxy), str(creds.proxy)).endswith("OK")


def test_dev_credentials_follow_new_host_names(tmp_path):
    creds = ensure_dev_credentials(tmp_path, ["localhost"])
    ensure_dev_credentials(tmp_path, ["localhost", "se.example.org"])
    host = x509.load_pem_x509_certificate(creds.host_cert.read_bytes())
    names = host.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["localhost", "se.example.org"]


def test_dev_credentials_from_concurrent_processes(tmp_path):
    code = "import sys; from pathlib import Path; from seproxy.security.devcreds import ensure_dev_credentials as e; e(Path(sys.argv[1]))"
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert [run.wait(timeout=60) for run in runs] == [0, 0, 0]
    creds = ensure_dev_credentials(tmp_path)
    verify = ["verify", "-allow_proxy_certs", "-CApath", str(creds.ca_dir)]
    assert openssl(*verify, str(creds.host_cert)).endswith("OK")
    assert openssl(*verify, str(creds.user_cert)).endswith("OK")
    assert len(list(creds.ca_dir.iterdir())) == 1
