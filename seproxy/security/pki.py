"""Issuing grid credentials: CAs, host and user certificates, RFC 3820 proxies.

The development credentials and the test suite both need a small grid PKI,
and both should exercise the same certificates real clients send (proxies
included), so they share this one implementation instead of fixtures files
or mocks.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from seproxy.security import der
from seproxy.security.x509 import (
    DIRAC_GROUP,
    INHERIT_ALL_POLICY,
    LIMITED_POLICY,
    PROXY_CERT_INFO,
    dn_string,
    parse_dn,
)

KEY_BITS = 2048
# Issued certificates start a little in the past, so that a peer whose clock
# lags behind does not reject a credential made a second ago.
CLOCK_SKEW = datetime.timedelta(minutes=5)

Extensions = Sequence[tuple[x509.ExtensionType, bool]]  # (extension, critical)


@dataclass
class Credential:
    """A certificate, its private key, and the issuers a peer needs to verify it."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    # Issuers above ``cert``, nearest first, without the root CA, which
    # peers take from their own CA directory.
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def dn(self) -> str:
        return dn_string(self.cert.subject)

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        """Save in the layouts grid tools read; without ``key_path`` as one proxy file.

        A proxy file is the certificate, its key, then the chain; whatever
        holds a key is written 0600. Files are replaced whole, never
        rewritten in place, so a concurrent reader sees the old or the new.
        """
        cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        chain_pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.chain)
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        if key_path is None:
            write_file(cert_path, cert_pem + key_pem + chain_pem, 0o600)
        else:
            write_file(key_path, key_pem, 0o600)
            write_file(cert_path, cert_pem + chain_pem, 0o644)

    @classmethod
    def read(cls, cert_path: Path, key_path: Path | None = None) -> Credential:
        """Load what :meth:`write` saved (or any PEM certificate, key and chain)."""
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
        key = serialization.load_pem_private_key((key_path or cert_path).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path or cert_path}: not an RSA private key")
        return cls(certs[0], key, certs[1:])


def write_file(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Put ``data`` at ``path`` in one step, so that no reader ever sees half a file.

    With ``replace=False`` an existing file wins (``FileExistsError``), which
    lets concurrent writers agree on who took a name.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(temp, mode)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    finally:
        if os.path.exists(temp):  # still there after a link or a failure
            os.unlink(temp)


def issue(
    issuer: Credential | None,
    subject: x509.Name,
    extensions: Extensions,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    serial: int | None = None,
) -> Credential:
    """Sign a new key's certificate with ``issuer`` (``None``: self-signed); the building block of the rest."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(signer, hashes.SHA256())
    if issuer is None or _is_root(issuer.cert):
        return Credential(cert, key, [])
    return Credential(cert, key, [issuer.cert, *issuer.chain])


def make_ca(dn: str, *, days: int = 3650) -> Credential:
    """A self-signed root CA."""
    now = _now()
    extensions = [(x509.BasicConstraints(ca=True, path_length=None), True), (_key_usage(ca=True), True)]
    return issue(None, parse_dn(dn), extensions, now - CLOCK_SKEW, now + datetime.timedelta(days=days))


def issue_host(
    ca: Credential, hostnames: Sequence[str], *, dn: str | None = None, days: int = 395
) -> Credential:
    """A host certificate for ``hostnames`` (DNS names or IP addresses), also usable as a client."""
    if not hostnames:
        raise ValueError("a host certificate needs at least one host name")
    alt_names = [alt_name(name) for name in hostnames]
    extensions = [
        *_end_entity_extensions(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        (x509.SubjectAlternativeName(alt_names), False),
    ]
    now = _now()
    subject = parse_dn(dn or f"/CN={hostnames[0]}")
    return issue(ca, subject, extensions, now - CLOCK_SKEW, now + datetime.timedelta(days=days))


def alt_name(hostname: str) -> x509.GeneralName:
    """The subjectAltName entry under which TLS clients look ``hostname`` up."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def issue_user(
    ca: Credential,
    dn: str | x509.Name,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    days: int = 365,
) -> Credential:
    """A user certificate, able to sign proxies (hence digitalSignature)."""
    not_before = not_before or _now() - CLOCK_SKEW
    not_after = not_after or not_before + datetime.timedelta(days=days)
    extensions = _end_entity_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)
    return issue(ca, parse_dn(dn) if isinstance(dn, str) else dn, extensions, not_before, not_after)


def issue_proxy(
    issuer: Credential,
    *,
    limited: bool = False,
    dirac_group: str | None = None,
    lifetime: datetime.timedelta = datetime.timedelta(hours=24),
    not_after: datetime.datetime | None = None,
) -> Credential:
    """An RFC 3820 proxy of ``issuer`` (a user certificate or another proxy), as DIRAC makes them.

    Its lifetime is cut to the issuer's, as ``voms-proxy-init`` does, since
    a proxy is worth nothing once its issuer has expired.
    """
    now = _now()
    not_after = min(not_after or now + lifetime, issuer.cert.not_valid_after_utc)
    serial = x509.random_serial_number()
    proxy_cn = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])
    subject = x509.Name([*issuer.cert.subject.rdns, proxy_cn])
    # ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint (absent: no limit), proxyPolicy SEQUENCE { language } }
    language = der.encode_oid(LIMITED_POLICY if limited else INHERIT_ALL_POLICY)
    proxy_cert_info = der.encode(der.SEQUENCE, der.encode(der.SEQUENCE, language))
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.UnrecognizedExtension(PROXY_CERT_INFO, proxy_cert_info), True),
        (_key_usage(), True),
    ]
    if dirac_group is not None:
        group = der.encode(der.IA5_STRING, dirac_group.encode("ascii"))
        extensions.append((x509.UnrecognizedExtension(DIRAC_GROUP, group), False))
    return issue(issuer, subject, extensions, now - CLOCK_SKEW, not_after, serial=serial)


def issue_crl(
    ca: Credential, revoked: Sequence[x509.Certificate] = (), *, days: int = 30
) -> x509.CertificateRevocationList:
    """A CRL of ``ca`` revoking ``revoked``."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + datetime.timedelta(days=days))
    )
    for cert in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now - CLOCK_SKEW)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, hashes.SHA256())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _is_root(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _key_usage(*, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _end_entity_extensions(*purposes: x509.ObjectIdentifier) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(), True),
        (x509.ExtendedKeyUsage(list(purposes)), False),
    ]

