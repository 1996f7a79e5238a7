"""The one step every handler of a service takes to admit a request: who calls, may they, and a log line.

The RPC handler admits a call once its form has named the method; the
streamed upload admits its ``PUT`` before the first body byte, under the rule
of the method it stands for. Either way the caller is identified from the
verified TLS chain or bearer token, the method's rule is looked up (the
config's ``[authorization]`` overrides the handler's ``auth_<method>``),
and the request gets its id (in every log line and in ``X-Request-ID``)
and exactly one access-log line when it ends.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from seproxy import logs
from seproxy.registry import Caller
from seproxy.rpc.authorization import authorize
from seproxy.rpc.context import ServiceContext
from seproxy.rpc.identity import CredentialsRefused, caller_of
from seproxy.rpc.request_body import StreamedBodyHandler
from seproxy.transfer import S_ERROR

log = logging.getLogger("seproxy.access")

DEFAULT_AUTH = ("authenticated",)
# The caller until one is identified (a Caller is immutable: one serves every request).
NOBODY = Caller()


class RequestError(Exception):
    """End the request with ``status`` and an S_ERROR body."""

    def __init__(self, status: int, result: dict[str, Any]) -> None:
        super().__init__(result["Message"])
        self.status = status
        self.result = result


class AdmittingHandler(StreamedBodyHandler):
    """Base of a service's Tornado handlers: request id, caller, rule and access log in one place.

    A subclass calls ``begin_request`` first in ``prepare``, ``admit`` when
    it knows the method, and describes itself in the log line through
    ``access_subject`` and ``access_detail``.
    """

    service: ServiceContext
    caller = NOBODY
    _identified: Caller | None = None

    def initialize(self, service: ServiceContext) -> None:
        self.service = service
        # Only told apart, never a secret: pseudo-random, without a system call per request (random
        # seeds each forked worker afresh).
        self.request_id = f"{random.getrandbits(48):012x}"
        self._started = time.monotonic()
        self.guard_body(service.settings.service.idle_connection_timeout)

    def begin_request(self) -> None:
        logs.request_id.set(self.request_id)
        self.set_header("X-Request-ID", self.request_id)

    def identify(self) -> Caller:
        """The caller, from the TLS chain or the bearer token (known before the body, found once per
        request); a 401 ``RequestError`` if those credentials are refused."""
        if self._identified is None:
            try:
                self._identified = caller_of(self.request, self.service.registry, self.service.tokens)
            except CredentialsRefused as exc:
                raise RequestError(401, S_ERROR(errno.EACCES, str(exc))) from None
        self.caller = self._identified
        return self.caller

    def admit(self, method: str, rule: Sequence[str]) -> Caller:
        """The caller, if it may call ``method`` (whose handler rule is ``rule``); ``RequestError`` otherwise."""
        self.identify()
        override = self.service.settings.authorization.get(method)
        decision = authorize(override if override is not None else rule, self.caller, method)
        if not decision.allowed:
            raise RequestError(decision.status, S_ERROR(errno.EACCES, decision.reason))
        return self.caller

    def access_subject(self) -> str:
        """What the request was about, for its log line (``method=ping``)."""
        return "-"

    def access_detail(self) -> str:
        """How it ended beyond its status (``outcome=OK``, ``bytes=12``)."""
        return ""

    def _identify_for_the_log(self) -> None:
        """Who sent a request refused before its method was known (a body over the limit, an
        unknown method), for the log line: the verified chain or token says so even then."""
        try:
            self.identify()
        except (RequestError, OSError, AttributeError):
            pass  # credentials that would be refused, or a connection already gone: anonymous

    def on_finish(self) -> None:
        super().on_finish()
        self._identify_for_the_log()
        logs.log_info(log, (
            f"{self.request.remote_ip} user={self.caller.username} dn={self.caller.dn!r} {self.access_subject()} "
            f"status={self._status_code} {self.access_detail()} {self.elapsed() * 1000:.1f}ms"
        ))  # fmt: skip

    def elapsed(self) -> float:
        return time.monotonic() - self._started
