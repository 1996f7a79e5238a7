"""Assembling and running one seproxy instance.

``Service`` wires the pieces together (credentials, TLS, registry, thread
pool, the Tornado application) and owns their lifetime: start listening,
stop listening, let in-flight calls finish within a grace period, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from seproxy import __version__
from seproxy.config import ConfigError, Settings, load_settings, url_host
from seproxy.metrics import MetricsEndpoint
from seproxy.registry import Registry
from seproxy.rpc.admission import AdmittingHandler
from seproxy.rpc.admission import log as access_log
from seproxy.rpc.context import ServiceContext
from seproxy.rpc.executor import CallExecutor
from seproxy.rpc.handler import NotFoundHandler, RPCHandler
from seproxy.security.host_credentials import ServerCredentials, server_credentials
from seproxy.security.tls import server_context
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


class BoundedHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer that closes connections beyond a fixed number at once."""

    def initialize(self, *args: Any, max_connections: int = 1024, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections

    def handle_stream(self, stream: Any, address: Any) -> None:
        if len(self._connections) >= self.max_connections:
            log.warning("connection from %s refused: %d connections open", address, len(self._connections))
            stream.close()
            return
        super().handle_stream(stream, address)


def token_verifier(settings: Settings, audience: str) -> TokenVerifier | None:
    """The bearer-token checker the config asks for; None when it trusts no issuer."""
    issuers = []
    for name, spec in settings.tokens.issuers.items():
        try:
            issuers.append(TrustedIssuer.from_files(spec.issuer, spec.keys, spec.algorithms))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{settings.source}: tokens.issuers.{name}.keys: {exc}") from None
    return TokenVerifier(issuers, settings.tokens.audiences or [audience]) if issuers else None


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

    @property
    def origin(self) -> str:
        """``https://host:port``: what bearer tokens name as their audience by default."""
        return self.url[: -len(self.settings.route)]

    def start(self) -> None:
        """Bind and listen; call from within the running event loop."""
        service = self.settings.service
        self.credentials = server_credentials(self.settings)
        self._tls = tls = server_context(
            self.credentials.host_cert,
            self.credentials.host_key,
            self.credentials.ca_dir,
            min_version=self.settings.tls.min_version,
            crl_check=self.settings.tls.crl_check,
        )
        sockets = tornado.netutil.bind_sockets(service.port, service.host, backlog=1024)
        self.port = sockets[0].getsockname()[1]
        self._context = ServiceContext(
            settings=self.settings,
            registry=Registry(self.settings.registry),
            executor=CallExecutor(service.worker_threads, service.call_timeout),
            url=self.url,
            ca_dir=self.credentials.ca_dir,
            tokens=token_verifier(self.settings, self.origin),
            reload=self.reload,
        )
        self._context.shared = self.handler.initializeHandler(self._context)
        routes: list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]
        routes = [(self.settings.route, self.handler, {"service": self._context})]
        routes += [(self.settings.route + pattern, extra, {"service": self._context}) for pattern, extra in self.handler.extra_routes()]
        app = tornado.web.Application(
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
        )
        self._server.add_sockets(sockets)
        if self.settings.metrics.enabled:
            cache = self._context.shared.cache if self._context.shared is not None else None
            self.metrics = MetricsEndpoint(self.settings.metrics.host, self.settings.metrics.port, cache)
        log.info("seproxy %s serving %s", __version__, self.url)

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
            tokens = token_verifier(fresh, self.origin)
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
