"""TLS contexts that accept grid clients.

Grid clients present RFC 3820 proxies, which OpenSSL refuses unless told
otherwise, and trust comes from a hashed CA directory rather than a bundle.
Anonymous callers may still connect (public methods such as ``ping``); the
RPC layer decides what an identity, or the lack of one, may do.

Two OpenSSL behaviours shape the server context:

- a resumed session has no verified chain, so the caller would turn
  anonymous on every connection a client resumes (curl does, with a second
  connection in one run): the server issues no session tickets, and a
  Python server context keeps no session cache of its own, so nothing can
  be resumed and every connection proves its certificate again;
- CAs and CRLs read from a ``capath`` stay in the context for good, so a
  CRL renewed by fetch-crl, or a CA withdrawn, would only count after a
  restart: ``ServerContext`` moves each new connection to a freshly built
  context once the directory has changed.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("seproxy.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2: ephemeral ECDH and an AEAD cipher only (Mozilla "intermediate" without
# its DHE suites, which a Python server cannot offer: it loads no DH parameters).
# TLS 1.3 suites all qualify, so OpenSSL's defaults stand for it.
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# A changed CA directory is noticed at the next handshake (files renamed into
# place change its mtime, as fetch-crl and package updates do); a file rewritten
# in place is read again at the latest this many seconds later.
TRUST_MAX_AGE = 600.0

_Context = TypeVar("_Context", bound=ssl.SSLContext)


class ServerContext(ssl.SSLContext):
    """A server context that keeps its trust store as current as the CA directory.

    Python cannot empty an ``SSLContext``'s store, but the SNI callback, which
    OpenSSL calls for every ClientHello (with or without a server name), may
    hand the connection to another context. A new context is built from the
    same settings when the directory changed, when it is older than
    ``TRUST_MAX_AGE``, or after ``load_cert_chain`` (SIGHUP's new host
    certificate). If building fails, the last good one stays in use.
    """

    _build: Callable[[Path, Path], ssl.SSLContext]

    def watch(self, ca_dir: Path, build: Callable[[Path, Path], ssl.SSLContext]) -> None:
        """Start following ``ca_dir``; ``build(cert, key)`` makes a context with fresh trust."""
        self._ca_dir = ca_dir
        self._build = build
        self._lock = threading.Lock()
        self._current: ssl.SSLContext = self
        self._stamp = _stamp(ca_dir)
        self._built = time.monotonic()
        self._stale = False
        self.sni_callback = self._on_hello

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        super().load_cert_chain(certfile, keyfile, password)
        self._credentials = (Path(certfile), Path(keyfile or certfile))
        self._stale = True

    def _on_hello(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current()
        if current is not connection.context:
            connection.context = current

    def current(self) -> ssl.SSLContext:
        """The context new connections get: this one, or a newer one with the directory as it is now."""
        stamp, now = _stamp(self._ca_dir), time.monotonic()
        with self._lock:
            if self._stale or stamp != self._stamp or now - self._built > TRUST_MAX_AGE:
                try:
                    self._current = self._build(*self._credentials)
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    log.error("re-reading the CA directory %s failed; the trust read before stays: %s", self._ca_dir, exc)
                self._stamp, self._built, self._stale = stamp, now, False
            return self._current


def _stamp(directory: Path) -> int | None:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return None


def server_context(
    host_cert: Path,
    host_key: Path,
    ca_dir: Path,
    *,
    min_version: str = "TLSv1.2",
    crl_check: bool = False,
) -> ServerContext:
    """The service's context: host credentials, optional client certificates, proxies allowed."""

    def build(context: _Context, cert: Path, key: Path) -> _Context:
        _configure(context, ca_dir, min_version)
        _load_credentials(context, cert, key)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        if crl_check:
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        # The identity is resolved once per connection: it must not change under it.
        context.options |= ssl.OP_NO_RENEGOTIATION
        # No resumption (see the module docstring); TLS 1.3 then sends no tickets at all.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        return context

    context = build(ServerContext(ssl.PROTOCOL_TLS_SERVER), host_cert, host_key)
    context.watch(ca_dir, lambda cert, key: build(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key))
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
