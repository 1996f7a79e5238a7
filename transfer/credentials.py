"""Where a client finds its X.509 identity and the CAs it trusts.

The search follows the order grid users know from DIRAC, voms-proxy-init and
gfal: an explicit argument, then ``X509_USER_PROXY``, then the default proxy
file ``/tmp/x509up_u<uid>``, then ``X509_USER_CERT``/``X509_USER_KEY``, then
``~/.globus``. A file that the user named (argument or environment) must be
usable: silently falling through to another identity would make the server
see someone other than the user meant. Default locations are only tried.

The identity and the CA directory are independent searches, each a list of
steps tried in order; a bearer token (BEARER_TOKEN, BEARER_TOKEN_FILE, ...)
fits in as a third search of the same shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

# Module constants rather than literals so that tests can point them at a tmp dir.
PROXY_DIR = "/tmp"
GRID_CA_DIR = "/etc/grid-security/certificates"

CredentialKind = Literal["proxy", "certificate", "none"]


@dataclass(frozen=True)
class ClientCredentials:
    """What the client presents and whom it trusts.

    ``key_file`` equals ``cert_file`` for a proxy, which holds certificate,
    key and chain in one file. ``ca_dir`` None means the trust store requests uses by default.
    ``source`` is a few words for error messages ("X509_USER_PROXY", ...).
    """

    cert_file: str | None
    key_file: str | None
    ca_dir: str | None
    kind: CredentialKind
    source: str


@dataclass(frozen=True)
class _Candidate:
    kind: CredentialKind
    source: str
    cert_file: str
    key_file: str
    named: bool  # named by the user: must be usable, never skipped


def find_credentials(
    *,
    proxy: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    ca_dir: str | None = None,
    use_certificates: bool = False,
) -> ClientCredentials:
    """The first usable identity in the grid search order, or an anonymous one.

    Raises ``ValueError`` naming the file when a file the user named (by
    argument or environment variable) is missing or unreadable.
    ``use_certificates`` skips every proxy step, as DIRAC's useCertificates.
    """
    if proxy and use_certificates:
        raise ValueError("a proxy was given together with use_certificates=True")
    candidates = _candidates(proxy, cert, key, use_certificates)
    identity = next((candidate for candidate in candidates if _usable(candidate)), None)
    trusted = _find_ca_dir(ca_dir)
    if identity is None:
        return ClientCredentials(None, None, trusted, "none", "no credentials found")
    return ClientCredentials(identity.cert_file, identity.key_file, trusted, identity.kind, identity.source)


def _candidates(
    proxy: str | None, cert: str | None, key: str | None, use_certificates: bool
) -> Iterator[_Candidate]:
    if proxy:
        yield _Candidate("proxy", "proxy argument", proxy, proxy, named=True)
    if cert or key:
        yield _pair("cert/key arguments", "cert", cert, "key", key)
    if not use_certificates:
        yield from _proxy_candidates()
    yield from _certificate_candidates()


def _proxy_candidates() -> Iterator[_Candidate]:
    env_proxy = os.environ.get("X509_USER_PROXY")
    if env_proxy:
        yield _Candidate("proxy", "X509_USER_PROXY", env_proxy, env_proxy, named=True)
    default = os.path.join(PROXY_DIR, f"x509up_u{os.getuid()}")
    yield _Candidate("proxy", "default proxy location", default, default, named=False)


def _certificate_candidates() -> Iterator[_Candidate]:
    env_cert = os.environ.get("X509_USER_CERT")
    env_key = os.environ.get("X509_USER_KEY")
    if env_cert or env_key:
        yield _pair("X509_USER_CERT/X509_USER_KEY", "X509_USER_CERT", env_cert, "X509_USER_KEY", env_key)
    globus = os.path.join(os.path.expanduser("~"), ".globus")
    yield _Candidate(
        "certificate",
        "~/.globus",
        os.path.join(globus, "usercert.pem"),
        os.path.join(globus, "userkey.pem"),
        named=False,
    )


def _pair(source: str, cert_name: str, cert: str | None, key_name: str, key: str | None) -> _Candidate:
    """A named certificate and key; naming only one of them is a mistake."""
    if not cert or not key:
        given, missing = (cert_name, key_name) if cert else (key_name, cert_name)
        raise ValueError(f"{given} is set but {missing} is not: a certificate needs its key")
    return _Candidate("certificate", source, cert, key, named=True)


def _usable(candidate: _Candidate) -> bool:
    """True if every file of the candidate can be read.

    A missing default file means "not this step"; any other failure, or any
    failure of a named file, is an error that names the file.
    """
    for path in dict.fromkeys((candidate.cert_file, candidate.key_file)):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            if candidate.named:
                raise ValueError(f"{path} (from {candidate.source}) does not exist") from None
            return False
        except OSError as exc:
            raise ValueError(f"{path} (from {candidate.source}) cannot be read: {exc.strerror}") from None
    return True


def _find_ca_dir(explicit: str | None) -> str | None:
    """The CA directory to trust: explicit, ``X509_CERT_DIR``, the grid default, or None."""
    for path, source in ((explicit, "ca_dir argument"), (os.environ.get("X509_CERT_DIR"), "X509_CERT_DIR")):
        if path:
            if not os.path.isdir(path):
                raise ValueError(f"CA directory {path} (from {source}) is not a directory")
            return path
    return GRID_CA_DIR if os.path.isdir(GRID_CA_DIR) else None
