"""Who sent a request: the verified certificate chain of its TLS connection, resolved in the registry."""

from __future__ import annotations

import functools

from tornado.httputil import HTTPServerRequest

from seproxy.registry import Caller, Registry
from seproxy.security.x509 import PeerIdentity, identity_from_chain, peer_chain_der


@functools.lru_cache(maxsize=4096)
def _identity(chain: tuple[bytes, ...]) -> PeerIdentity:
    # Keep-alive clients send the same chain on every call: parse it once.
    return identity_from_chain(chain)


def caller_of(request: HTTPServerRequest, registry: Registry) -> Caller:
    """The caller of ``request``; anonymous when no client certificate was sent."""
    chain = peer_chain_der(request.connection.stream.socket)  # type: ignore[union-attr]
    return registry.caller(_identity(tuple(chain)) if chain else None)
