"""The base of every RPC service: DIRAC's handler conventions on Tornado.

A service subclasses ``RPCHandler`` and writes ``export_<name>`` methods,
optionally with ``auth_<name>`` (who may call) and ``types_<name>``
(expected argument types). One request goes through these steps, each of
which can end it with a clear answer:

1. ``prepare``: request id, the caller's body size limit (known at the TLS
   handshake: small for anonymous callers; 413, and the body is not kept), the
   content type (415), a deadline for the body (408 for a body that trickles in:
   ``request_body``);
2. read the form as it arrives (400, bounded memory: ``form``), decode it (off
   the event loop when large), find ``export_<method>`` (501);
3. admit the caller (``admission``: certificate chain or token, the method's rule; 401/403);
4. check the arguments (400); ``initializeRequest()``;
5. run the method: plain functions in the bounded thread pool under the call
   time limit, coroutines on the event loop; 6. answer JSON (or raw bytes),
   encoded off the event loop when the call was large or ran in the pool.

Nothing a caller sends may hold the event loop for long: another caller's
``ping`` must answer while a large call is read, decoded or answered.

A method may return an ``S_ERROR`` or raise: ``seproxy.errors`` turns what
it raises into the answer. A bug in a method is logged with its traceback
and answered with a generic error that carries the request id; no
traceback, ``CallStack`` or ``ExecInfo`` ever reaches the client.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import tornado.web
from tornado.httputil import HTTPServerRequest

from seproxy import __version__, metrics
from seproxy.config import ConfigError, Settings
from seproxy.errors import failure, rpc_status, status_of
from seproxy.rpc.admission import DEFAULT_AUTH, AdmittingHandler, RequestError
from seproxy.rpc.arguments import TypeSpec, check_arguments
from seproxy.rpc.call import BadRequest, RPCCall, call_of, check_form_type, form_reader, is_form_type, read_fields
from seproxy.rpc.context import Resources, ServiceContext
from seproxy.rpc.executor import CallContext, current_call
from seproxy.rpc.form import FormError, FormReader
from seproxy.rpc.request_body import arrived_whole
from seproxy.transfer import S_ERROR, S_OK, codec, isReturnStructure

log = logging.getLogger("seproxy.rpc")

__all__ = ["DEFAULT_AUTH", "NotFoundHandler", "RPCHandler", "ServiceContext"]

PRIVATE_KEYS = frozenset(("CallStack", "ExecInfo"))
# A call whose body is larger is decoded, and its answer encoded, off the event loop.
INLINE_BODY = 4096


def _public(result: dict[str, Any]) -> dict[str, Any]:
    if PRIVATE_KEYS.isdisjoint(result):
        return result  # (most results: no copy)
    return {k: v for k, v in result.items() if k not in PRIVATE_KEYS}


def _decoded(form: FormReader, routed: dict[str, str]) -> RPCCall:
    return call_of({**read_fields(form), **routed})


class FieldSink(Protocol):
    """Takes one form field as it arrives, instead of the form keeping it (``RPCHandler.route_field``)."""

    def feed(self, data: bytes) -> None:
        """The field's next decoded bytes (on the event loop: keep it short)."""

    async def flush(self) -> None:
        """Called after each chunk of the body: do what ``feed`` gathered (awaited: the back-pressure)."""

    async def finish(self) -> str:
        """The body is in: the field's text as the method is to see it."""

    async def abort(self) -> None:
        """The request ended without the method taking what was sent: drop it. Never raises."""


class _Exported(NamedTuple):
    """What a handler class says of one exported method (``RPCHandler._export``)."""

    name: str  # of the handler's attribute: export_<method>
    rule: Sequence[str]  # auth_<method>
    types: Sequence[TypeSpec]  # types_<method>
    coroutine: bool  # runs on the event loop


@tornado.web.stream_request_body
class RPCHandler(AdmittingHandler):
    """Base class of RPC services; see the module docstring for the lifecycle."""

    SUPPORTED_METHODS = ("POST",)

    auth_ping: ClassVar[Sequence[str]] = ("all",)
    types_ping: ClassVar[Sequence[TypeSpec]] = ()
    auth_echo: ClassVar[Sequence[str]] = ("all",)
    types_echo: ClassVar[Sequence[TypeSpec]] = (object,)
    auth_whoami: ClassVar[Sequence[str]] = ("all",)
    types_whoami: ClassVar[Sequence[TypeSpec]] = ()

    # -- hooks for services -------------------------------------------------

    @classmethod
    def initializeHandler(cls, service: ServiceContext) -> Resources | None:
        """Runs once, before the first request; what it returns is ``service.shared`` for every request."""
        return None

    @classmethod
    def extra_routes(cls) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        """Routes beside the RPC one, relative to it: ``(pattern, handler class)``; each
        handler gets ``service`` in ``initialize`` as RPC handlers do."""
        return []

    @classmethod
    def absolute_routes(cls, settings: Settings) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        """Routes of their own on the service port, outside the RPC route (a storage door's
        ``/lfn/...``), as ``settings`` configures them; handlers get ``service`` as above."""
        return []

    def initializeRequest(self) -> None:
        """Runs for each authorized call, before the exported method."""

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def for_request(cls, request: HTTPServerRequest) -> type[RPCHandler]:
        """The class to take ``request``, asked once its head is read: this one, which reads the
        body as it arrives, or its variant that Tornado gives the body whole, when all of a small
        body came with the head (``arrived_whole``: two turns of the event loop fewer)."""
        if arrived_whole(request, INLINE_BODY) and is_form_type(request.headers.get("Content-Type", "")):
            return _whole_body(cls)
        return cls  # other types too: Tornado would parse a multipart body whole, before the 415

    @classmethod
    @functools.lru_cache(maxsize=1024)
    def _export(cls, method: str) -> _Exported | None:
        """``method`` as this class exports it, or None when it exports no such method: looked up by
        name once per class (method names are checked to be names first: the cache holds at most
        the ones callers tried)."""
        function = getattr(cls, f"export_{method}", None)
        if function is None or not callable(function):
            return None
        rule = getattr(cls, f"auth_{method}", DEFAULT_AUTH)
        types = getattr(cls, f"types_{method}", ())
        return _Exported(f"export_{method}", rule, types, inspect.iscoroutinefunction(function))

    # The state of one request, where it starts as the class says (one handler is made per request:
    # what it need not set, it need not hold).
    # A body given whole, taken from the request before Tornado parses it as a form of its own (its
    # arguments, which the handler never reads): the form reader reads it in ``post``.
    _given_body = b""
    call: RPCCall | None = None
    _exported: _Exported | None = None  # the method the call named, once found
    _sink: tuple[str, FieldSink] | None = None
    _anonymous = True
    _outcome = "-"
    # The status a refused call means (it may go out as 200: ``rpc_status``), for the metrics.
    _meaning: int | None = None
    # (result, its JSON) when the pool thread that ran the method encoded its answer too.
    _encoded: tuple[Any, str] | None = None
    _counted = False  # in ``service.in_flight``
    # The context of the method running in the pool (``on_connection_close`` cancels it).
    _call_context: CallContext | None = None

    def initialize(self, service: ServiceContext) -> None:
        super().initialize(service)
        if not self._stream_request_body:
            self._given_body, self.request.body = self.request.body, b""
        self._form = form_reader(self._route, self.routed_fields)
        self._limit: int = service.settings.service.max_anonymous_form_size
        self._ceiling: int = self._limit

    # The form fields ``route_field`` may take (it is asked of no other).
    routed_fields: ClassVar[frozenset[str]] = frozenset()

    def route_field(self, name: str, form: FormReader) -> FieldSink | None:
        """Hook: a sink to take form field ``name`` (one of ``routed_fields``) as it arrives instead
        of keeping it (None: keep it). ``self.call`` is not known yet; the fields read so far are in ``form``."""
        return None

    def streamed_body_limit(self) -> int:
        """Hook: the largest body this caller may send when a field of it goes to a sink (only the
        kept fields count against the form limit then); 0: none larger than a form. Asked only of
        a known caller whose body may be larger than the form limit (``route_field`` decides alone
        whether a field of a smaller one goes to a sink)."""
        return 0

    def _route(self, name: str) -> Callable[[bytes], None] | None:
        sink = self.route_field(name, self._form)
        if sink is None:
            return None
        self._sink = (name, sink)
        return sink.feed

    def prepare(self) -> None:
        self.service.in_flight += 1
        self._counted = True
        self.begin_request()
        try:
            self._anonymous = self.identify().anonymous
        except RequestError:
            pass  # refused credentials (answered at admission) send no more than anonymous callers
        declared = self.request.headers.get("Content-Length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if not self._anonymous:
            self._limit = self._ceiling = self.service.settings.service.max_form_size
            if length is None or length > self._limit:
                # Only a body that may be larger than a form asks for more (most calls are small).
                self._ceiling = max(self._limit, self.streamed_body_limit())
            # Refusing such a body mid-way (over a cap, out of quota), its sender still gets the reason.
            self.drain_limit = max(self.drain_limit, self._ceiling)
        if declared is not None and length is None:
            self.refuse(400, S_ERROR(errno.EINVAL, f"Content-Length {declared[:32]!r} is not a number"))
        elif declared is not None and length is not None and length > self._ceiling:
            self._reject_size(declared)
        elif self._stream_request_body:  # (the variant given its body whole takes forms only: ``for_request``)
            try:
                check_form_type(self.request.headers.get("Content-Type", ""))
            except BadRequest as exc:
                self.refuse(exc.status, S_ERROR(errno.EINVAL, str(exc)))

    async def data_received(self, chunk: bytes) -> None:
        await self._receive(chunk, last=False)

    async def _receive(self, chunk: bytes, last: bool) -> None:
        """A chunk of the body (``last``: the body ends with it)."""
        if not self.keep_chunk(chunk):
            return
        try:
            await self._take(chunk, last)
        except FormError as exc:
            self.refuse(400, S_ERROR(errno.EINVAL, str(exc)))
        except RequestError as exc:
            self.refuse(exc.status, exc.result)
        except Exception as exc:
            self.refuse(*self._failed(exc, "the form's field"))
        if self.refused:
            await self._drop_sink()

    async def _take(self, chunk: bytes, last: bool) -> None:
        if self._received <= self._ceiling:
            self._form.feed(chunk, last)
        if self._received > self._ceiling or self._form.kept > self._limit:
            self._reject_size(f"{self._received}+")
        elif self._sink is not None:
            await self._sink[1].flush()

    def _failed(self, exc: Exception, doing: str) -> tuple[int, dict[str, Any]]:
        failed = failure(exc, doing, self.request_id)
        if failed.bug:
            log.error("%s raised an unexpected error", doing, exc_info=exc)
        return failed.status, failed.result

    async def _drop_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            await sink[1].abort()

    def _reject_size(self, size: str) -> None:
        if self._anonymous:
            message = (
                f"request body of {size} bytes is over the limit of {self._limit} bytes for callers without "
                "certificate or token (service.max_anonymous_form_size)"
            )
        else:
            message = (
                f"request body of {size} bytes is over this service's limit of {self._limit} bytes "
                "(service.max_form_size); DIRAC's sendFile sends the whole file in the form: "
                "send large files with seproxy's TransferClient, which streams them"
            )
        self.refuse(413, S_ERROR(errno.EFBIG, message))

    @property
    def _large(self) -> bool:
        return self._received > INLINE_BODY

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._sink is not None:
            self._dropping = asyncio.ensure_future(self._drop_sink())
        context = self._call_context
        if context is not None:
            context.cancelled.set()
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.service.in_flight -= 1

    async def post(self) -> None:
        try:
            if self._given_body:
                await self._receive(self._given_body, last=True)  # read as if it had streamed, in one chunk
            await self._post()
        finally:
            if self._sink is not None:
                await self._drop_sink()  # a method that took the routed field has done with it by now

    async def _post(self) -> None:
        if self.body_done():
            return
        try:
            result = await self._dispatch()
        except RequestError as exc:
            self._refuse_call(exc.status, exc.result)
            return
        except BadRequest as exc:
            self._refuse_call(exc.status, S_ERROR(errno.EINVAL, str(exc)))
            return
        except Exception as exc:
            status, result = self._failed(exc, self.call.method if self.call else "this request")
            self._answer_error(status, result)
            return
        if not self._finished:
            await self._answer(result)

    async def _dispatch(self) -> Any:
        routed = {self._sink[0]: await self._sink[1].finish()} if self._sink else {}
        if self._large:
            self.call = await self.service.executor.run(_decoded, self._form, routed)
        else:
            self.call = _decoded(self._form, routed)
        method = self.call.method
        exported = self._exported = self._export(method)
        if exported is None:
            raise RequestError(501, S_ERROR(errno.ENOSYS, f"unknown method {method!r} of {self.service_name}"))
        self.admit(method, exported.rule)
        if isinstance(self.call.extra_credentials, (list, tuple)):
            raise RequestError(403, S_ERROR(errno.EACCES, "delegated credentials (extraCredentials) are not supported"))
        function = getattr(self, exported.name)
        check_arguments(method, function, exported.types, self.call.args)
        self.initializeRequest()
        if exported.coroutine:
            return await function(*self.call.args)
        return await self.service.executor.run(self._in_thread, function, *self.call.args)

    def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        # Expose the pool thread's call context so on_connection_close can cancel it.
        self._call_context = current_call()
        result = function(*args)
        assert self.call is not None
        if isReturnStructure(result) and not self.call.raw_content:
            # Encoded here, in the pool, rather than on the event loop: a listing may be large.
            self._encoded = (result, codec.encode(_public(result)))
        return result

    # -- answers ------------------------------------------------------------

    def _refuse_call(self, status: int, result: dict[str, Any]) -> None:
        """A call refused before its method ran: counted as refused whatever status it goes out with."""
        self._meaning = status
        self._answer_error(status, result)

    def _answer_error(self, status: int, result: dict[str, Any]) -> None:
        """Answer an ``S_ERROR`` that means HTTP ``status``: as such before the form named a method,
        else as ``rpc_status`` says (so that DIRAC's client shows the message)."""
        if self.call is None:
            self.send_json(status, result)
        else:
            self.send_json(rpc_status(status, self.call.raw_content), result)

    async def _json_of(self, value: Any) -> str:
        """``value`` as JSON: off the event loop when the call was large."""
        if self._large:
            return await self.service.executor.run(codec.encode, value)
        return codec.encode(value)

    async def _answer(self, result: Any) -> None:
        """Send ``result``: JSON with status 200, or raw bytes (an error then gets a status that says so)."""
        assert self.call is not None
        if not isReturnStructure(result):
            log.error("%s returned %r, not S_OK/S_ERROR", self.call.method, type(result))
            result = S_ERROR(errno.EIO, f"internal error in {self.call.method} (request id {self.request_id})")
        if not result["OK"]:
            self._answer_error(status_of(result), result)
            return
        if self.call.raw_content:
            value = result["Value"]
            self._outcome = "OK"
            self.set_header("Content-Type", "application/octet-stream")
            self.finish(value if isinstance(value, bytes) else (await self._json_of(value)).encode())
            return
        if self._encoded is not None and self._encoded[0] is result:
            self.send_json(200, result, self._encoded[1])
            return
        clean = _public(result)
        self.send_json(200, clean, await self._json_of(clean))

    def send_json(self, status: int, result: dict[str, Any], encoded: str | None = None) -> None:
        clean = result if encoded is not None else _public(result)  # what was encoded was public
        self._outcome = "OK" if clean.get("OK") else f"error(errno={clean.get('Errno', 0)})"
        super().send_json(status, clean, encoded)

    def access_subject(self) -> str:
        return f"method={self.call.method if self.call else '-'}"

    def access_detail(self) -> str:
        return f"outcome={self._outcome}"

    def on_finish(self) -> None:
        self._uncount()
        if self._outcome == "-" and self._status_code < 400:
            self._outcome = "streamed"  # a method that wrote its own answer (streamToClient)
        method = self.call.method if self.call is not None and self._exported is not None else "unknown"
        ok = self._outcome in ("OK", "streamed")
        calls, duration = _call_metrics(method, metrics.outcome_of(self._meaning or self._status_code, ok))
        calls.inc()
        duration.observe(self.elapsed())
        super().on_finish()

    # -- the methods every service has --------------------------------------

    @property
    def service_name(self) -> str:
        return f"{self.service.settings.service.system}/{self.service.settings.service.component}"

    def getRemoteCredentials(self) -> dict[str, Any]:
        """DIRAC's name for the caller's credential dict."""
        return self.caller.as_dirac_dict()

    # ping, echo and whoami never block: they run on the event loop, because a
    # hop to the thread pool would cost more than the call itself.
    async def export_ping(self) -> dict[str, Any]:
        """Liveness and load, in the shape of DIRAC's ``ping``."""
        now = time.time()
        return S_OK(
            {
                "version": __version__,
                "time": _utc(int(now)),
                "name": self.service_name,
                "service url": self.service.url,
                "service start time": _utc(int(self.service.started)),
                "service uptime": int(now - self.service.started),
                **_host_and_process_load(int(now)),
            }
        )

    async def export_echo(self, value: Any) -> dict[str, Any]:
        """Returns its argument: checks the codec end to end."""
        return S_OK(value)

    async def export_whoami(self) -> dict[str, Any]:
        """How this service sees the caller (anonymous callers too)."""
        return S_OK(self.caller.as_dirac_dict())

    # DIRAC's rule; [authorization] refreshConfiguration names other admin properties.
    auth_refreshConfiguration: ClassVar[Sequence[str]] = ("CSAdministrator",)
    types_refreshConfiguration: ClassVar[Sequence[TypeSpec]] = (bool,)

    async def export_refreshConfiguration(self, fromMaster: bool) -> dict[str, Any]:
        """DIRAC's refresh, as SIGHUP does it: this service has its own file and no master to ask,
        so ``fromMaster`` changes nothing. On the event loop, as SIGHUP's reload runs."""
        if self.service.reload is None:
            return S_ERROR(errno.ENOSYS, "this service cannot reload its configuration")
        try:
            return S_OK(self.service.reload())
        except ConfigError as exc:
            return S_ERROR(errno.EINVAL, str(exc))


@tornado.web.stream_request_body
class NotFoundHandler(tornado.web.RequestHandler):
    """Unknown routes: a JSON 404 without buffering whatever body was sent."""

    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "application/json")
        self.finish(codec.encode(S_ERROR(errno.ENOENT, f"no service at {self.request.path[:200]!r}")))

    def data_received(self, chunk: bytes) -> None:
        """The body of a request to nowhere is dropped unread."""


# The variant of each RPC handler class that Tornado gives its body whole (``for_request``).
_WHOLE_BODY: dict[type[RPCHandler], type[RPCHandler]] = {}


def _whole_body(handler: type[RPCHandler]) -> type[RPCHandler]:
    """``handler`` with its body given whole by Tornado, and nothing else changed."""
    variant = _WHOLE_BODY.get(handler)
    if variant is None:
        attributes = {"_stream_request_body": False, "__module__": handler.__module__}
        variant = _WHOLE_BODY[handler] = type(handler.__name__, (handler,), attributes)
    return variant


@functools.lru_cache(maxsize=1024)
def _call_metrics(method: str, outcome: str) -> tuple[Any, Any]:
    """The metric children of one (method, outcome); methods are the exported ones or "unknown":
    looking them up by label on every call costs more than counting."""
    return metrics.RPC_CALLS.labels(method, outcome), metrics.RPC_DURATION.labels(method)


@functools.lru_cache(maxsize=2)
def _utc(second: int) -> datetime.datetime:
    """A whole second as DIRAC's naive UTC datetime; ``ping`` asks for the same two (now, the start)
    many times a second, and a datetime is immutable."""
    return datetime.datetime.fromtimestamp(second, datetime.UTC).replace(tzinfo=None)


@functools.lru_cache(maxsize=1)
def _host_and_process_load(second: int) -> dict[str, Any]:
    """The load figures of ``ping``, read once a second (the key): summing the CPU times of every
    thread and reading the load average cost more than the rest of a ping, and monitors
    pinging many times a second learn nothing new from a fresher figure."""
    times = os.times()
    return {
        # CLOCK_BOOTTIME is what /proc/uptime shows, without the file I/O.
        "host uptime": int(time.clock_gettime(time.CLOCK_BOOTTIME)),
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "cpu times": {
            "user time": times.user,
            "system time": times.system,
            "children user time": times.children_user,
            "children system time": times.children_system,
            "elapsed real time": times.elapsed,
        },
    }
