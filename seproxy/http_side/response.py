"""An answer of the side server: status, headers, body pieces, and what to release when it is sent."""

from __future__ import annotations

import email.utils
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from seproxy import __version__
from seproxy.http_side.body import Piece

SERVER = f"seproxy/{__version__}"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class Refused(Exception):
    """A request to answer with ``status`` and a short text (``plain``) instead of a file."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    # Empty for HEAD; Content-Length is always among the headers.
    body: list[Piece] = field(default_factory=list)
    # Close the connection after this answer (refusals of malformed requests).
    close: bool = False
    # Called once the body is sent or abandoned: drops the cache read leases.
    release: Callable[[], None] = lambda: None
    # Called then too, with the file bytes sent by (storage element, file still being staged): counts them.
    served: Callable[[Mapping[tuple[str | None, bool], int]], None] = lambda sent: None
    # For the access log: "<key id>:<link id>", never the signature.
    key: str = "-"
    # Header lines encoded once for many answers (``encode_headers``), sent after ``headers``.
    encoded: bytes = b""

    def head(self, keep_alive: bool) -> bytes:
        """The status line and headers, ``Date``, ``Server`` and ``Connection`` included."""
        connection = _KEEP_ALIVE if keep_alive and not self.close else _CLOSE
        headers = encode_headers(self.headers) if self.headers else b""
        return b"".join((_start(self.status), headers, self.encoded, connection))


_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as they go out, each ending in CRLF."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")


def plain(status: int, message: str, *, close: bool = False, extra: list[tuple[str, str]] | None = None) -> Response:
    """A short text answer (a refusal): never a file."""
    text = f"{status} {_PHRASES[status]}: {message}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text))), *(extra or [])]
    return Response(status, headers, [text], close=close)


# The second the lines in it were made for, and the lines by status (threads share them: a line
# made twice, or into the dict of a second just past, is only made in vain).
_starts: tuple[int, dict[int, bytes]] = (0, {})


def _start(status: int) -> bytes:
    """The status line, ``Date`` and ``Server`` of an answer sent now: made once a second per status,
    not once a request (formatting them cost more than the rest of a repeated answer's head)."""
    global _starts
    now = int(time.time())
    second, lines = _starts
    if second != now:
        lines = {}
        _starts = (now, lines)
    line = lines.get(status)
    if line is None:
        line = lines[status] = f"HTTP/1.1 {status} {_PHRASES[status]}\r\nDate: {http_date(now)}\r\nServer: {SERVER}\r\n".encode("latin-1")
    return line


@functools.lru_cache(maxsize=4096)
def http_date(seconds: int) -> str:
    """``seconds`` (since the epoch) as an HTTP date; remembered, for every answer about a cached file
    carries its ``Last-Modified`` and formatting a date costs more than the rest of its headers."""
    return email.utils.formatdate(seconds, usegmt=True)
