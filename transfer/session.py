"""The HTTP session of a seproxy client, one small piece per concern.

Each mixin changes one thing about a ``requests.Session``; ``GridSession``
stacks them. One session lives as long as its client, so calls reuse
kept-alive TLS connections.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPSConnectionPool
from urllib3.connection import HTTPSConnection
from urllib3.util.retry import Retry

from seproxy import __version__
from seproxy.transfer.credentials import ClientCredentials, find_bearer_token
from seproxy.transfer.network_errors import TLSHandshakeTimeout
from seproxy.transfer.returnvalues import SErrorException

if TYPE_CHECKING:
    # The mixins are combined with requests.Session (GridSession); the type checker reads them as Sessions.
    _Session = requests.Session
else:
    _Session = object

USER_AGENT = f"seproxy-client/{__version__} {requests.utils.default_user_agent()}"


class GridCAMixin(_Session):
    """Verify servers against the configured grid CA directory, and nothing else.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a
    session's ``verify`` on every request, and those point at the system
    bundle on grid machines; a host certificate from a grid CA would then
    fail, or a system CA would be trusted where only grid CAs should be.
    Given a directory, urllib3 loads that alone: ``SSL_CERT_DIR`` and
    OpenSSL's default paths are not consulted either. ``verify_server``
    false (DIRAC's ``skipCACheck``) checks no server certificate at all.
    """

    credentials: ClientCredentials
    verify_server: bool = True

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if not self.verify_server:
            settings["verify"] = False
        elif self.credentials.ca_dir:
            settings["verify"] = self.credentials.ca_dir
        return settings


class ClientCertMixin(_Session):
    """Present the user's certificate, and pick up a renewed one.

    Long jobs renew their proxy in place. urllib3 loads the certificate only
    when it opens a connection, so when the file changes the kept-alive
    connections are dropped and the next one presents the new certificate.
    """

    credentials: ClientCredentials
    _cert_stamp: tuple[tuple[int, int, int], ...] | None = None

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["cert"] = _requests_cert(self.credentials)
        return settings

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        stamp = self._stamp_cert_files()
        if self._cert_stamp is not None and stamp != self._cert_stamp:
            for adapter in self.adapters.values():
                adapter.close()
        self._cert_stamp = stamp
        return super().send(request, **kwargs)

    def _stamp_cert_files(self) -> tuple[tuple[int, int, int], ...]:
        """Identify the current content of the files; OSError if one is gone."""
        paths = dict.fromkeys(p for p in (self.credentials.cert_file, self.credentials.key_file) if p)
        stats = (os.stat(path) for path in paths)
        return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


class BearerTokenMixin(_Session):
    """Send the WLCG bearer token, when one is found, besides the certificate.

    Discovery runs before every request, not once: token files are renewed
    every few minutes behind the client's back. With both a certificate and
    a token the client sends both, and the server decides which counts.
    """

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        try:
            token = find_bearer_token()
        except ValueError as exc:  # a token file the user named: no call without it
            raise SErrorException(str(exc), errno.EACCES) from None
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"
        return super().send(request, **kwargs)


class UserAgentMixin(_Session):
    """Name the client, so that server logs tell seproxy clients apart."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers["User-Agent"] = USER_AGENT


class ConnectRetryMixin(_Session):
    """Retry only failures to connect, never a request that may have been sent."""

    connect_retries = 2
    connect_backoff = 0.2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        adapter = ConnectRetryAdapter(self.connect_retries, self.connect_backoff)
        for prefix in ("https://", "http://"):
            self.mount(prefix, adapter)


class _HandshakeAwareConnection(HTTPSConnection):
    """Reports a TLS handshake timeout as a connect timeout.

    urllib3 calls it a read timeout, which would both forbid failover and
    claim that the call may have run, although nothing was sent.
    """

    def connect(self) -> None:
        try:
            super().connect()
        except TimeoutError as exc:
            raise TLSHandshakeTimeout(self, f"TLS handshake with {self.host} timed out") from exc


class _HandshakeAwarePool(HTTPSConnectionPool):
    ConnectionCls = _HandshakeAwareConnection


class ConnectRetryAdapter(HTTPAdapter):
    """An adapter whose urllib3 Retry allows connect retries only.

    Read, status and "other" retries are off: a POST that reached the server
    may have executed, and running it twice is worse than failing once.
    """

    def __init__(self, connect_retries: int, backoff: float) -> None:
        retry = Retry(
            total=None,
            connect=connect_retries,
            read=False,
            status=0,
            other=0,
            redirect=0,
            backoff_factor=backoff,
            respect_retry_after_header=False,
        )
        super().__init__(max_retries=retry)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pools = self.poolmanager.pool_classes_by_scheme
        self.poolmanager.pool_classes_by_scheme = {**pools, "https": _HandshakeAwarePool}


class GridSession(ClientCertMixin, BearerTokenMixin, GridCAMixin, UserAgentMixin, ConnectRetryMixin, requests.Session):
    """A session that authenticates with grid credentials (certificate, token) and trusts grid CAs."""

    def __init__(self, credentials: ClientCredentials, *, verify_server: bool = True) -> None:
        self.credentials = credentials
        self.verify_server = verify_server
        super().__init__()


def _requests_cert(credentials: ClientCredentials) -> str | tuple[str, str] | None:
    """The ``cert`` argument of requests: one path for a proxy, a pair otherwise."""
    if not credentials.cert_file:
        return None
    if credentials.key_file in (None, credentials.cert_file):
        return credentials.cert_file
    return (credentials.cert_file, credentials.key_file)
