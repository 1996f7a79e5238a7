"""Plugin "webdav": HTTP(S) storage such as dCache, StoRM, EOS or XRootD's HTTP door.

One ``requests`` session per element keeps connections alive. Three things are
not what a plain ``requests`` user would expect:

* the CA directory is passed with every request, because ``REQUESTS_CA_BUNDLE``
  and ``CURL_CA_BUNDLE`` in the environment beat a session's own ``verify``;
* checksums come from RFC 3230 instance digests: we send ``Want-Digest:
  adler32`` and read ``Digest: adler32=<hex>``, which dCache and StoRM answer;
* an upload is PUT under a temporary name and MOVEd into place, because a
  server keeps what a broken-off PUT delivered under the name it was sent to.
"""

from __future__ import annotations

import errno
import functools
import http.client
import mmap
import os
import secrets
import socket
import ssl
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from seproxy import __version__
from seproxy.config import StorageElementSettings
from seproxy.storage.base import (
    CHUNK_SIZE,
    FileInfo,
    ReadStream,
    StorageElement,
    StorageUnavailable,
)
from seproxy.transfer.checksum_headers import canonical_adler32, parse_digest
from seproxy.transfer.network_errors import causes

_DAV = "{DAV:}"
# How many bytes of a download may wait for the cache (in a ring the connection's thread reads into).
_RING_SIZE = 16 * 1024 * 1024
# The most a body that urllib3 must decode is read at a time (each read allocates what it may
# return, for a TLS record of 16 KiB).
_COPIED_PIECE = 64 * 1024
# What urllib3, or the socket under it, raises mid-body, as requests would have raised it (so
# _transport names the failure); the first kind that matches counts.
_BODY_ERRORS: dict[type[Exception], type[requests.exceptions.RequestException]] = {
    urllib3.exceptions.ProtocolError: requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ReadTimeoutError: requests.exceptions.ConnectionError,
    urllib3.exceptions.SSLError: requests.exceptions.SSLError,
    TimeoutError: requests.exceptions.ConnectionError,
    ssl.SSLError: requests.exceptions.SSLError,
    OSError: requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException: requests.exceptions.ChunkedEncodingError,
}
_PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<propfind xmlns="DAV:"><prop><resourcetype/><getcontentlength/><getlastmodified/></prop></propfind>'
)
_STATUS_ERRNO = {
    400: errno.EINVAL,
    401: errno.EACCES,
    403: errno.EACCES,
    404: errno.ENOENT,
    405: errno.EPERM,
    409: errno.EEXIST,
    412: errno.EEXIST,
    413: errno.EFBIG,
    414: errno.ENAMETOOLONG,
    423: errno.EBUSY,
    507: errno.ENOSPC,
}


class _LargeBlockAdapter(HTTPAdapter):
    """Sends request bodies in CHUNK_SIZE blocks instead of http.client's 16 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = CHUNK_SIZE
        super().init_poolmanager(*args, **kwargs)


class WebDavStorage(StorageElement):
    plugin = "webdav"
    schemes = ("https", "http")
    base_form = "an https:// URL such as https://dcache.example.org:2880/pnfs/example.org/data"

    def __init__(
        self, name: str, settings: StorageElementSettings, *, default_ca_dir: Path | None = None
    ) -> None:
        super().__init__(name, settings, default_ca_dir=default_ca_dir)
        ca_dir = settings.ca_dir or default_ca_dir
        if ca_dir is not None and not ca_dir.is_dir():
            raise self._config_error("ca_dir", f"{ca_dir} is not a directory")
        if settings.bearer_token_file is not None and self._scheme != "https":
            raise self._config_error("bearer_token_file", "a bearer token is only ever sent over https")
        # Given with every request: a session's own verify would lose to REQUESTS_CA_BUNDLE.
        self._verify: str | bool = str(ca_dir) if ca_dir is not None else True
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"seproxy/{__version__}"
        for prefix in ("https://", "http://"):
            self._session.mount(prefix, _LargeBlockAdapter())
        if settings.x509_proxy is not None:
            self._session.cert = str(settings.x509_proxy)
        elif settings.x509_cert is not None:
            self._session.cert = (str(settings.x509_cert), str(settings.x509_key or settings.x509_cert))

    def _url_path(self, storage_path: str) -> str:
        return quote(storage_path, safe="/")

    def _unquote(self, url_path: str) -> str:
        return unquote(url_path)

    # -- HTTP --------------------------------------------------------------

    def _auth_headers(self, path: str) -> dict[str, str]:
        token_file = self.settings.bearer_token_file
        if token_file is None:
            return {}
        try:  # read at every request: tokens are renewed behind our back
            token = token_file.read_text().strip()
        except OSError as exc:
            raise PermissionError(
                errno.EACCES, f"{self.name}: {path}: cannot read the bearer token file {token_file}: {exc.strerror}"
            ) from None
        return {"Authorization": f"Bearer {token}"}

    @contextmanager
    def _transport(self, path: str) -> Iterator[None]:
        """Turn a failure to talk to the server into StorageUnavailable."""
        try:
            yield
        except requests.exceptions.RequestException as exc:
            code = _errno_of(exc)
            if isinstance(exc, requests.exceptions.SSLError):
                detail = f"TLS failed (CA directory {self._verify}): {_innermost(exc)}"
            elif isinstance(exc, requests.exceptions.ChunkedEncodingError):  # reached, then lost mid-body
                code, detail = errno.ECONNRESET, f"the connection broke during the transfer: {_innermost(exc)}"
            elif code == errno.ETIMEDOUT:
                detail = f"no answer within {self.settings.timeout:g} s"
            else:
                detail = f"unreachable: {_innermost(exc)}"
            raise StorageUnavailable(code, f"{self.name}: {path}: storage at {self._netloc}: {detail}") from None

    def _request(
        self, method: str, path: str, *, ok: tuple[int, ...], headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        with self._transport(path):
            response = self._session.request(
                method,
                self.url(path),
                headers={**(headers or {}), **self._auth_headers(path)},
                verify=self._verify,
                timeout=self.settings.timeout,
                **kwargs,
            )
        if response.status_code not in ok:
            response.close()
            raise self._status_error(response, method, path)
        return response

    def _status_error(self, response: requests.Response, method: str, path: str) -> OSError:
        answer = f"{method} answered {response.status_code} {response.reason}"
        code = _STATUS_ERRNO.get(response.status_code)
        if code is None and response.status_code >= 500:
            return StorageUnavailable(errno.EHOSTUNREACH, f"{self.name}: {path}: storage failed: {answer}")
        code = code or errno.EIO
        return self._error(code, path, f"{os.strerror(code)} ({answer})")

    def _propfind(self, path: str, depth: int) -> Iterator[tuple[str, ElementTree.Element]]:
        """Each ``response`` of a PROPFIND with its decoded href path (no trailing slash)."""
        response = self._request(
            "PROPFIND",
            path,
            ok=(207,),
            headers={"Depth": str(depth), "Content-Type": "application/xml; charset=utf-8"},
            data=_PROPFIND_BODY,
        )
        with self._transport(path):
            body = response.content
        # Entity declarations are how XML bombs work; no WebDAV server needs them.
        if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
            raise self._error(errno.EPROTO, path, "PROPFIND answer declares a DOCTYPE; refused")
        try:
            tree = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            raise self._error(errno.EPROTO, path, f"PROPFIND answer is not XML: {exc}") from None
        for node in tree.iter(f"{_DAV}response"):
            yield unquote(urlsplit(node.findtext(f"{_DAV}href", "")).path).rstrip("/"), node

    @staticmethod
    def _info(node: ElementTree.Element, path: str) -> FileInfo:
        # Properties a resource lacks come back empty (in a 404 propstat), which reads as absent.
        is_dir = node.find(f".//{_DAV}resourcetype/{_DAV}collection") is not None
        size = node.findtext(f".//{_DAV}getcontentlength") or ""
        modified = node.findtext(f".//{_DAV}getlastmodified")
        return FileInfo(path, int(size) if size.isdigit() and not is_dir else 0, is_dir, _http_date(modified))

    # -- the primitives ----------------------------------------------------

    def _stat(self, path: str) -> FileInfo:
        for _, node in self._propfind(path, 0):
            return self._info(node, path)
        raise self._error(errno.EPROTO, path, "PROPFIND answer is empty")

    def _checksums(self, path: str) -> dict[str, str]:
        response = self._request("HEAD", path, ok=(200,), headers={"Want-Digest": "adler32"})
        response.close()
        return _digest(response.headers.get("Digest", ""))

    def _listdir(self, path: str) -> list[FileInfo]:
        own = self._storage_path(path).rstrip("/")
        entries = []
        for href, node in self._propfind(path, 1):
            if href != own:
                entries.append(self._info(node, f"{path.rstrip('/')}/{href.rsplit('/', 1)[-1]}"))
            elif not self._info(node, path).is_dir:
                raise self._error(errno.ENOTDIR, path, "not a directory")
        return sorted(entries, key=lambda entry: entry.path)

    def _mkdir(self, path: str) -> None:
        response = self._request("MKCOL", path, ok=(201, 405, 409))
        response.close()
        if response.status_code == 409:  # a parent is missing: MKCOL makes one level only
            self._mkdir(path.rsplit("/", 1)[0] or "/")
            self._request("MKCOL", path, ok=(201, 405)).close()
        elif response.status_code == 405 and not self._stat(path).is_dir:
            raise self._error(errno.EEXIST, path, "exists and is not a directory")

    def _delete(self, path: str) -> None:
        self._request("DELETE", path, ok=(200, 202, 204)).close()

    _rmdir = _remove = _delete
    # A DELETE of a collection removes it with everything below.
    _remove_tree = _delete

    @contextmanager
    def _open_read(self, path: str) -> Iterator[ReadStream]:
        response = self._request(
            "GET", path, ok=(200,), headers={"Want-Digest": "adler32", "Accept-Encoding": "identity"}, stream=True
        )
        with response:
            length = response.headers.get("Content-Length")
            yield ReadStream(
                int(length) if length is not None else None,
                _digest(response.headers.get("Digest", "")),
                _http_date(response.headers.get("Last-Modified")),
                self._chunks(response, path),
            )

    def _chunks(self, response: requests.Response, path: str) -> Iterator[memoryview]:
        with self._transport(path):
            yield from _arriving(response.raw)

    def _write(self, stream: Any, size: int, path: str) -> None:
        # A PUT cut off half-way (a service killed mid-push) leaves what arrived under the name it
        # was sent to: send to a temporary name beside the target, then MOVE it into place.
        try:
            existing: FileInfo | None = self._stat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and existing.is_dir:  # a MOVE would replace the whole tree
            raise self._error(errno.EISDIR, path, "is a directory")
        parent, name = path.rsplit("/", 1)
        temporary = f"{parent}/.{name[:100]}.{secrets.token_hex(8)}.part"
        try:
            # requests takes the length from the file; an empty file would go out chunked.
            self._request("PUT", temporary, ok=(200, 201, 204), data=stream if size else b"").close()
            into_place = {"Destination": self.url(path), "Overwrite": "T"}
            self._request("MOVE", temporary, ok=(201, 204), headers=into_place).close()
        except BaseException:
            with suppress(OSError):
                self._delete(temporary)
            raise


def _digest(header: str) -> dict[str, str]:
    """The adler32 of an RFC 3230 ``Digest`` header (``adler32=0a1b2c3d, md5=...``)."""
    checksum = canonical_adler32(parse_digest(header).get("adler32", ""))
    return {"adler32": checksum} if checksum else {}


def _http_date(text: str | None) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp() if text else None
    except (TypeError, ValueError):
        return None


def _errno_of(exc: BaseException) -> int:
    chain = list(causes(exc))
    if any(isinstance(cause, ConnectionRefusedError) for cause in chain):
        return errno.ECONNREFUSED
    if any(isinstance(cause, TimeoutError) for cause in chain):  # socket timeouts, connect or read
        return errno.ETIMEDOUT
    return errno.EHOSTUNREACH


def _innermost(exc: BaseException) -> str:
    *_, last = causes(exc)
    return str(last)


def _arriving(raw: urllib3.HTTPResponse) -> Iterator[memoryview]:
    """A body in blocks of what has arrived: a thread takes the bytes off the connection into a
    ring as they come, and each block is all that waits there, up to ``CHUNK_SIZE``.

    Readers that stream a file while it is staged must see a slow storage's bytes as they come,
    and nothing that arrived may sit in a half-filled block while the next read waits for a storage
    that paused; a fast storage, on the other hand, must give few large blocks (each write into
    the cache has a fixed cost). Reading in this thread alone could not do both: a read that
    gathers a block blocks with the block in hand.

    The bytes are decrypted straight into the ring and handed on as views of it, never copied
    on the way: at the storage's full speed a copy, or a new object per TLS record, costs as much
    CPU as the TLS itself. A block is valid until the next one is asked for.
    """
    ring = _Ring(_read_into(raw))
    threading.Thread(target=ring.fill, name="webdav-body", daemon=True).start()
    try:
        yield from ring.blocks()
    finally:
        # The connection is closed by the caller; a read blocked on it then fails and the thread ends.
        ring.stop()


def _read_into(raw: urllib3.HTTPResponse) -> Callable[[memoryview], int]:
    """How to read the body into a buffer: what one read of the connection gives (one TLS record),
    bounded by the announced length.

    The fast way reads the socket itself, once http.client's buffered reader has given what it
    took in with the header, so only for a body that needs nothing from http.client or urllib3
    on the way: neither chunked nor encoded, of a known length. Any other body goes through
    urllib3's ``read1`` and a copy.
    """
    inner = getattr(raw, "_fp", None)
    sock = getattr(raw.connection, "sock", None)
    plain = raw.headers.get("Content-Encoding", "identity").lower() == "identity"
    if (
        not plain
        or not isinstance(inner, http.client.HTTPResponse)
        or inner.chunked
        or inner.length is None
        or not isinstance(sock, socket.socket)
    ):
        return functools.partial(_copied, raw)
    buffered: Any = inner.fp
    left = inner.length

    def read_into(buffer: memoryview) -> int:
        nonlocal buffered, left
        if not left:
            return 0
        if left < len(buffer):
            buffer = buffer[:left]
        if buffered is None:
            count: int = sock.recv_into(buffer)
        else:  # a peek reads the socket only when the reader holds nothing
            held = len(buffered.peek(0))
            count = buffered.readinto(buffer[:held]) if held else 0
            if held <= count:
                buffered = None
        if not count:
            raise urllib3.exceptions.ProtocolError(f"the connection closed with {left} bytes of the body unsent")
        left -= count
        return count

    return read_into


def _copied(raw: urllib3.HTTPResponse, buffer: memoryview) -> int:
    piece = raw.read1(min(len(buffer), _COPIED_PIECE))
    buffer[: len(piece)] = piece
    return len(piece)


class _Ring:
    """The bytes of one body between the thread that reads the connection (``fill``) and the one
    that writes them into the cache (``blocks``).

    Each side takes the lock only to wait, or to wake the other when it waits: at a fast storage's
    speed a lock per TLS record would cost more than the record. Only ``fill`` moves ``produced``
    and only ``blocks`` moves ``consumed``; a side reads the other's count without the lock, which
    can only make it see too little room or too few bytes, never too much, and the flag a side sets
    (under the lock) before it looks for the last time tells the other to wake it.
    """

    def __init__(self, read_into: Callable[[memoryview], int]) -> None:
        self._read_into = read_into
        # Anonymous memory, zero pages given as they are first written: a bytearray would zero all
        # of it before the first byte could be read (milliseconds added to every first byte).
        self._view = memoryview(mmap.mmap(-1, _RING_SIZE))
        self._changed = threading.Condition()
        self._produced = self._consumed = 0
        self._ended = False
        self._error: BaseException | None = None
        self._stopped = False
        self._filler_waits = self._reader_waits = False

    def fill(self) -> None:
        """The reading thread: into the ring until the body ends, fails or nobody reads any more."""
        try:
            while not self._stopped:
                room = _RING_SIZE - (self._produced - self._consumed)
                if not room:
                    with self._changed:
                        self._filler_waits = True
                        while self._produced - self._consumed == _RING_SIZE and not self._stopped:
                            self._changed.wait()
                        self._filler_waits = False
                    continue
                start = self._produced % _RING_SIZE
                count = self._read_into(self._view[start : start + min(room, _RING_SIZE - start)])
                if not count:
                    break
                self._produced += count
                if self._reader_waits:
                    self._wake()
        except BaseException as exc:  # handed to the reader, who raises it after the bytes before it
            self._error = _as_requests_error(exc)
        self._ended = True
        self._wake()

    def blocks(self) -> Iterator[memoryview]:
        """What has arrived, in views of at most ``CHUNK_SIZE``; the body's failure at its end."""
        while True:
            if self._produced == self._consumed:
                with self._changed:
                    self._reader_waits = True
                    while self._produced == self._consumed and not self._ended:
                        self._changed.wait()
                    self._reader_waits = False
                if self._produced == self._consumed:  # ended, and all that came was handed on
                    if self._error is not None:
                        raise self._error
                    return
            start = self._consumed % _RING_SIZE
            count = min(self._produced - self._consumed, _RING_SIZE - start, CHUNK_SIZE)
            yield self._view[start : start + count]
            self._consumed += count
            if self._filler_waits:
                self._wake()

    def stop(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


def _as_requests_error(exc: BaseException) -> BaseException:
    """A failure reading a body as requests would have raised it (so that _transport names it)."""
    for kind, wrap in _BODY_ERRORS.items():
        if isinstance(exc, kind):
            wrapped = wrap(exc)
            wrapped.__cause__ = exc
            return wrapped
    return exc
