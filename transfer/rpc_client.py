"""The client side of DIRAC's HTTPS RPC protocol.

Speaks exactly what DIRAC's TornadoClient sends (a form POST with ``method``,
``args``, ``clientVO``, ``clientSetup``), so the same client talks to seproxy
and to DIRAC services. Every call returns S_OK/S_ERROR: network trouble and
server errors are results, not exceptions, as DIRAC users expect.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from seproxy.transfer import codec
from seproxy.transfer.credentials import ClientCredentials, find_credentials, proxy_file
from seproxy.transfer.network_errors import NetworkFailure, classify
from seproxy.transfer.returnvalues import S_ERROR, ReturnValue, SErrorException, isReturnStructure
from seproxy.transfer.session import GridSession

MAY_HAVE_RUN = "the call may have been executed by the server"


class RPCClient:
    """Calls the exported methods of one service, reachable at one or more URLs.

    ``client.ping()`` and ``client.executeRPC("ping")`` are the same call.
    URLs are tried in order (shuffled once with ``randomize``); the client
    moves to the next only when a connection could not be established, and
    starts later calls from the URL that last answered.

    Code written for DIRAC's clients passes DIRAC's keyword names, and they
    mean what they mean in DIRAC 9.1's ``TornadoBaseClient``:
    ``proxyLocation`` (the proxy file, as ``proxy``), ``proxyString`` (the
    proxy itself, as text), ``useCertificates`` (the host certificate),
    ``skipCACheck`` (trust any server certificate), ``VO`` (as ``vo``),
    ``extraCredentials`` (as ``extra_credentials``), ``timeout`` and
    ``setup`` (the same names as ours); ``keepAliveLapse`` is accepted and
    has no effect, connections are kept alive anyway. As in DIRAC, a proxy
    file wins over ``useCertificates``, which wins over ``proxyString``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout: float = 600,
        proxy: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        ca_dir: str | None = None,
        use_certificates: bool = False,
        vo: str | None = None,
        setup: str | None = None,
        extra_credentials: Any = None,
        connect_timeout: float = 30,
        randomize: bool = False,
        # DIRAC's names, spelled as DIRAC code passes them:
        proxyLocation: str | None = None,
        proxyString: str | None = None,
        useCertificates: bool = False,
        skipCACheck: bool = False,
        VO: str | None = None,
        extraCredentials: Any = None,
        keepAliveLapse: float | None = None,  # accepted, no effect
    ) -> None:
        self._urls = _service_urls(url)
        if randomize:
            random.shuffle(self._urls)
        self._timeout = (connect_timeout, timeout)
        vo = _either("vo", vo, "VO", VO or None)
        extra_credentials = _either("extra_credentials", extra_credentials, "extraCredentials", extraCredentials or None)
        self._client_fields = {
            "clientVO": "unknown" if vo is None else str(vo),
            "clientSetup": "None" if setup is None else setup,
        }
        if extra_credentials is not None:
            self._client_fields["extraCredentials"] = codec.encode(extra_credentials)
        proxy = _either("proxy", proxy, "proxyLocation", proxyLocation)
        self._temporary: list[str] = []
        if proxyString and not proxy and not useCertificates:
            proxy = proxy_file(proxyString)
            self._temporary.append(proxy)
        self._forget_temporary = weakref.finalize(self, _remove, self._temporary)
        try:
            credentials = find_credentials(
                proxy=proxy,
                cert=cert,
                key=key,
                ca_dir=ca_dir,
                use_certificates=use_certificates,
                host_certificate=bool(useCertificates),
            )
        except ValueError:
            self._forget_temporary()
            raise
        self._session = GridSession(credentials, verify_server=not skipCACheck)

    def __getattr__(self, name: str) -> Callable[..., ReturnValue]:
        # Private and special names are never remote methods: copy, pickle
        # and friends probe for them and must get AttributeError.
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.executeRPC, name)

    def executeRPC(self, method: str, *args: Any) -> ReturnValue:
        """Call ``method`` on the service; always a result, never an exception."""
        try:
            return dirac_result(self._post(method, args))
        except SErrorException as exc:
            return exc.result

    @property
    def credentials(self) -> ClientCredentials:
        """The identity and CAs this client presents and trusts, found once when it was made."""
        return self._session.credentials

    def close(self) -> None:
        """Close the kept-alive connections (and remove the file a ``proxyString`` was written to)."""
        self._session.close()
        self._forget_temporary()

    def __enter__(self) -> RPCClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(
        self,
        method: str,
        args: Sequence[Any],
        *,
        raw: bool = False,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one call, failing over between URLs; raise ``SErrorException`` on failure.

        Returns only a 2xx response. Its body has been read unless ``stream``
        is set, in which case the caller reads it (a raw download); ``raw``
        asks the service for the bytes rather than JSON. ``headers`` go with
        the call (``Range`` when a download resumes).
        """
        form = self._form(method, args, raw)
        accept = "application/octet-stream, application/json" if raw else "application/json"
        return self._request("POST", "", data=form, headers={"Accept": accept, **(headers or {})}, stream=stream)

    def _request(
        self, http_method: str, route: str, *, data: Any, headers: Mapping[str, str], stream: bool = False
    ) -> requests.Response:
        """One request to ``<service URL><route>``, failing over as ``_post`` does.

        ``data`` may be an iterable body (a streamed upload): it is iterated
        again if a connection fails before the request could be processed.
        """
        failures: list[tuple[str, NetworkFailure]] = []
        for url in list(self._urls):
            try:
                response = self._session.request(
                    http_method,
                    url + route,
                    data=data,
                    headers=headers,
                    timeout=self._timeout,
                    stream=True,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                failure = classify(exc)
                if failure.may_have_reached_server:
                    raise _after_send_error(url, failure) from None
                failures.append((url, failure))
                continue
            except OSError as exc:  # the local certificate or CA files, before any connection
                raise _credentials_error(exc, self._session.credentials.source) from None
            self._prefer(url)
            return _checked(response, stream)
        raise SErrorException(_unreachable(failures))

    def _form(self, method: str, args: Sequence[Any], raw: bool) -> dict[str, str]:
        try:
            encoded_args = codec.encode(list(args))
        except codec.CodecError as exc:
            raise SErrorException(f"cannot send the arguments of {method}: {exc}", errno.EINVAL) from None
        form = {"method": method, "args": encoded_args, **self._client_fields}
        if raw:
            form["rawContent"] = "True"
        return form

    def _prefer(self, url: str) -> None:
        """Start later calls from ``url``, which just answered."""
        # One rebinding, so that concurrent calls never see a list in mid-change.
        self._urls = [url, *(other for other in self._urls if other != url)]


def _either(ours: str, value: Any, dirac: str, dirac_value: Any) -> Any:
    """The value of an option given under our name or DIRAC's; both, differing, is a mistake."""
    if value is not None and dirac_value is not None and value != dirac_value:
        raise ValueError(f"{ours}={value!r} and {dirac}={dirac_value!r} disagree: give one of them")
    return dirac_value if value is None else value


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    paths.clear()


def _service_urls(url: str | Sequence[str]) -> list[str]:
    """The URLs as a list; a string may hold several, comma-separated, as in DIRAC."""
    items = url.split(",") if isinstance(url, str) else url
    urls = [item.strip() for item in items if item.strip()]
    if not urls:
        raise ValueError("no service URL given")
    for item in urls:
        if not _is_service_url(item):
            raise ValueError(f"{item!r} is not a service URL like https://host:port/System/Component")
    return urls


def _is_service_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname)


def _checked(response: requests.Response, stream: bool) -> requests.Response:
    """``response`` if it is a success; the server's error as an exception otherwise."""
    succeeded = 200 <= response.status_code < 300
    if succeeded and stream:
        return response
    try:
        _ = response.content  # read now, so that a cut-off answer is classified here
    except requests.RequestException as exc:
        response.close()
        raise _after_send_error(response.url, classify(exc, answer_started=True)) from None
    if not succeeded:
        raise SErrorException(_status_error(response))
    return response


def dirac_result(response: requests.Response) -> ReturnValue:
    """The S_OK/S_ERROR in a JSON answer; EPROTO when the body is not one."""
    try:
        result = codec.decode(response.content)
    except codec.CodecError as exc:
        return _not_a_result(response, str(exc))
    if not isReturnStructure(result):
        return _not_a_result(response, f"a JSON {type(result).__name__} without OK/Value/Message")
    return result


def _not_a_result(response: requests.Response, detail: str) -> ReturnValue:
    return S_ERROR(errno.EPROTO, f"{response.url} answered something that is not a DIRAC result: {detail}")


def _status_error(response: requests.Response) -> ReturnValue:
    """The S_ERROR for a non-2xx answer: the server's own S_ERROR when it sent one."""
    try:
        body = codec.decode(response.content)
    except codec.CodecError:
        body = None
    if isReturnStructure(body) and not body["OK"]:
        return body
    status = f"{response.status_code} {response.reason or ''}".strip()
    if response.status_code in (401, 403):
        return S_ERROR(errno.EACCES, f"{response.url} refused the call: {status}")
    if response.status_code == 501:
        return S_ERROR(errno.ENOSYS, f"{response.url} does not implement the method: {status}")
    return S_ERROR(errno.EIO, f"{response.url} answered {status}")


def _credentials_error(exc: OSError, source: str) -> SErrorException:
    detail = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    return SErrorException(f"cannot use the credentials from {source}: {detail}", exc.errno or errno.EIO)


def _after_send_error(url: str, failure: NetworkFailure) -> SErrorException:
    return SErrorException(f"{url}: {failure.reason}; {MAY_HAVE_RUN}", failure.errno)


def _unreachable(failures: list[tuple[str, NetworkFailure]]) -> ReturnValue:
    """One error naming every URL tried and why it failed; the last failure's errno."""
    reasons = "; ".join(f"{url}: {failure.reason}" for url, failure in failures)
    if len(failures) == 1:
        message = f"cannot connect to {reasons}"
    else:
        message = f"all {len(failures)} service URLs failed: {reasons}"
    return S_ERROR(failures[-1][1].errno, message)
