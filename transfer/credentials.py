"""Where a client finds its X.509 identity and the CAs it trusts.

The search follows the order grid users know from DIRAC, voms-proxy-init and
gfal: an explicit argument, then ``X509_USER_PROXY``, then the default proxy
file ``/tmp/x509up_u<uid>``, then ``X509_USER_CERT``/``X509_USER_KEY``, then
``~/.globus``. A file that the user named (argument or environment) must be
usable: silently falling through to another identity would make the server
see someone other than the user meant. Default locations are only tried.

The identity and the CA directory are independent searches, each a list of
steps tried in order; the bearer token is a third search of the same shape,
in the WLCG discovery order (``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``,
``$XDG_RUNTIME_DIR/bt_u<uid>``, ``/tmp/bt_u<uid>``). It runs before every
request rather than once, because token files are renewed every few minutes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

# Module constants rather than literals so that tests can point them at a tmp dir.
PROXY_DIR = "/tmp"
TOKEN_DIR = "/tmp"
GRID_CA_DIR = "/etc/grid-security/certificates"
HOST_CERT_DIR = "/etc/grid-security"

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
    host_certificate: bool = False,
) -> ClientCredentials:
    """The first usable identity in the grid search order, or an anonymous one.

    Raises ``ValueError`` naming the file when a file the user named (by
    argument or environment variable) is missing or unreadable.
    ``use_certificates`` skips every proxy step (the user's certificate).
    ``host_certificate`` is DIRAC's ``useCertificates``: the machine's own
    certificate, found where DIRAC looks for it (``DIRAC_X509_HOST_CERT`` and
    ``DIRAC_X509_HOST_KEY``, else ``hostcert.pem``/``hostkey.pem`` in
    /etc/grid-security); an explicit proxy still wins, as in DIRAC.
    """
    if proxy and use_certificates:
        raise ValueError("a proxy was given together with use_certificates=True")
    candidates = _candidates(proxy, cert, key, use_certificates, host_certificate)
    identity = next((candidate for candidate in candidates if _usable(candidate)), None)
    if identity is None and host_certificate:
        raise ValueError(
            "no host certificate for useCertificates: set DIRAC_X509_HOST_CERT and DIRAC_X509_HOST_KEY, "
            f"or install {HOST_CERT_DIR}/hostcert.pem and hostkey.pem"
        )
    trusted = _find_ca_dir(ca_dir)
    if identity is None:
        return ClientCredentials(None, None, trusted, "none", "no credentials found")
    return ClientCredentials(identity.cert_file, identity.key_file, trusted, identity.kind, identity.source)


def _candidates(
    proxy: str | None, cert: str | None, key: str | None, use_certificates: bool, host_certificate: bool
) -> Iterator[_Candidate]:
    if proxy:
        yield _Candidate("proxy", "proxy argument", proxy, proxy, named=True)
    if host_certificate:
        yield _host_candidate()
        return
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


def _host_candidate() -> _Candidate:
    env_cert = os.environ.get("DIRAC_X509_HOST_CERT")
    env_key = os.environ.get("DIRAC_X509_HOST_KEY")
    if env_cert or env_key:
        return _pair("DIRAC_X509_HOST_CERT/DIRAC_X509_HOST_KEY", "DIRAC_X509_HOST_CERT", env_cert, "DIRAC_X509_HOST_KEY", env_key)
    cert, key = (os.path.join(HOST_CERT_DIR, name) for name in ("hostcert.pem", "hostkey.pem"))
    return _Candidate("certificate", HOST_CERT_DIR, cert, key, named=False)


def proxy_file(pem: str) -> str:
    """Write a proxy given as text (DIRAC's ``proxyString``) to a private temporary file; return its path.

    TLS libraries load a client certificate only from a file. The caller
    removes the file when the client closes.
    """
    if "-----BEGIN CERTIFICATE-----" not in pem or "PRIVATE KEY-----" not in pem:
        raise ValueError("proxyString is not a proxy: it needs a PEM certificate and its private key")
    descriptor, path = tempfile.mkstemp(prefix="seproxy-proxy-", suffix=".pem")  # mode 0600
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(pem)
    return path


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


@dataclass(frozen=True)
class BearerToken:
    """A token found by discovery, and where (for messages; never print ``value``).

    ``value`` stays out of the repr, so that a traceback, a debugger or a test
    report that shows the object does not show the token.
    """

    value: str = field(repr=False)
    source: str


def find_bearer_token() -> BearerToken | None:
    """The current bearer token in the WLCG discovery order, or None.

    The value is stripped of surrounding white space, as the WLCG
    specification asks. Raises ``ValueError`` when ``BEARER_TOKEN_FILE``
    names a file that cannot be read or is empty: the user asked for it.
    """
    value = os.environ.get("BEARER_TOKEN", "").strip()
    if value:
        return BearerToken(value, "BEARER_TOKEN")
    named = os.environ.get("BEARER_TOKEN_FILE")
    if named:
        return _read_token(named, "BEARER_TOKEN_FILE", named=True)
    name = f"bt_u{os.getuid()}"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    defaults = [os.path.join(runtime_dir, name)] if runtime_dir else []
    for path in [*defaults, os.path.join(TOKEN_DIR, name)]:
        token = _read_token(path, path, named=False)
        if token is not None:
            return token
    return None


def _read_token(path: str, source: str, *, named: bool) -> BearerToken | None:
    """The token in ``path``; a missing or empty default file is "not this step", not an error."""
    where = f"bearer token file {path}" + (f" (from {source})" if named else "")
    try:
        with open(path, encoding="utf-8") as stream:
            value = stream.read().strip()
    except FileNotFoundError:
        if not named:
            return None
        raise ValueError(f"{where} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not text") from None
    if value:
        return BearerToken(value, source)
    if named:
        raise ValueError(f"{where} is empty")
    return None
