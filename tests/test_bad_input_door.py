"""Bad input sent to the storage door (``/lfn/<LFN>`` on the RPC service's port; issues 7 and 14).

Paths that leave the prefix or the element, control characters, overlong
names, methods the door does not have, unusable ``Range``, ``Depth``,
``Content-Length`` and ``Destination`` headers, and tokens that are no
tokens: each is answered with its status and a short plain text naming
what was wrong, never a file, never a traceback, and the service keeps
serving. The cases go byte for byte (``send_door``: no client normalises
the path first) to ``bad_input_service`` (tests/fixtures/bad_input.py),
whose file element holds ``good/download.dat`` and the ``escape`` and
``leak.dat`` links out of it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fixtures.bad_input import (
    RANGE_LISTS,
    RANGED_SIZE,
    RANGES,
    BadInputService,
    answers,
    assert_no_leak,
    assert_serving,
    send_door,
)

GOOD = "/lfn/good/download.dat"
FILE_TYPE = "application/octet-stream"


def door_request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    fields = ["Host: localhost", *headers, "Connection: close"]
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{field}\r\n" for field in fields) + "\r\n").encode("latin-1") + body


def one_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    (answer,) = answers(raw)
    return answer


def assert_door_refused(raw: bytes, status: int, *words: str) -> dict[str, str]:
    """One short plain-text refusal with ``status``, naming ``words``, and nothing of any file."""
    got, headers, body = one_answer(raw)
    assert_no_leak(body)
    assert got == status, (got, body[:300])
    assert headers["content-type"].startswith("text/plain") and len(body) < 1000, (headers, body[:300])
    assert all(word.encode() in body for word in words), body
    assert b"must stay as it is" not in body  # the guarded sentinel
    return headers


# -- paths ----------------------------------------------------------------------------------

BAD_PATHS = [
    pytest.param("/lfn/../DataManagement/StorageElementProxy", 400, "'..'", id="out of the prefix"),
    pytest.param("/lfn/good/../../../etc/passwd", 400, "'..'", id="dot-dot"),
    pytest.param("/lfn/%2e%2e/%2e%2e/etc/passwd", 400, "'..'", id="escaped dot-dot"),
    pytest.param("/lfn/good/./download.dat", 400, "'.'", id="dot"),
    pytest.param("/lfn/good/bad%01name", 400, "control character", id="control character"),
    pytest.param("/lfn/good/bad%00name", 400, "NUL", id="NUL"),
    pytest.param("/lfn/good/bad%7fname", 400, "control character", id="DEL"),
    pytest.param("/lfn/" + "a" * 5000, 400, "longer than", id="overlong"),
    pytest.param("/lfn/escape/sentinel", 403, "escape", id="a link out of the element"),
    pytest.param("/lfn/leak.dat", 403, "leak.dat", id="a link to a file outside"),
    pytest.param("/lfn/nowhere/none.dat", 404, "/nowhere/none.dat", id="no element holds it"),
]


@pytest.mark.parametrize("path, status, word", BAD_PATHS)
def test_bad_paths(target: BadInputService, path: str, status: int, word: str) -> None:
    before = target.guard.snapshot()
    for method in ("GET", "PUT", "PROPFIND"):
        body = b"x" if method == "PUT" else b""
        raw = send_door(target, door_request(method, path, f"Content-Length: {len(body)}", "Depth: 0", body=body))
        got = one_answer(raw)[0]
        # a write may be refused before the path is looked at (it exists or not: 409, 405)
        expected = (status, 409) if method == "PUT" and status in (403, 404) else (status,)
        assert got in expected, (method, got, raw[:400])
        assert_door_refused(raw, got, *([word] if got == status else []))
    assert target.guard.snapshot() == before
    assert_serving(target)


# -- methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PATCH", "COPY", "MOVE", "LOCK", "FOO", "get"])
def test_methods_the_door_does_not_have(target: BadInputService, method: str) -> None:
    raw = send_door(target, door_request(method, GOOD, "Content-Length: 0"))
    got, headers, body = one_answer(raw)
    assert_no_leak(body)
    assert got in (400, 405), (got, body[:300])
    assert FILE_TYPE not in headers.get("content-type", ""), headers
    assert_serving(target)


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("header, status, expected", [*RANGES, *(pytest.param(p.values[0], 206, p.values[1], id=p.id) for p in RANGE_LISTS)])
def test_unusable_ranges(target: BadInputService, header: str, status: int, expected: Any) -> None:
    raw = send_door(target, door_request("GET", GOOD, f"Range: {header}"))
    got, headers, body = one_answer(raw)
    assert_no_leak(body if got >= 400 else b"")
    if status == 416:
        assert got == 416 and str(expected) in body.decode(), (got, body[:300])
        assert headers["content-range"] == f"bytes */{RANGED_SIZE}"
    elif expected is None:  # not a byte range, or past the bound on ranges: the whole file, as HTTP asks
        assert got == 200 and body == target.download, (got, headers)
    else:  # the ranges that are in the file, as the side server sends them
        parts = expected if isinstance(expected, list) else [expected]
        assert got == 206, (got, headers)
        if headers["content-type"].startswith("multipart/byteranges"):
            assert all(target.download[first : last + 1] in body for first, last in parts)
        else:
            ((first, last),) = parts
            assert body == target.download[first : last + 1]


BAD_DEPTHS = ["2", "-1", "one", "infinity, 1", "0 1", "1\t0"]


@pytest.mark.parametrize("depth", BAD_DEPTHS)
def test_unusable_depths(target: BadInputService, depth: str) -> None:
    for path in (GOOD, "/lfn/good"):
        assert_door_refused(send_door(target, door_request("PROPFIND", path, f"Depth: {depth}")), 400, "Depth")
    assert_serving(target)


BAD_LENGTHS = [
    pytest.param(["Content-Length: abc"], 400, "'abc' is not a number", id="not a number"),
    pytest.param(["Content-Length: -1"], 400, "'-1' is not a number", id="negative"),
    pytest.param(["Content-Length: 1e3"], 400, "'1e3' is not a number", id="a float"),
    pytest.param(["Content-Length: 5", "Content-Length: 6"], 400, "'5,6' is not a number", id="two that differ"),
    pytest.param(["Content-Length: 99999999999999999999999999"], 507, "No space left for the cache", id="absurd"),
    pytest.param(["Transfer-Encoding: chunked"], 411, "needs a Content-Length", id="chunked"),
]


@pytest.mark.parametrize("headers, status, word", BAD_LENGTHS)
def test_unusable_content_lengths_on_put(target: BadInputService, headers: list[str], status: int, word: str) -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n" if "chunked" in headers[0] else b"hello"
    assert_door_refused(send_door(target, door_request("PUT", "/lfn/good/new.dat", *headers, body=body)), status, word)
    assert not (target.proxy.place("FILE-SE").root / "good" / "new.dat").exists()
    assert_serving(target)


@pytest.mark.parametrize("method", ["COPY", "MOVE"])
@pytest.mark.parametrize("destination", ["/lfn/good/copy.dat", "https://elsewhere.example/x", "../../etc/passwd", "\x01"])
def test_a_destination_is_never_followed(target: BadInputService, method: str, destination: str) -> None:
    """The door has no COPY or MOVE (405); a control character in the header is Tornado's own 400."""
    raw = send_door(target, door_request(method, GOOD, f"Destination: {destination}", "Content-Length: 0"))
    got, _, body = one_answer(raw)
    assert_no_leak(body)
    assert got == (400 if destination == "\x01" else 405), (got, body[:300])
    root = target.proxy.place("FILE-SE").root
    assert not (root / "good" / "copy.dat").exists() and (root / "good" / "download.dat").read_bytes() == target.download


# -- tokens -----------------------------------------------------------------------------------


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


UNSIGNED = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'iss': 'https://x.example/', 'sub': 'tester', 'scope': 'storage.read:/'})}."
# (Authorization, whether it carries a token): one that carries none (an empty Bearer, Basic) is
# left aside, so the caller's proxy, if any, decides; a token that is no good is refused even then.
BAD_TOKENS = [
    pytest.param("Bearer garbage", True, id="not a JWT"),
    pytest.param("Bearer ", False, id="empty"),
    pytest.param("Bearer a.b.c", True, id="three dots of nothing"),
    pytest.param(f"Bearer {UNSIGNED}", True, id="alg none"),
    pytest.param("Bearer " + "A" * 20000, True, id="huge"),
    pytest.param("Basic dGVzdGVyOnNlY3JldA==", False, id="basic"),
    pytest.param("Bearer \x7f\x01", True, id="control characters"),
]


@pytest.mark.parametrize("authorization, token", BAD_TOKENS)
@pytest.mark.parametrize("proxy", [False, True], ids=["no certificate", "with a proxy"])
def test_bad_tokens(target: BadInputService, authorization: str, token: bool, proxy: bool) -> None:
    raw = send_door(target, door_request("GET", GOOD, f"Authorization: {authorization}"), proxy=proxy)
    got, headers, body = one_answer(raw)
    assert_no_leak(body)
    if proxy and not token:
        assert got == 200 and body == target.download, (got, body[:300])
        return
    assert got in (400, 401, 431), (got, body[:300])
    assert body != target.download and FILE_TYPE not in headers.get("content-type", "")
    if got == 401:
        assert headers["www-authenticate"].startswith("Bearer"), headers
    assert_serving(target)
