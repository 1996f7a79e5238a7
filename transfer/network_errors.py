"""Tell a call that never reached the server from one that may have run.

An RPC is a POST that may change state on the server, so a client may try
another service URL only when the request cannot have been received: the
connection was refused, the name did not resolve, the TCP connect or the TLS
handshake timed out or failed. Once the request may have been sent (a read
timeout, a reset or a hang-up while waiting for the answer, a cut-off body),
the honest answer is "the call may have been executed".

requests and urllib3 nest the cause several levels deep (requests'
ConnectionError -> MaxRetryError.reason -> NewConnectionError.__cause__ ->
ConnectionRefusedError), and a TLS handshake timeout surfaces as a
ReadTimeoutError; the session raises ``TLSHandshakeTimeout`` instead so that
it can be told apart here.
"""

from __future__ import annotations

import errno
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from urllib3 import exceptions as u3

_SSL_SOURCE_LINE = re.compile(r" \(_ssl\.c:\d+\)$")


class TLSHandshakeTimeout(u3.ConnectTimeoutError):
    """The TLS handshake timed out: the request was never sent."""


@dataclass(frozen=True)
class NetworkFailure:
    """Why a call failed on the network, and whether the server may have seen it."""

    errno: int
    reason: str
    may_have_reached_server: bool


def classify(exc: BaseException, *, answer_started: bool = False) -> NetworkFailure:
    """Classify an exception raised by requests while calling a service.

    ``answer_started`` says the status line was already read, so that
    whatever went wrong happened after the server received the call.
    """
    chain = list(causes(exc))
    if not answer_started:
        for cause in chain:
            failure = _connect_failure(cause)
            if failure:
                return failure
    if any(isinstance(cause, (TimeoutError, u3.TimeoutError)) for cause in chain):
        return NetworkFailure(errno.ETIMEDOUT, "no answer within the timeout", True)
    what = "answer cut off" if answer_started else "connection lost"
    return NetworkFailure(errno.ECONNRESET, f"{what}: {_describe(chain[-1])}", True)


def _connect_failure(cause: BaseException) -> NetworkFailure | None:
    """The failure if ``cause`` means the connection was never established."""
    if isinstance(cause, u3.NameResolutionError):
        return NetworkFailure(errno.EHOSTUNREACH, "cannot resolve the host name", False)
    if isinstance(cause, TLSHandshakeTimeout):
        return NetworkFailure(errno.ETIMEDOUT, "TLS handshake timed out", False)
    if isinstance(cause, u3.NewConnectionError):
        os_error = cause.__cause__
        code = getattr(os_error, "errno", None) or errno.ECONNREFUSED
        return NetworkFailure(code, _describe(os_error or cause), False)
    if isinstance(cause, u3.ConnectTimeoutError):
        return NetworkFailure(errno.ETIMEDOUT, "connect timed out", False)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return NetworkFailure(errno.ECONNABORTED, f"certificate verify failed: {cause.verify_message}", False)
    if isinstance(cause, ssl.SSLError):
        # Includes the server refusing our certificate, which TLS 1.3 reports
        # only when the client first reads: the request was never processed.
        return NetworkFailure(errno.ECONNABORTED, f"TLS failure: {_describe(cause)}", False)
    return None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception nested in it, outermost first.

    requests and urllib3 nest the socket error that explains a failure in
    ``reason`` attributes, arguments and exception chains; the service's
    WebDAV plugin and the client both read it through this one walk.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        chained = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        nested = [*current.args, getattr(current, "reason", None), chained]
        pending.extend(item for item in nested if isinstance(item, BaseException))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return _SSL_SOURCE_LINE.sub("", exc.strerror).lower()
    return str(exc) or type(exc).__name__
