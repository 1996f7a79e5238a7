"""Reading one HTTP/1.x request head, strictly and within fixed limits.

The side server serves ``GET``, ``HEAD``, ``OPTIONS`` and ``PROPFIND`` of short
paths, so a head is small: anything larger, oddly shaped or ambiguous is
refused with the status RFC 9110/9112 give for it (400 malformed, 414
request line too long, 431 headers too large, 405 another method, 505
another HTTP version) rather than guessed at. Only a ``PROPFIND`` has a
body, of at most ``MAX_BODY`` bytes announced by ``Content-Length`` (413
if larger, 411 if sent chunked); a body on another method is refused. The
connection is closed after every refusal, since what follows on it cannot
be trusted to start a request.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from seproxy.http_side.response import Refused

MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384
MAX_HEADERS = 64
METHODS = ("GET", "HEAD", "OPTIONS", "PROPFIND")
ALLOW = ", ".join(METHODS)
# A PROPFIND body names a few properties; davix sends some 300 bytes.
MAX_BODY = 65536
_WITH_BODY = ("PROPFIND",)
_DIGITS = re.compile(r"[0-9]{1,20}")

_LINE_END = re.compile(r"\r?\n")
# The target has no blank, no control character (C0, DEL, C1) and no NBSP.
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f-\xa0]+) HTTP/([0-9])\.([0-9])")
# A field value is visible characters, spaces and tabs: no control character. The value is
# taken whole and trimmed after: a lazy group before [ \t]* backtracks quadratically on blanks.
_HEADER = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):(.*)", re.DOTALL)
_FIELD_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
# Headers that must not appear twice: two values would make the request ambiguous.
_SINGLE = ("host", "content-length")
# Heads remembered once parsed, and the longest remembered (at most some MiB; then it starts again).
REMEMBERED = 1024
REMEMBERED_HEAD = 2048


@dataclass(frozen=True)
class RequestHead:
    method: str
    # The path of the target, still percent-encoded, without a query.
    path: str
    version: tuple[int, int]
    # Lowercased names; repeated headers joined with ", ". Never changed: requests of the same bytes share it.
    headers: dict[str, str]
    # Bytes of body that follow the head (read by the server into ``body``).
    body_length: int = 0
    body: bytes = b""

    @functools.cached_property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after the answer."""
        tokens = {token.strip().lower() for token in self.headers.get("connection", "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


def head_end(buffer: bytes | bytearray) -> int | None:
    """The length of the request head at the start of ``buffer`` (blank line included), or None if
    it has not all arrived; raises ``Refused`` once the head is over the limits without an end."""
    # The blank line is "\n\r\n" (CRLF heads) or "\n\n" (bare LF): two plain searches in C, for the
    # head is looked for in every read of every request.
    with_cr = buffer.find(b"\n\r\n", 0, MAX_HEAD + 4)
    # A bare one ends the head first only if it starts at or before the other: looked for up to there.
    bare = buffer.find(b"\n\n", 0, MAX_HEAD + 4 if with_cr < 0 else with_cr + 2)
    if bare >= 0:
        return bare + 2
    if with_cr >= 0:
        return with_cr + 3
    line_end = buffer.find(b"\n", 0, MAX_REQUEST_LINE + 2)
    if line_end < 0 and len(buffer) > MAX_REQUEST_LINE:
        raise Refused(414, "request line too long")
    if len(buffer) > MAX_HEAD:
        raise Refused(431, "request headers too large")
    return None


# Heads parsed lately, by their bytes (shared by the server's threads: one dict operation each).
_parsed: dict[bytes, RequestHead] = {}


def parse_head(raw: bytes) -> RequestHead:
    """Parse a complete request head (as delimited by ``head_end``); a head seen lately is not parsed
    again: a popular URL is asked with the very same bytes again and again (a client's repeats, a
    thousand jobs of one kind), and parsing cost more than the rest of a small answer's Python."""
    head = _parsed.get(raw)
    if head is None:
        head = _parse(raw)
        if len(raw) <= REMEMBERED_HEAD:
            if len(_parsed) >= REMEMBERED:
                _parsed.clear()
            _parsed[raw] = head
    return head


def whole_head(data: bytes) -> RequestHead | None:
    """The request head ``data`` is, if it is exactly one whole head (a keep-alive client's next request,
    read as it came); None if it is not. A head remembered by ``parse_head`` is one by its bytes alone:
    no look for its end."""
    head = _parsed.get(data)
    if head is None and head_end(data) == len(data):
        head = parse_head(data)
    return head


def _parse(raw: bytes) -> RequestHead:
    lines = _LINE_END.split(raw.decode("latin-1").rstrip("\r\n"))
    request_line = lines[0]
    if len(request_line) > MAX_REQUEST_LINE:
        raise Refused(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise Refused(400, "malformed request line")
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version[0] != 1:
        raise Refused(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if len(lines) - 1 > MAX_HEADERS:
        raise Refused(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None or _FIELD_CONTROL.search(header[2]):
            raise Refused(400, "malformed header field")
        name, value = header[1].lower(), header[2].strip(" \t")
        if name in headers:
            if name in _SINGLE:
                raise Refused(400, f"repeated {name} header")
            value = f"{headers[name]}, {value}"
        headers[name] = value
    if version >= (1, 1) and "host" not in headers:
        raise Refused(400, "an HTTP/1.1 request needs a Host header")
    if method not in METHODS:
        raise Refused(405, f"method {method[:20]} is not served here: {ALLOW}")
    return RequestHead(method, _origin_path(target), version, headers, _body_length(method, headers))


def _body_length(method: str, headers: dict[str, str]) -> int:
    """The length of the body the head announces, refused unless the method takes one."""
    declared = headers.get("content-length", "0")
    if method not in _WITH_BODY:
        if "transfer-encoding" in headers or declared != "0":
            raise Refused(400, f"a {method} request has no body")
        return 0
    if "transfer-encoding" in headers:
        raise Refused(411, f"send the {method} body with a Content-Length")
    if not _DIGITS.fullmatch(declared):
        raise Refused(400, "malformed Content-Length")
    length = int(declared)
    if length > MAX_BODY:
        raise Refused(413, f"a {method} body is at most {MAX_BODY} bytes")
    return length


def _origin_path(target: str) -> str:
    """The path of an origin-form (``/a/b?q``) or absolute-form (``http://host/a/b``) target."""
    absolute = _ABSOLUTE_FORM.match(target)
    path = target[absolute.end() :] if absolute else target
    path = path.partition("?")[0].partition("#")[0]
    if not path.startswith("/"):
        raise Refused(400, "the request target must be a path")
    return path
