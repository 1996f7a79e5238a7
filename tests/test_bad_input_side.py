"""Bad input sent to the HTTP side server (issue 7).

Forged and expired links, path tricks, malformed and oversized requests,
unusable ranges, HTTP/1.0, pipelining and clients that trickle: each is
answered with its status and a short text naming what was wrong, never a
file, never a traceback, and the server keeps serving others. The cases go
to the side server of ``bad_input_service`` (tests/fixtures/bad_input.py),
whose idle timeout is 2 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.bad_input import (
    RANGES,
    SIDE,
    BadInputService,
    answers,
    assert_no_leak,
    assert_range_answer,
    assert_serving,
    read_until_closed,
    send_side,
    side_get,
    trickle,
)
from fixtures.http_side import SECRET

from seproxy.http_side.signing import CLOCK_SKEW, Signer


def assert_side_refused(status: int, headers: dict[str, str], body: bytes, expected: int, word: str) -> None:
    """A short plain-text refusal with ``expected`` status, saying ``word``."""
    assert_no_leak(body)
    assert status == expected, (status, body[:300])
    assert headers["content-type"] == "text/plain; charset=utf-8" and len(body) < 200, (headers, body)
    assert word.encode() in body, body


def refusal_of(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The one answer in ``raw``."""
    (answer,) = answers(raw)
    return answer


def get(path: str, *headers: str, version: str = "1.1", close: bool = True) -> bytes:
    fields = ["Host: x", *headers, *(["Connection: close"] if close else [])]
    return (f"GET {path} HTTP/{version}\r\n" + "".join(f"{field}\r\n" for field in fields) + "\r\n").encode("latin-1")


# -- forged and expired links --------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """The parts of a download URL's path: ``/<key id>.<link id>.<expires>.<signature>/<name>``."""

    key_id: str
    link_id: str
    expires: str
    signature: str
    name: str

    @classmethod
    def of(cls, url: str) -> Link:
        _, key, name = urlsplit(url).path.split("/")
        return cls(*key.split("."), name)  # type: ignore[arg-type]

    @property
    def path(self) -> str:
        return f"/{self.key_id}.{self.link_id}.{self.expires}.{self.signature}/{self.name}"

    def signed(self, secret: bytes = SECRET.encode(), **changes: Any) -> str:
        """The path of this link changed by ``changes`` and signed (with the service's secret by default)."""
        link = replace(self, **changes)
        return f"/{Signer(link.key_id, secret).sign(link.link_id, int(link.expires), link.name)}/{link.name}"


def _flipped(text: str) -> str:
    return text[:10] + ("A" if text[10] != "A" else "B") + text[11:]


def _expired() -> str:
    return str(int(time.time()) - CLOCK_SKEW - 1)


# (what is forged, the path made from the genuine link, status, what the refusal says)
FORGERIES: list[tuple[str, Callable[[Link], str], int, str]] = [
    ("expired", lambda link: link.signed(expires=_expired()), 403, "this link has expired"),
    ("signature altered", lambda link: replace(link, signature=_flipped(link.signature)).path, 403, "invalid link"),
    ("expiry moved on", lambda link: replace(link, expires=str(int(link.expires) + 3600)).path, 403, "invalid link"),
    ("another link id", lambda link: replace(link, link_id=link.link_id[::-1]).path, 403, "invalid link"),
    ("another name", lambda link: replace(link, name="other.dat").path, 403, "invalid link"),
    ("another key id", lambda link: replace(link, key_id="k2").path, 403, "signed with another key"),
    ("another secret", lambda link: link.signed(secret=b"x" * 64), 403, "invalid link"),
    ("unknown link, genuine signature", lambda link: link.signed(link_id="f" * 32), 404, "no such download"),
    ("signature cut short", lambda link: replace(link, signature=link.signature[:-1]).path, 404, "no such download"),
    ("expiry of 13 digits", lambda link: replace(link, expires="1" * 13).path, 404, "no such download"),
    ("link id in capitals", lambda link: replace(link, link_id=link.link_id.upper()).path, 404, "no such download"),
    ("no signature", lambda link: link.path.rsplit(".", 1)[0] + "/" + link.name, 404, "no such download"),
]


@pytest.mark.parametrize("forged, make, status, word", FORGERIES, ids=[case[0] for case in FORGERIES])
def test_forged_and_expired_links(target: BadInputService, forged: str, make: Any, status: int, word: str):
    path = make(Link.of(target.download_url))
    assert_side_refused(*refusal_of(send_side(target, get(path))), status, word)
    assert_serving(target)


def test_within_the_clock_skew_a_link_still_works(target: BadInputService):
    parts = urlsplit(target.download_url)
    path = Link.of(target.download_url).signed(expires=str(int(time.time()) - CLOCK_SKEW + 10))
    assert requests.get(f"{parts.scheme}://{parts.netloc}{path}", timeout=30).content == target.download


# -- path tricks ----------------------------------------------------------------------------

# {key}, {name}: of the genuine link. No path names a file: the key names a link, the link cache entries.
PATH_TRICKS = [
    ("/", 404, "no such download"),
    ("/etc/passwd", 404, "no such download"),
    ("/../../../../etc/passwd", 404, "no such download"),
    ("/%2e%2e/%2e%2e/etc/passwd", 404, "no such download"),
    ("/{key}/../../etc/passwd", 404, "no such download"),
    ("/{key}/..%2f..%2fetc%2fpasswd", 403, "invalid link"),
    ("/{key}/%2e%2e", 403, "invalid link"),
    ("//{key}/{name}", 404, "no such download"),
    ("/{key}/{name}/", 404, "no such download"),
    ("/{key}/{name}/x", 404, "no such download"),
    ("/{key}/{name}%00.txt", 403, "invalid link"),
    ("/{key}/a\x00b", 400, "malformed request line"),
    ("/{key}/a%ff", 403, "invalid link"),
    ("/{key}/a\xffb", 403, "invalid link"),
    ("/{key}/" + "n" * 5000, 403, "invalid link"),
    ("/{key}%2f{name}", 404, "no such download"),
    ("/{key}", 404, "no such download"),
    ("/data/00/0000", 404, "no such download"),
    ("/index.sqlite3", 404, "no such download"),
]


@pytest.mark.parametrize("template, status, word", PATH_TRICKS, ids=lambda value: repr(value)[:40])
def test_path_tricks_get_no_file(target: BadInputService, template: str, status: int, word: str):
    link = Link.of(target.download_url)
    path = template.format(key=link.path.split("/")[1], name=link.name)
    answer = send_side(target, get(path))
    assert target.download not in answer and b"root:" not in answer
    assert_side_refused(*refusal_of(answer), status, word)
    assert_serving(target)


# -- malformed and oversized requests --------------------------------------------------------

MALFORMED = [
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 405, "method POST is not served"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"b" * 1048576, 405, "not served here"),
    (b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method DELETE is not served"),
    (b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505, "only HTTP/1.0 and HTTP/1.1"),
    (b"GET /x HTTP/1.1\r\n\r\n", 400, "needs a Host header"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "repeated host header"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "malformed header field"),
    (b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n", 400, "malformed header field"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400, "malformed header field"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 400, "a GET request has no body"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000\r\n\r\n", 400, "a GET request has no body"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "a GET request has no body"),
    (b"this is not http\r\n\r\n", 400, "malformed request line"),
    (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "the request target must be a path"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "request line too long"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Filler: " + b"b" * 20000 + b"\r\n\r\n", 431, "request headers too large"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nRange: bytes=" + b"0-1," * 5000 + b"\r\n\r\n", 431, "request headers too large"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431, "more than 64 header fields"),
]


@pytest.mark.parametrize("raw, status, word", MALFORMED, ids=lambda value: repr(value)[:40])
def test_malformed_requests(target: BadInputService, raw: bytes, status: int, word: str):
    answer = send_side(target, raw)  # returns when the server closes the connection: it does after a refusal
    answered, headers, body = refusal_of(answer)
    assert_side_refused(answered, headers, body, status, word)
    assert headers["connection"] == "close"
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    assert_serving(target)


# -- Range headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("header, status, expected", RANGES)
def test_unusable_ranges(target: BadInputService, header: str, status: int, expected: Any):
    response = side_get(target.download_url, Range=header)
    assert_range_answer(response, target.download, status, expected)
    if status == 416:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert_serving(target)


# -- HTTP/1.0, pipelining and slow clients ----------------------------------------------------


def test_pipelined_requests_are_answered_in_order(target: BadInputService):
    path = urlsplit(target.download_url).path
    good = get(path, close=False)
    served = answers(send_side(target, good + get("/etc/passwd", close=False) + get(path)))
    assert [(status, body) for status, _, body in served] == [
        (200, target.download), (404, b"404 Not Found: no such download\n"), (200, target.download),
    ]  # fmt: skip
    # After a malformed request nothing on the connection can be trusted to start a request: it ends.
    (refused,) = answers(send_side(target, b"GET /x HTTP/1.1\r\n\r\n" + get(path)))
    assert refused[0] == 400 and refused[1]["connection"] == "close"
    assert_serving(target)


def test_http_1_0(target: BadInputService):
    path = urlsplit(target.download_url).path
    ((status, headers, body),) = answers(send_side(target, get(path, version="1.0", close=False)))
    assert status == 200 and headers["connection"] == "close" and body == target.download
    ((status, headers, body),) = answers(send_side(target, get("/etc/passwd", version="1.0", close=False)))
    assert status == 404 and headers["connection"] == "close" and b"no such download" in body
    kept = get(path, "Connection: keep-alive", version="1.0", close=False)
    served = answers(send_side(target, kept + get(path, version="1.0", close=False)))
    assert [(status, body) for status, _, body in served] == [(200, target.download)] * 2
    assert served[0][1]["connection"] == "keep-alive"
    assert_serving(target)


def test_a_head_sent_a_byte_a_second_is_cut_off(target: BadInputService):
    parts = urlsplit(target.download_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        answer = trickle(sock, SIDE, get(parts.path), lambda: assert_serving(target))
    assert answer == b"", "a head must be complete within idle_timeout: the server just closes"


def test_an_idle_connection_is_closed(target: BadInputService):
    parts = urlsplit(target.download_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        assert read_until_closed(sock) == b""
    assert_serving(target)
