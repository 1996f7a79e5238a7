"""Who sent a request: the verified certificate chain of its TLS connection, resolved in the registry."""

from __future__ import annotations

import functools

from tornado.httputil import HTTPServerRequest

from seproxy.registry import Caller, Registry
from seproxy.security.tokens import TokenRefused, TokenVerifier
from seproxy.security.x509 import PeerIdentity, identity_from_chain, peer_chain_der


class CredentialsRefused(ValueError):
    """The request's token or certificate chain cannot be used: a 401 with this message, never a 500."""


@functools.lru_cache(maxsize=4096)
def _identity(chain: tuple[bytes, ...]) -> PeerIdentity:
    # Keep-alive clients send the same chain on every call: parse it once.
    return identity_from_chain(chain)


def caller_of(request: HTTPServerRequest, registry: Registry, tokens: TokenVerifier | None = None) -> Caller:
    """The caller of ``request``: its bearer token if it sent one, else its certificate, else anonymous.

    A token that does not verify raises ``CredentialsRefused`` rather than
    falling back to the certificate: the client asked to be that token's
    subject. So does a chain that OpenSSL verified but whose identity cannot
    be read (a proxy whose DIRAC group extension is not a string, say): the
    caller sent it to be someone. A certificate caller is resolved once per
    TLS connection (renegotiation is disabled, so the certificate cannot
    change under it) and per registry: a reloaded registry is a new object,
    so connections resolve their caller again.
    """
    # get_list: a missing header costs no KeyError raised and caught, as ``get`` does.
    authorization = ",".join(request.headers.get_list("Authorization"))
    if authorization[:7].lower() == "bearer ":
        if tokens is None:
            raise CredentialsRefused("bearer token refused: this service is not configured to accept bearer tokens")
        try:
            return registry.caller_for_token(tokens.verify(authorization[7:].strip()))
        except TokenRefused as exc:
            raise CredentialsRefused(f"bearer token refused: {exc}") from None
    stream = request.connection.stream  # type: ignore[union-attr]
    cached = getattr(stream, "_seproxy_caller", None)
    if cached is not None and cached[0] is registry:
        known: Caller = cached[1]
        return known
    chain = peer_chain_der(stream.socket)
    try:
        caller = registry.caller(_identity(tuple(chain)) if chain else None)
    except ValueError as exc:
        raise CredentialsRefused(f"client certificate refused: {exc}") from None
    stream._seproxy_caller = (registry, caller)
    return caller
