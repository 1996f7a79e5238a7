"""Assembling and running one seproxy instance.

``Service`` wires the pieces together (credentials, TLS, registry, thread
pool, the Tornado application) and owns their lifetime: start listening,
stop listening, let in-flight calls finish within a grace period, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.netutil
import tornado.web

from seproxy import __version__
from seproxy.config import ConfigError, Settings, load_settings, url_host
from seproxy.http_side.listen import listening_sockets
from seproxy.metrics import MetricsEndpoint
from seproxy.registry import Registry
from seproxy.rpc.admission import AdmittingHandler
from seproxy.rpc.admission import log as access_log
from seproxy.rpc.context import ServiceContext
from seproxy.rpc.executor import CallExecutor
from seproxy.rpc.handler import NotFoundHandler, RPCHandler
from seproxy.security.connection_limits import FULL, ConnectionLimits
from seproxy.security.host_credentials import ServerCredentials, server_credentials
from seproxy.security.tls import ServerContext, server_context
from seproxy.security.tokens import TokenVerifier, TrustedIssuer

log = logging.getLogger("seproxy.service")

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


def public_host(settings: Settings) -> str:
    """The host name clients should use: it must match the host certificate."""
    service = settings.service
    if service.public_name:
        return service.public_name
    if service.host in LOOPBACK_HOSTS:
        return "localhost"
    if service.host in WILDCARD_HOSTS:
        return socket.getfqdn()
    return service.host


def service_url(settings: Settings, port: int | None = None) -> str:
    return f"https://{url_host(public_host(settings))}:{port or settings.service.port}{settings.route}"


@dataclass
class _Client:
    """What the RPC server knows of one open connection, to tell an idle one."""

    address: str
    opened: float
    served: bool = False  # a request head arrived (so the TLS handshake completed)
    busy: bool = False  # a request is being read or answered


class _Watched(tornado.httputil.HTTPMessageDelegate):
    """Passes a request through, noting on its connection that a request head arrived."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, client: _Client | None) -> None:
        self._delegate = delegate
        self._client = client

    def headers_received(self, start_line: Any, headers: tornado.httputil.HTTPHeaders) -> Awaitable[None] | None:
        if self._client is not None:
            self._client.served = self._client.busy = True
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


class _Application(tornado.web.Application):
    """Tornado's application, but an RPC handler class picks its variant for each request
    (``RPCHandler.for_request``) once the request's head is read."""

    def get_handler_delegate(
        self,
        request: tornado.httputil.HTTPServerRequest,
        target_class: type[tornado.web.RequestHandler],
        target_kwargs: dict[str, Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> Any:
        if issubclass(target_class, RPCHandler):
            target_class = target_class.for_request(request)
        return super().get_handler_delegate(request, target_class, target_kwargs, path_args, path_kwargs)


# The most one read of a TLS connection returns: OpenSSL gives the plaintext of one record per read.
TLS_RECORD = 16 * 1024


def _keep_nodelay(value: bool) -> None:
    """A connection's ``set_nodelay`` once ``_tune`` turned ``TCP_NODELAY`` on for good."""


def _tune(stream: Any) -> None:
    """Two costs of every call that Tornado's stream defaults add on a TLS connection.

    Tornado zero-fills a new buffer of ``read_chunk_size`` (64 KiB) for every
    read, of which TLS fills at most one record. It turns ``TCP_NODELAY`` on
    as each answer ends (so that its last bytes go at once) and off as the
    next request begins: two system calls per call. An answer goes out in one
    write when it is small and in large ones when it is not, so nothing waits
    on Nagle's algorithm with it on for good (nginx's ``tcp_nodelay`` is on by
    default too).
    """
    stream.read_chunk_size = min(stream.read_chunk_size, TLS_RECORD)
    stream.set_nodelay(True)
    stream.set_nodelay = _keep_nodelay


class BoundedHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer with connection limits (overall and per address) and a deadline for the first request.

    A connection that has not completed its TLS handshake and sent a request
    head within ``handshake_timeout`` is closed; when the server is full, the
    idle connection that never sent a request (else the oldest idle one) makes
    room for a new one; a connection beyond its address's share is refused.
    """

    def initialize(
        self,
        *args: Any,
        max_connections: int = 1024,
        max_per_address: int = 256,
        handshake_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        self.limits = ConnectionLimits(max_connections, max_per_address)
        self.handshake_timeout = handshake_timeout
        self._clients: dict[Any, _Client] = {}  # by stream

    def handle_stream(self, stream: Any, address: Any) -> None:
        host = str(address[0] if isinstance(address, tuple) else address)
        refusal = self.limits.admit(host)
        if refusal == FULL and self._evict_idle():
            refusal = self.limits.admit(host)
        if refusal is not None:
            log.warning("connection from %s refused: %s (%d open)", host, refusal, self.limits.open)
            stream.close()
            return
        self._clients[stream] = _Client(host, time.monotonic())
        _tune(stream)
        tornado.ioloop.IOLoop.current().call_later(self.handshake_timeout, self._first_request_due, stream)
        super().handle_stream(stream, address)

    def start_request(self, server_conn: Any, request_conn: tornado.httputil.HTTPConnection) -> Any:
        # A connection asks for its next request once the previous one was answered.
        client = self._clients.get(server_conn.stream)
        if client is not None:
            client.busy = False
        return _Watched(super().start_request(server_conn, request_conn), client)

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        self._forget(server_conn.stream)

    def _forget(self, stream: Any) -> None:
        client = self._clients.pop(stream, None)
        if client is not None:
            self.limits.release(client.address)

    def _first_request_due(self, stream: Any) -> None:
        client = self._clients.get(stream)
        if client is not None and not client.served:
            log.info("connection from %s closed: no request within %.0f s", client.address, self.handshake_timeout)
            self._forget(stream)
            stream.close()

    def _evict_idle(self) -> bool:
        idle = [(client.served, client.opened, id(stream), stream) for stream, client in self._clients.items() if not client.busy]
        if not idle:
            return False
        stream = min(idle)[3]
        log.info("connection from %s closed to make room for a new one", self._clients[stream].address)
        self._forget(stream)
        stream.close()
        return True


def own_audiences(settings: Settings, port: int) -> list[str]:
    """The names a token may give this service as ``aud`` (WLCG profile): ``https://host``, and with the port.

    Both the name clients reach this instance by and the load balancer's
    (``http.public_name``) count; a default port is never written.
    """
    names = [(public_host(settings), port)]
    if settings.http.public_name:
        names.append((settings.http.public_name, settings.http.public_port or settings.http.port))
    audiences = []
    for host, number in names:
        origin = f"https://{url_host(host)}"
        audiences += [origin] if number == 443 else [origin, f"{origin}:{number}"]
    return audiences


def token_verifier(settings: Settings, port: int) -> TokenVerifier | None:
    """The bearer-token checker the config asks for; None when it trusts no issuer."""
    issuers = []
    for name, spec in settings.tokens.issuers.items():
        try:
            issuers.append(TrustedIssuer.from_files(spec.issuer, spec.keys, spec.algorithms, spec.base_path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{settings.source}: tokens.issuers.{name}.keys: {exc}") from None
    audiences = [*own_audiences(settings, port), *settings.tokens.audiences]
    return TokenVerifier(issuers, audiences) if issuers else None


def _problem(settings: Settings, key: str, what: str, exc: BaseException) -> ConfigError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConfigError(f"{settings.source}: {key}: {what}: {reason}")


def _check_cache_root(settings: Settings) -> None:
    """The cache root must be a directory the service can make and enter."""
    root = settings.cache_root
    try:
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _problem(settings, "cache.root", f"cannot use {root} as the cache directory", exc) from None


def server_tls(settings: Settings) -> tuple[ServerCredentials, ServerContext]:
    """The host credentials and the TLS context, any problem named by the config key of the file at fault."""
    credentials = server_credentials(settings)
    try:
        return credentials, server_context(
            credentials.host_cert,
            credentials.host_key,
            credentials.ca_dir,
            min_version=settings.tls.min_version,
            crl_check=settings.tls.crl_check,
        )
    except (OSError, ValueError, ssl.SSLError) as exc:
        places = (("tls.host_key", credentials.host_key), ("tls.host_cert", credentials.host_cert), ("tls.ca_dir", credentials.ca_dir))
        named = str(exc) + str(getattr(exc, "filename", ""))
        key = next((key for key, path in places if str(path) in named), "tls")
        raise _problem(settings, key, "cannot load the host credentials", exc) from None


def _check_ports_free(settings: Settings) -> None:
    """A busy side or metrics port is found before the RPC port is even bound.

    A worker process skips this: its supervisor checked and holds the ports.
    """
    if settings.service.workers > 1:
        return
    http, metrics = settings.http, settings.metrics
    for key, server, host, port, wanted in (
        ("http.port", "side server", http.host or settings.service.host, http.port, http.enabled),
        ("metrics.port", "metrics endpoint", metrics.host, metrics.port, metrics.enabled),
    ):
        if wanted and port:  # port 0: any free port, never busy
            for probe in _bind(settings, key, server, host, port):
                probe.close()


def _bind(settings: Settings, key: str, server: str, host: str, port: int) -> list[socket.socket]:
    # Worker processes listen on one port each with SO_REUSEPORT (see seproxy.cli.supervisor).
    try:
        return listening_sockets(host or None, port, reuse_port=settings.service.workers > 1)
    except OSError as exc:
        raise _problem(settings, key, f"the {server} cannot listen on {host or '*'}:{port}", exc) from None


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, replaced: an admitting handler writes its own line, with the caller;
    the others (an unknown route) get a plain one here. Either way one line, at INFO, per request."""
    if isinstance(handler, AdmittingHandler):
        return
    request = handler.request
    access_log.info(
        "%s %s %r status=%d %.1fms",
        request.remote_ip, request.method, request.path[:200], handler.get_status(), 1000 * request.request_time(),
    )  # fmt: skip


class Service:
    """One instance of the HTTPS RPC service, serving the methods of ``handler``."""

    def __init__(self, settings: Settings, handler: type[RPCHandler]) -> None:
        self.settings = settings
        self.handler = handler
        self.port = settings.service.port
        self.credentials: ServerCredentials | None = None
        self._server: BoundedHTTPServer | None = None
        self._context: ServiceContext | None = None
        self._tls: ssl.SSLContext | None = None
        self.metrics: MetricsEndpoint | None = None

    @property
    def url(self) -> str:
        return service_url(self.settings, self.port)

    def start(self) -> None:
        """Check and open everything, bind every port, then serve; call from within the running event loop.

        A problem found here is a ``ConfigError`` naming the config file, the
        key and the problem, raised before any port serves a request.
        """
        _check_cache_root(self.settings)
        self.credentials, self._tls = server_tls(self.settings)
        _check_ports_free(self.settings)
        sockets = _bind(self.settings, "service.port", "RPC service", self.settings.service.host, self.settings.service.port)
        try:
            self._serve(sockets, self._tls)
        except BaseException:
            for sock in sockets:
                sock.close()
            if self._context is not None and self._context.shared is not None:
                self._context.shared.close()
            raise
        log.info("seproxy %s serving %s", __version__, self.url)

    def _serve(self, sockets: list[socket.socket], tls: ssl.SSLContext) -> None:
        service = self.settings.service
        assert self.credentials is not None
        self.port = sockets[0].getsockname()[1]
        self._context = ServiceContext(
            settings=self.settings,
            registry=Registry(self.settings.registry),
            executor=CallExecutor(service.worker_threads, service.call_timeout),
            url=self.url,
            ca_dir=self.credentials.ca_dir,
            tokens=token_verifier(self.settings, self.port),
            reload=self.reload,
        )
        self._context.shared = self.handler.initializeHandler(self._context)
        routes: list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]
        routes = [(self.settings.route, self.handler, {"service": self._context})]
        routes += [(self.settings.route + pattern, extra, {"service": self._context}) for pattern, extra in self.handler.extra_routes()]
        routes += [(pattern, extra, {"service": self._context}) for pattern, extra in self.handler.absolute_routes(self.settings)]
        app = _Application(
            routes,
            default_handler_class=NotFoundHandler,
            serve_traceback=False,
            log_function=log_request,
        )
        self._server = BoundedHTTPServer(
            app,
            ssl_options=tls,
            # Handlers stream their bodies and enforce their own limits, with
            # a clear 413; this only stops the HTTP layer from refusing first.
            max_body_size=1 << 40,
            idle_connection_timeout=service.idle_connection_timeout,
            max_connections=service.max_connections,
            max_per_address=service.max_connections_per_address,
            handshake_timeout=service.handshake_timeout,
        )
        metrics = self.settings.metrics
        if metrics.enabled:
            cache = self._context.shared.cache if self._context.shared is not None else None
            try:
                self.metrics = MetricsEndpoint(metrics.host, metrics.port, cache)
            except OSError as exc:
                where = f"{metrics.host}:{metrics.port}"
                raise _problem(self.settings, "metrics.port", f"the metrics endpoint cannot listen on {where}", exc) from None
        self._server.add_sockets(sockets)

    def reload(self) -> str:
        """Re-read the registry, authorization and token keys, and the host certificate; say what.

        SIGHUP and the ``refreshConfiguration`` call both come here, on the
        event loop. Other settings (ports, storage elements, cache) need a
        restart. A config that no longer loads raises ``ConfigError`` (and is
        logged); the running one is kept. New connections get the new
        certificate; open ones keep theirs.
        """
        if self._context is None or self._tls is None:
            raise ConfigError("the service is not running: nothing to reload")
        try:
            if self.settings.source.startswith("<"):
                fresh = self.settings  # the embedded default has no file to re-read
            else:
                fresh = load_settings(self.settings.source)
            tokens = token_verifier(fresh, self.port)
            credentials = server_credentials(fresh)
            self._tls.load_cert_chain(str(credentials.host_cert), str(credentials.host_key))
        except (ConfigError, OSError, ValueError, ssl.SSLError) as exc:
            message = f"reload failed, keeping the running configuration: {exc}"
            log.error("%s", message)
            raise ConfigError(message) from None
        self.settings.registry = fresh.registry
        self.settings.authorization = fresh.authorization
        self.settings.tokens = fresh.tokens
        self._context.registry = Registry(fresh.registry)
        self._context.tokens = tokens
        done = f"reloaded the registry, authorization, token keys and host certificate {credentials.host_cert} from {self.settings.source}"
        log.info("%s", done)
        return done

    def reload_on_signal(self) -> None:
        """SIGHUP's handler: a failed reload is logged, and the service runs on."""
        with contextlib.suppress(ConfigError):
            self.reload()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, give open connections ``grace`` seconds, then close them."""
        if self._server is None:
            return
        self._server.stop()
        try:
            await asyncio.wait_for(self._drained(), timeout=grace)
        except TimeoutError:
            log.warning("stopping with requests still running after %.0f s", grace)
        await self._server.close_all_connections()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self._context is not None:
            self._context.executor.shutdown(wait=False)
            if self._context.shared is not None:
                self._context.shared.close()
        self._server = None

    async def _drained(self) -> None:
        while self._context is not None and self._context.in_flight:
            await asyncio.sleep(0.05)


async def serve(
    settings: Settings, handler: type[RPCHandler], on_ready: Callable[[Service], None] | None = None
) -> None:
    """Run a service of ``handler`` until SIGTERM or SIGINT."""
    service = Service(settings, handler)
    service.start()
    if on_ready is not None:
        on_ready(service)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload_on_signal)
    await stopping.wait()
    log.info("stopping")
    await service.stop()
