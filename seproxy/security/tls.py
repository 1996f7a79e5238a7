"""TLS contexts that accept grid clients.

Grid clients present RFC 3820 proxies, which OpenSSL refuses unless told
otherwise, and trust comes from a hashed CA directory rather than a bundle.
Anonymous callers may still connect (public methods such as ``ping``); the
RPC layer decides what an identity, or the lack of one, may do.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# Forward secrecy and AEAD only, for TLS 1.2; TLS 1.3 suites are all fine.
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


def server_context(
    host_cert: Path,
    host_key: Path,
    ca_dir: Path,
    *,
    min_version: str = "TLSv1.2",
    crl_check: bool = False,
) -> ssl.SSLContext:
    """The service's context: host credentials, optional client certificates, proxies allowed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(context, ca_dir, min_version)
    _load_credentials(context, host_cert, host_key)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    if crl_check:
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # The identity is resolved once per connection: it must not change under it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def client_context(ca_dir: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A context that checks the server against ``ca_dir`` and presents ``cert`` (a proxy file needs no ``key``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _configure(context, ca_dir, "TLSv1.2")
    if cert is not None:
        _load_credentials(context, cert, key or cert)
    return context


def _configure(context: ssl.SSLContext, ca_dir: Path, min_version: str) -> None:
    if min_version not in _VERSIONS:
        raise ValueError(f"min_version {min_version!r}: expected one of {', '.join(_VERSIONS)}")
    if not ca_dir.is_dir():
        raise FileNotFoundError(f"CA directory {ca_dir} does not exist or is not a directory")
    context.minimum_version = _VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_ciphers(_CIPHERS)
    # capath, not cafile: OpenSSL looks issuers (and CRLs) up by hash on demand.
    context.load_verify_locations(capath=str(ca_dir))


def _load_credentials(context: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    """Load a certificate and key, saying which file is at fault when that fails.

    OpenSSL's own errors ("KEY_VALUES_MISMATCH", "PEM lib") name neither file,
    which leaves an operator guessing at a service that will not start.
    """
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except ValueError as exc:
        raise ValueError(f"{cert_path}: not a PEM certificate ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path}: the key does not belong to the certificate in {cert_path}")
    context.load_cert_chain(str(cert_path), str(key_path))
