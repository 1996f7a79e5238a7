"""Development credentials, so that the embedded default runs without a grid PKI.

A throw-away CA, a host certificate for the local names, and a user with a
proxy: enough for a developer to start the service and call it with the
DIRAC client on the same machine. Never meant for production, where the
host certificate and CA directory come from the site.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from seproxy.security import pki
from seproxy.security.cadir import install_ca

DEV_CA_DN = "/DC=org/DC=seproxy/CN=seproxy development CA"
DEV_USER_DN = "/DC=org/DC=seproxy/OU=development/CN=Development User"
PROXY_LIFETIME = datetime.timedelta(days=7)
# The development token issuer: `seproxy token` signs with its key, the embedded default trusts it.
DEV_TOKEN_ISSUER = "https://seproxy.invalid/development"
DEV_TOKEN_KEY = "token-issuer-key.pem"
DEV_TOKEN_PUBLIC = "token-issuer.pem"
# A credential expiring sooner than this is issued again rather than reused.
RENEW_BEFORE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class DevCredentials:
    """Where the development credentials are."""

    directory: Path
    ca_dir: Path
    host_cert: Path
    host_key: Path
    user_cert: Path
    user_key: Path
    proxy: Path
    user_dn: str
    # What this call had to make anew ("CA", "host certificate", ...), so that a command can say so.
    issued: tuple[str, ...] = field(default=(), compare=False)


def ensure_dev_credentials(
    directory: Path, hostnames: Sequence[str] = ("localhost", "127.0.0.1", "::1")
) -> DevCredentials:
    """Make the development credentials usable, touching only what is missing or about to expire.

    Several processes may start at once (tests, a service and its CLI); a
    lock file serialises them, so that they never mix credentials of two
    different CAs.
    """
    paths = DevCredentials(
        directory=directory,
        ca_dir=directory / "certificates",
        host_cert=directory / "hostcert.pem",
        host_key=directory / "hostkey.pem",
        user_cert=directory / "usercert.pem",
        user_key=directory / "userkey.pem",
        proxy=directory / "proxy.pem",
        user_dn=DEV_USER_DN,
    )
    issued: list[str] = []
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_cert, ca_key = directory / "ca-cert.pem", directory / "ca-key.pem"
        ca = _reusable(ca_cert, ca_key, None)
        if ca is None:
            ca = pki.make_ca(DEV_CA_DN)
            ca.write(ca_cert, ca_key)
            issued.append("CA")
            # Whatever CA was trusted before must not be any more.
            shutil.rmtree(paths.ca_dir, ignore_errors=True)
        install_ca(paths.ca_dir, ca.cert)

        host = _reusable(paths.host_cert, paths.host_key, ca)
        if host is None or not _names_cover(host, hostnames):
            pki.issue_host(ca, hostnames).write(paths.host_cert, paths.host_key)
            issued.append("host certificate")

        user = _reusable(paths.user_cert, paths.user_key, ca)
        if user is None:
            user = pki.issue_user(ca, DEV_USER_DN)
            user.write(paths.user_cert, paths.user_key)
            issued.append("user certificate")

        if _reusable(paths.proxy, None, user) is None:
            pki.issue_proxy(user, lifetime=PROXY_LIFETIME).write(paths.proxy)
            issued.append("proxy")
    return replace(paths, issued=tuple(issued))


def _reusable(cert_path: Path, key_path: Path | None, issuer: pki.Credential | None) -> pki.Credential | None:
    """The credential stored there, if it is readable, signed by ``issuer`` and not about to expire.

    Checking the signature makes a new CA (or user) sweep away everything
    the old one issued, with no bookkeeping of what came from where.
    """
    try:
        credential = pki.Credential.read(cert_path, key_path)
        credential.cert.verify_directly_issued_by(issuer.cert if issuer else credential.cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    now = datetime.datetime.now(datetime.UTC)
    if credential.cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return credential


def _names_cover(host: pki.Credential, hostnames: Sequence[str]) -> bool:
    alt_names = host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return all(pki.alt_name(name) in alt_names for name in hostnames)


def ensure_dev_token_issuer(directory: Path) -> Path:
    """The development token issuer's public key (made with its private key, ``DEV_TOKEN_KEY``, if missing)."""
    public = directory / DEV_TOKEN_PUBLIC
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not public.exists() or not (directory / DEV_TOKEN_KEY).exists():
            key = ec.generate_private_key(ec.SECP256R1())
            private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            descriptor = os.open(directory / DEV_TOKEN_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(private)
            public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public
