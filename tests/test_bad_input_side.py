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
    RANGE_LISTS,
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
from fixtures.http_side import SECRET, multipart_parts

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
    """The parts of a download URL's path: ``/<key id>.<link id>.<expires>.<grant>.<signature>/<name>``."""

    key_id: str
    link_id: str
    expires: str
    grant: str
    signature: str
    name: str

    @classmethod
    def of(cls, url: str) -> Link:
        _, key, name = urlsplit(url).path.split("/")
        return cls(*key.split("."), name)  # type: ignore[arg-type]

    @property
    def path(self) -> str:
        return f"/{self.key_id}.{self.link_id}.{self.expires}.{self.grant}.{self.signature}/{self.name}"

    def signed(self, secret: bytes = SECRET.encode(), **changes: Any) -> str:
        """The path of this link changed by ``changes`` and signed (with the service's secret by default),
        without its grant: only the link store says what it serves."""
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
    ("grant altered", lambda link: replace(link, grant=_flipped(link.grant)).path, 403, "invalid link"),
    ("grant left out", lambda link: f"/{link.key_id}.{link.link_id}.{link.expires}.{link.signature}/{link.name}", 403, "invalid link"),
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
        assert headers["allow"] == "GET, HEAD, OPTIONS, PROPFIND"
    assert_serving(target)


# -- Range headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("header, status, expected", RANGES)
def test_unusable_ranges(target: BadInputService, header: str, status: int, expected: Any):
    response = side_get(target.download_url, Range=header)
    assert_range_answer(response, target.download, status, expected)
    if status == 416:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert_serving(target)


@pytest.mark.parametrize("header, expected", RANGE_LISTS)
def test_range_lists(target: BadInputService, header: str, expected: list[tuple[int, int]] | None):
    """Several ranges: their parts, never a byte twice; malformed lists and too many ranges: the whole file."""
    response = side_get(target.download_url, Range=header)
    data = target.download
    if expected is None:
        assert response.status_code == 200 and response.content == data
    elif len(expected) == 1:
        ((first, last),) = expected
        assert response.status_code == 206 and response.content == data[first : last + 1]
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
    else:
        assert response.status_code == 206, response.content[:300]
        assert int(response.headers["Content-Length"]) == len(response.content)
        parts = multipart_parts(response.headers["Content-Type"], response.content)
        assert [(first, last) for first, last, _, _ in parts] == expected
        assert all(size == len(data) and part == data[first : last + 1] for first, last, size, part in parts)
    assert_serving(target)


# -- checksums and conditions asked in odd ways -------------------------------------------------

ODD_HEADERS = [
    pytest.param({"Want-Digest": ""}, None, id="empty Want-Digest"),
    pytest.param({"Want-Digest": ";;;,,,=="}, None, id="punctuation"),
    pytest.param({"Want-Digest": "crc32c, UNIXsum, sha-512"}, None, id="algorithms we do not offer"),
    pytest.param({"Want-Digest": "adler32;q=0"}, None, id="refused by weight"),
    pytest.param({"Want-Digest": "adler32;q=nonsense"}, "adler32=", id="a weight that is no number"),
    pytest.param({"Want-Digest": "x" * 8000 + ",adler32"}, "adler32=", id="one huge item"),
    pytest.param({"Want-Digest": "md5," * 2000 + "adler32"}, "md5=", id="two thousand items"),
    pytest.param({"Want-Repr-Digest": "sha-256=0, banana=3, =, ;"}, None, id="repr refused by weight, and garbage"),
    pytest.param({"If-Modified-Since": "yesterday"}, None, id="If-Modified-Since not a date"),
    pytest.param({"If-Modified-Since": "Sun, 99 Zzz 99999 99:99:99 GMT"}, None, id="impossible date"),
    pytest.param({"If-Modified-Since": "Sat, 01 Jan 10000 00:00:00 GMT"}, None, id="year 10000"),
    pytest.param({"If-Unmodified-Since": "\xff\xfe"}, None, id="If-Unmodified-Since not text"),
    pytest.param({"If-None-Match": 'W/"unterminated'}, None, id="unterminated entity tag"),
    pytest.param({"If-None-Match": '"a", , ,"b"' * 500}, None, id="long list of tags"),
    pytest.param({"If-Range": "not a date nor a tag", "Range": "bytes=0-9"}, None, id="If-Range garbage"),
    pytest.param({"If-Range": 'W/"weak"', "Range": "bytes=0-9"}, None, id="If-Range weak tag"),
]


@pytest.mark.parametrize("headers, digest", ODD_HEADERS)
def test_odd_checksum_and_condition_headers_serve_the_whole_file(target: BadInputService, headers, digest):
    """Headers that cannot be used are ignored (RFC 9110): the whole file, a Digest only for what was
    understood, never an error."""
    response = side_get(target.download_url, **headers)
    assert response.status_code == 200 and response.content == target.download
    answered = response.headers.get("Digest")
    if digest is None and "Want-Digest" in headers:
        assert answered is None, answered
    elif digest is not None:
        assert answered is not None and answered.startswith(digest), answered
        assert len(answered) < 200  # each algorithm once, however often asked
    assert "Repr-Digest" not in response.headers
    assert_serving(target)


# -- PROPFIND and OPTIONS -----------------------------------------------------------------------

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:getetag>&lol3;</D:getetag></D:prop></D:propfind>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:getetag>&x;</D:getetag></D:prop></D:propfind>"""
DEEP = b'<D:propfind xmlns:D="DAV:"><D:prop>' + b"<a>" * 100 + b"</a>" * 100 + b"</D:prop></D:propfind>"


def propfind(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    head = f"PROPFIND {path} HTTP/1.1\r\nHost: x\r\nDepth: 0\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


PROPFIND_BODIES = [
    pytest.param(b"<D:propfind xmlns:D='DAV:'><D:prop>", 400, "not well-formed", id="unclosed"),
    pytest.param(b"\xff\xfe<not xml", 400, "not well-formed", id="binary"),
    pytest.param(b"<propfind><prop/></propfind>", 400, "DAV: propfind element", id="no DAV namespace"),
    pytest.param(b"<D:lockinfo xmlns:D='DAV:'/>", 400, "DAV: propfind element", id="another document"),
    pytest.param(b"<D:propfind xmlns:D='DAV:'/>", 400, "names none of", id="empty propfind"),
    pytest.param(b"<D:propfind xmlns:D='DAV:'><D:allprop/><D:propname/></D:propfind>", 400, "holds one of",
                 id="allprop and propname"),  # fmt: skip
    pytest.param(LAUGHS, 400, "must not declare", id="billion laughs"),
    pytest.param(EXTERNAL, 400, "must not declare", id="external entity"),
    pytest.param(DEEP, 400, "nests deeper", id="deep nesting"),
]


@pytest.mark.parametrize("body, status, word", PROPFIND_BODIES)
def test_bad_propfind_bodies(target: BadInputService, body: bytes, status: int, word: str):
    path = urlsplit(target.download_url).path
    ((answered, headers, text),) = answers(send_side(target, propfind(path, body, "Connection: close")))
    assert_side_refused(answered, headers, text, status, word)
    assert b"root:" not in text
    assert_serving(target)


@pytest.mark.parametrize(
    "raw, status, word",
    [
        (propfind("/x", b"a" * 70000), 413, "at most 65536 bytes"),
        (b"PROPFIND /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, "malformed Content-Length"),
        (b"PROPFIND /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "malformed Content-Length"),
        (b"PROPFIND /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "Content-Length"),
        (b"OPTIONS /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400, "OPTIONS request has no body"),
    ],
    ids=["huge body", "absurd length", "negative length", "chunked", "OPTIONS with a body"],
)
def test_propfind_bodies_refused_before_reading(target: BadInputService, raw: bytes, status: int, word: str):
    answered, headers, body = refusal_of(send_side(target, raw))
    assert_side_refused(answered, headers, body, status, word)
    assert headers["connection"] == "close"
    assert_serving(target)


def test_bad_depth_and_a_forged_propfind(target: BadInputService):
    path = urlsplit(target.download_url).path
    ((status, headers, body),) = answers(send_side(target, propfind(path, b"", "Depth: 7", "Connection: close")))
    assert_side_refused(status, headers, body, 400, "Depth header must be 0, 1 or infinity")
    key, name = path.split("/")[1:]
    forged = f"/{key[:-4]}AAAA/{name}"
    ((status, headers, body),) = answers(send_side(target, propfind(forged, b"", "Connection: close")))
    assert status == 403 and target.download not in body  # a PROPFIND needs a good key as a GET does
    assert_serving(target)


def test_a_propfind_body_that_never_comes_is_cut_off(target: BadInputService):
    """A PROPFIND announcing more body than it sends holds only its own connection, until the idle timeout."""
    path = urlsplit(target.download_url).path
    with socket.create_connection(("127.0.0.1", urlsplit(target.download_url).port), timeout=10) as sock:
        sock.sendall(f"PROPFIND {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n<D:propfind".encode())
        assert_serving(target)  # others are served meanwhile
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < 8


def test_options_tells_what_is_served(target: BadInputService):
    ((status, headers, body),) = answers(send_side(target, b"OPTIONS /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert status == 200 and body == b""
    assert headers["dav"] == "1" and headers["allow"] == "GET, HEAD, OPTIONS, PROPFIND"
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
