"""Bad input sent to the RPC service (issue 7).

Every case is answered with its status and a message naming what was wrong,
shows no traceback, touches nothing outside the service's roots, and leaves
the service serving others. The cases go to ``bad_input_service``
(tests/fixtures/bad_input.py): a 64 KiB form limit, 2 s idle timeouts, and a
file, a WebDAV and an XRootD element, each with a guarded directory beside it.
"""

from __future__ import annotations

import errno
import os
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from fixtures.bad_input import (
    FORM_LIMIT,
    RANGE_LISTS,
    RANGED_SIZE,
    RANGES,
    RPC,
    BadInputService,
    answers,
    assert_no_leak,
    assert_range_answer,
    assert_refused,
    assert_serving,
    send_form,
    send_http,
    send_tls,
    tls_connection,
    trickle,
)
from fixtures.proxy import DAV_SE, FILE_SE, XROOT_SE, ok, unique, wait_until
from fixtures.service import rpc_fields

from seproxy.transfer import codec

ROUTE = "/DataManagement/StorageElementProxy"
FORM_TYPE = "application/x-www-form-urlencoded"
HOST = "Host: localhost"


def request(line: str, *headers: str, body: bytes = b"", close: bool = True) -> bytes:
    """A raw request: ``line`` is the request line, ``headers`` as written (Host is not added)."""
    fields = [*headers, *(["Connection: close"] if close else [])]
    return (line + "\r\n" + "".join(f"{field}\r\n" for field in fields) + "\r\n").encode("latin-1") + body


def form_request(body: bytes, *, version: str = "1.1", close: bool = False) -> bytes:
    length = f"Content-Length: {len(body)}"
    return request(f"POST {ROUTE} HTTP/{version}", HOST, f"Content-Type: {FORM_TYPE}", length, body=body, close=close)


def call(target: BadInputService, method: str, *args: Any) -> dict[str, Any]:
    """The result of a call answered with 200 (an S_OK, or an S_ERROR: DIRAC's way to fail a call)."""
    response = send_form(target, rpc_fields(method, *args))
    assert_no_leak(response.content)
    assert response.status_code == 200, response.text[:500]
    return codec.decode(response.content)


# -- malformed forms and JSON ------------------------------------------------------------

NESTED = b"[" * 5000 + b"]" * 5000

BAD_FORMS = [
    pytest.param(b'{"method": "ping"}', "application/json", 415, "Content-Type must be", id="JSON body"),
    pytest.param(b"--x--", "multipart/form-data; boundary=x", 415, "Content-Type must be", id="multipart"),
    pytest.param(b"method=ping", None, 415, "Content-Type must be", id="no Content-Type"),
    pytest.param(b"", FORM_TYPE, 400, "'method' is missing", id="empty body"),
    pytest.param(b"args=%5B%5D", FORM_TYPE, 400, "'method' is missing", id="no method"),
    pytest.param(b"method=__class__", FORM_TYPE, 400, "is not a method name", id="method __class__"),
    pytest.param(b"method=_private", FORM_TYPE, 400, "is not a method name", id="method _private"),
    pytest.param(b"method=export_ping", FORM_TYPE, 400, "is not a method name", id="method export_ping"),
    pytest.param(b"method=a.b", FORM_TYPE, 400, "is not a method name", id="method a.b"),
    pytest.param(b"method=" + b"a" * 100, FORM_TYPE, 400, "is not a method name", id="method too long"),
    pytest.param(b"method=ping&method=echo", FORM_TYPE, 400, "given more than once", id="method twice"),
    pytest.param(b"&&&=", FORM_TYPE, 400, "not a valid form", id="not a form"),
    pytest.param(b"method=ping&args", FORM_TYPE, 400, "not a valid form", id="field without ="),
    pytest.param(b"method=echo&args=%7B%7D", FORM_TYPE, 400, "'args' must be a JSON array", id="args an object"),
    pytest.param(b"method=echo&args=%5B", FORM_TYPE, 400, "'args': invalid JSON", id="args cut short"),
    pytest.param(b"method=echo&args=[NaN]", FORM_TYPE, 400, "not a valid JSON number", id="NaN"),
    pytest.param(b"method=echo&args=" + NESTED, FORM_TYPE, 400, "nested too deeply", id="JSON nested 5000 deep"),
    pytest.param(
        b'method=echo&args=[{"__dCls": "X509Chain", "obj": "x"}]', FORM_TYPE, 400, "unknown __dCls 'X509Chain'",
        id="unknown __dCls",
    ),
    pytest.param(
        b'method=echo&args=[{"__dCls": "dt", "obj": "yesterday"}]', FORM_TYPE, 400, "bad value for __dCls 'dt'",
        id="bad datetime",
    ),
    pytest.param(
        b'method=echo&args=[{"__dCls": "b64", "obj": "***"}]', FORM_TYPE, 400, "bad value for __dCls 'b64'",
        id="bad base64",
    ),
    pytest.param(
        b'method=echo&args=[{"__dCls": "b64", "obj": "", "x": 1}]', FORM_TYPE, 400, "exactly the keys",
        id="tagged object with more keys",
    ),
    pytest.param(b"method=ping&extraCredentials=%7B", FORM_TYPE, 400, "'extraCredentials'", id="extraCredentials"),
    pytest.param(b"method=ping&rawContent=perhaps", FORM_TYPE, 400, "'rawContent' must be True", id="rawContent"),
    pytest.param(b"method=p\xffing", FORM_TYPE, 400, "not valid UTF-8", id="raw invalid UTF-8"),
    pytest.param(b"method=echo&args=%5B%22%FF%22%5D", FORM_TYPE, 400, "not a valid form", id="escaped invalid UTF-8"),
    pytest.param(b'method=echo&args=["\\ud800"]', FORM_TYPE, 400, "not valid Unicode", id="lone surrogate"),
]


@pytest.mark.parametrize("body, content_type, status, word", BAD_FORMS)
def test_malformed_forms(target: BadInputService, body: bytes, content_type: str | None, status: int, word: str):
    response = send_form(target, body, **{"Content-Type": content_type})
    assert_refused(response, status, word, errno.EINVAL)
    assert_serving(target)


# -- methods, argument counts and types ---------------------------------------------------

NOT_EXPORTED = ["getFile", "putFile", "removeFile", "receiveFile", "stage", "element", "initializeHandler",
                "finalizeHandler", "getRemoteCredentials", "owner", "shared"]  # fmt: skip
NOT_OFFERED = ["__class__", "__init__", "_private", "_remove_tree", "getattr", "putFile", "normalize", "upload",
               "stat", ""]  # fmt: skip
RAW = {"rawContent": "True"}

# (method, args, extra form fields, HTTP status, errno, what the message says). Once the form is read, a
# refused call is answered as DIRAC's services answer it, status 200 with the S_ERROR (DIRAC's client drops
# the body of a 4xx/501); a raw call's refusal is a 400 with the S_ERROR, which DIRAC's client shows.
BAD_CALLS = [
    ("noSuchMethod", [], {}, 200, errno.ENOSYS, "unknown method 'noSuchMethod'"),
    *[(name, [FILE_SE, "/"], {}, 200, errno.ENOSYS, f"unknown method {name!r}") for name in NOT_EXPORTED],
    ("echo", [1, 2], {}, 200, errno.EINVAL, "wrong number of arguments (2 given)"),
    ("echo", [], {}, 200, errno.EINVAL, "wrong number of arguments (0 given)"),
    ("whoami", [1], {}, 200, errno.EINVAL, "wrong number of arguments (1 given)"),
    ("prepareFile", [FILE_SE], {}, 200, errno.EINVAL, "wrong number of arguments (1 given)"),
    ("prepareFile", [FILE_SE, "/a", "/b"], {}, 200, errno.EINVAL, "wrong number of arguments (3 given)"),
    ("prepareFile", [FILE_SE, 5], {}, 200, errno.EINVAL, "argument 2 must be a string, got an integer"),
    ("prepareFile", [True, "/a"], {}, 200, errno.EINVAL, "argument 1 must be a string, got a boolean"),
    ("prepareFile", [None, "/a"], {}, 200, errno.EINVAL, "argument 1 must be a string, got null"),
    ("prepareFile", [[FILE_SE], "/a"], {}, 200, errno.EINVAL, "argument 1 must be a string, got a list"),
    ("streamFromClient", ["putFile/x", "", "3", b"abc"], {}, 200, errno.EINVAL, "argument 3 must be an integer"),
    ("streamFromClient", ["putFile/x", "", 3.5, b"abc"], {}, 200, errno.EINVAL, "must be an integer, got a number"),
    ("streamFromClient", ["putFile/x", "", 3, "abc"], {}, 200, errno.EINVAL, "argument 4 must be bytes (b64)"),
    ("streamFromClient", ["putFile/x", "", 5, b"abc"], {}, 200, errno.EINVAL, "fileSize is 5 but 3 bytes were sent"),
    ("callProxyMethod", [FILE_SE, "exists", "/", {}], {}, 200, errno.EINVAL, "argument 3 must be a list"),
    ("callProxyMethod", [FILE_SE, "exists", ["/"], []], {}, 200, errno.EINVAL, "argument 4 must be a dict"),
    ("prepareFileForHTTP", [42], {}, 200, errno.EINVAL, "must be a string or a list, got an integer"),
    ("prepareFileForHTTP", [[]], {}, 200, errno.EINVAL, "no LFN given"),
    ("prepareFileForHTTP", [["/lab/x"] * 1001], {}, 200, errno.EINVAL, "1001 LFNs, at most 1000"),
    ("prepareFileForHTTP", [["/lab/x", 7]], {}, 200, errno.EINVAL, "an LFN is a string"),
    ("prepareFile", ["NO-SUCH-SE", "/a"], {}, 200, errno.ENOENT, "unknown storage element 'NO-SUCH-SE'"),
    ("callProxyMethod", ["NO-SUCH-SE", "exists", ["/"], {}], {}, 200, errno.ENOENT, "unknown storage element"),
    # callProxyMethod names come from an allow-list, never from getattr.
    *[("callProxyMethod", [FILE_SE, name, ["/"], {}], {}, 200, errno.ENOSYS, f"{name!r} is not offered")
      for name in NOT_OFFERED],  # fmt: skip
    ("streamToClient", ["getFile/x", ""], {}, 200, errno.EINVAL, "call it with rawContent=True"),
    ("streamToClient", ["getFile/never-prepared", ""], RAW, 400, errno.ENOENT, "call prepareFile first"),
    ("whoami", [], {"extraCredentials": '["/CN=else", "lab_admin"]'}, 200, errno.EACCES, "extraCredentials"),
    # Lone surrogates (JSON's "\ud800") are no text a path, a database or a log could hold.
    ("prepareFile", [FILE_SE, "/a\ud800"], {}, 400, errno.EINVAL, "not valid Unicode"),
    ("streamToClient", ["getFile/\udcff", ""], RAW, 400, errno.EINVAL, "not valid Unicode"),
    ("callProxyMethod", [FILE_SE, "exists", ["/"], {"\ud800": True}], {}, 400, errno.EINVAL, "not valid Unicode"),
    ("prepareFileForHTTP", ["/lab/\udfff"], {}, 400, errno.EINVAL, "not valid Unicode"),
]


@pytest.mark.parametrize(
    "method, args, fields, status, code, word", BAD_CALLS, ids=[f"{case[0]} {case[1]!r}"[:60] for case in BAD_CALLS]
)
def test_bad_calls(target: BadInputService, method: str, args: list, fields: dict, status: int, code: int, word: str):
    assert_refused(send_form(target, rpc_fields(method, *args, **fields)), status, word, code)
    assert_serving(target)


BAD_OPTIONS = [
    ("removeDirectory", ["{dir}"], {"force": True}, "no option 'force'"),
    ("removeDirectory", ["{dir}"], {"recursive": "yes"}, "option 'recursive' must be a bool"),
    ("removeDirectory", ["{dir}", True, False], {}, "takes 1 option(s) after the paths, got 2"),
    ("exists", ["{dir}", True], {}, "takes 0 option(s)"),
    ("exists", [], {}, "the first argument must be the path(s)"),
    ("exists", [42], {}, "the first argument must be a path"),
    ("exists", [["{dir}", 7]], {}, "every path must be a string"),
]


@pytest.mark.parametrize("name, args, kwargs, word", BAD_OPTIONS)
def test_bad_operation_arguments_are_refused_before_anything_runs(
    target: BadInputService, name: str, args: list, kwargs: dict, word: str
):
    directory = f"/{unique('kept')}"
    assert ok(target.proxy.operation(FILE_SE, "createDirectory", directory))["Successful"] == {directory: True}
    args = [arg.format(dir=directory) if isinstance(arg, str) else arg for arg in args]
    result = call(target, "callProxyMethod", FILE_SE, name, args, kwargs)
    assert not result["OK"] and result["Errno"] == errno.EINVAL and word in result["Message"], result
    assert (target.proxy.place(FILE_SE).root / directory.lstrip("/")).is_dir()
    assert_serving(target)


# -- HTTP that is not a form post, huge bodies and headers ---------------------------------

BIG_FORM = b"method=echo&args=" + b"a" * (FORM_LIMIT + 1)
CHUNKED_BIG = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BIG_FORM), BIG_FORM)
FORM_HEAD = (HOST, f"Content-Type: {FORM_TYPE}")

# (raw request, status, what the JSON message says)
BAD_HTTP = [
    pytest.param(request(f"GET {ROUTE} HTTP/1.1", HOST), 405, "Method Not Allowed", id="GET"),
    pytest.param(request(f"DELETE {ROUTE} HTTP/1.1", HOST), 405, "Method Not Allowed", id="DELETE"),
    pytest.param(request(f"POST {ROUTE}/stream/putFile/x HTTP/1.1", HOST), 405, "Method Not Allowed", id="POST stream"),
    pytest.param(
        request(f"PUT {ROUTE}/stream/putFile/%ff HTTP/1.1", HOST, "Content-Length: 1", body=b"x"),
        400, "Invalid unicode in url", id="stream name not UTF-8",
    ),  # fmt: skip
    pytest.param(
        request(f"PUT {ROUTE}/stream/../../../etc/passwd HTTP/1.1", HOST, "Content-Length: 1", body=b"x"),
        400, "file id '../../../etc/passwd' is not putFile/<name>", id="stream ../",
    ),  # fmt: skip
    pytest.param(
        request(f"PUT {ROUTE}/stream/putFile/x HTTP/1.1", HOST,
                "Transfer-Encoding: chunked", body=b"1\r\nx\r\n0\r\n\r\n"),
        411, "needs a Content-Length", id="stream without length",
    ),  # fmt: skip
    pytest.param(request("POST /DataManagement/Nothing HTTP/1.1", HOST), 404, "no service at", id="unknown route"),
    pytest.param(request("POST /../../etc/passwd HTTP/1.1", HOST), 404, "no service at '/../../etc/passwd'",
                 id="../ route"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", *FORM_HEAD, "Content-Length: abc"), 400, "'abc' is not a number",
                 id="Content-Length abc"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", *FORM_HEAD, "Content-Length: -1"), 400, "'-1' is not a number",
                 id="Content-Length -1"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", *FORM_HEAD, "Content-Length: 5", "Content-Length: 6", body=b"x" * 6),
                 400, "'5,6' is not a number", id="two Content-Lengths"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", *FORM_HEAD, "Content-Length: 1000000000000000", body=b"x"),
                 413, "max_form_size", id="declared petabyte"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", *FORM_HEAD, f"Content-Length: {len(BIG_FORM)}", body=BIG_FORM),
                 413, "over this service's limit", id="form over the limit"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", *FORM_HEAD, "Transfer-Encoding: chunked", body=CHUNKED_BIG),
                 413, "over this service's limit", id="chunked form over the limit"),  # fmt: skip
]


@pytest.mark.parametrize("raw, status, word", BAD_HTTP)
def test_http_that_is_no_rpc_call(target: BadInputService, raw: bytes, status: int, word: str):
    ((answered, headers, body),) = answers(send_tls(target, raw))
    assert_no_leak(body)
    assert answered == status and headers["content-type"] == "application/json", (answered, headers, body[:300])
    result = codec.decode(body)
    assert result["OK"] is False and word in result["Message"], result
    assert_serving(target)


# Tornado's HTTP layer refuses these itself, before any seproxy code sees them: a bare status line, or
# (a head over Tornado's 64 KiB) a closed connection, since the head cannot even be read.
BEYOND_HTTP = [
    pytest.param(b"this is not http\r\n\r\n", 400, id="not HTTP"),
    pytest.param(request(f"POST {ROUTE} HTTP/2.0", HOST), 400, id="HTTP/2.0"),
    pytest.param(request(f"POST {ROUTE} HTTP/1.1"), 400, id="no Host"),
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", HOST, " folded"), 400, id="folded header"),
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", HOST, "X-A: a\x00b"), 400, id="NUL in a header"),
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", HOST, "X-Filler: " + "b" * 70000), None, id="huge header"),
    pytest.param(request(f"POST {ROUTE} HTTP/1.1", HOST, *[f"X-{n}: {n}" for n in range(7000)]), None,
                 id="many headers"),  # fmt: skip
    pytest.param(request(f"POST {ROUTE}/{'a' * 70000} HTTP/1.1", HOST), None, id="huge URL"),
]


@pytest.mark.parametrize("raw, status", BEYOND_HTTP)
def test_what_tornado_refuses_itself(target: BadInputService, raw: bytes, status: int | None):
    answer = send_tls(target, raw)
    assert_no_leak(answer)
    if status is None:
        assert answer == b"", answer[:300]
    else:
        assert answer == f"HTTP/1.1 {status} Bad Request\r\n\r\n".encode()
    assert_serving(target)


# -- paths that try to leave the roots -------------------------------------------------

# {dav}, {xroot}: the server behind that element (outside the element's base); {out}: the guarded
# directory beside the element. The file element has the symlinks escape/ and leak.dat leading there.
ESCAPES = [
    (FILE_SE, "../{out}/sentinel", "'..' is not allowed"),
    (FILE_SE, "/../../{out}/sentinel", "'..' is not allowed"),
    (FILE_SE, "a/../../{out}/sentinel", "'..' is not allowed"),
    (FILE_SE, "escape/sentinel", "a symlink leads outside"),
    (FILE_SE, "escape/new-directory", "a symlink leads outside"),
    (FILE_SE, "leak.dat", "a symlink leads outside"),
    (FILE_SE, "file:///etc/passwd", "outside the element's base"),
    (FILE_SE, "data\x00.txt", "contains a NUL or control character"),
    (FILE_SE, "x" * 5000, "longer than 4096 characters"),
    (DAV_SE, "https://elsewhere.example.org/etc/passwd", "another storage's URL"),
    (DAV_SE, "{dav}/{out}/sentinel", "outside the element's base"),
    (DAV_SE, "{dav}/%2e%2e/etc/passwd", "'..' is not allowed"),
    (DAV_SE, "/../{out}/sentinel", "'..' is not allowed"),
    (XROOT_SE, "root://elsewhere.example.org//etc/passwd", "another storage's URL"),
    (XROOT_SE, "{xroot}//etc/passwd", "outside the element's base"),
    (XROOT_SE, "{xroot}//{out}/sentinel", "outside the element's base"),
    (XROOT_SE, "/../{out}/sentinel", "'..' is not allowed"),
]
BULK = [("exists", {}), ("getFileMetadata", {}), ("listDirectory", {}), ("createDirectory", {}),
        ("removeFile", {}), ("removeDirectory", {"recursive": True})]  # fmt: skip


def pfn_of(target: BadInputService, se: str, template: str) -> str:
    servers = {name: _server_of(target.proxy.place(name).spec["base"]) for name in (DAV_SE, XROOT_SE)}
    return template.format(dav=servers[DAV_SE], xroot=servers[XROOT_SE], out=target.guard.outside[se].name)


def _server_of(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.mark.parametrize("se, template, word", ESCAPES, ids=lambda value: repr(value)[:40])
def test_paths_leaving_an_element(target: BadInputService, se: str, template: str, word: str):
    pfn = pfn_of(target, se, template)
    before = target.guard.snapshot()
    # A file waits to be uploaded under the sentinel's name: an uploadFile that escaped would overwrite it.
    assert ok(target.proxy.call("streamFromClient", "putFile/sentinel", "", 9, b"overwrite"))
    for method in ("prepareFile", "uploadFile"):
        result = call(target, method, se, pfn)
        assert not result["OK"] and result["Errno"] == errno.EPERM and word in result["Message"], (method, result)
    for name, options in BULK:
        bulk = ok(call(target, "callProxyMethod", se, name, [pfn], options))
        assert bulk["Successful"] == {} and word in bulk["Failed"][pfn], (name, bulk)
    assert target.guard.snapshot() == before
    assert_serving(target)


# (LFN, errno, what the message says); LFNs are looked for on the file element.
BAD_LFNS = [
    ("../{out}/sentinel", errno.EINVAL, "an LFN is an absolute path to a file"),
    ("/../{out}/sentinel", errno.EINVAL, "'.' and '..' are not allowed"),
    ("/lab/./x", errno.EINVAL, "'.' and '..' are not allowed"),
    ("/escape/sentinel", errno.EPERM, "a symlink leads outside"),
    ("/leak.dat", errno.EPERM, "a symlink leads outside"),
    ("/lab/a\x00b", errno.EINVAL, "contains a NUL or control character"),
    ("/" + "x" * 5000, errno.EINVAL, "longer than 4096 characters"),
    ("/lab/dir/", errno.EINVAL, "an LFN is an absolute path to a file"),
    ("/" + "n" * 300, errno.ENAMETOOLONG, "File name too long"),
]


@pytest.mark.parametrize("template, code, word", BAD_LFNS, ids=lambda value: repr(value)[:40])
def test_lfns_leaving_the_element(target: BadInputService, template: str, code: int, word: str):
    before = target.guard.snapshot()
    lfn = template.format(out=target.guard.outside[FILE_SE].name)
    result = call(target, "prepareFileForHTTP", [lfn])
    assert result["OK"] is False and result["Errno"] == code and word in result["Message"], result
    assert target.guard.snapshot() == before
    assert_serving(target)


def test_absolute_paths_stay_inside_the_element(target: BadInputService):
    before = target.guard.snapshot()
    for se in (FILE_SE, DAV_SE, XROOT_SE):
        result = call(target, "prepareFile", se, "/etc/passwd")
        assert result["OK"] is False and result["Errno"] == errno.ENOENT, result
        assert "root:" not in result["Message"]
    listing = ok(call(target, "callProxyMethod", FILE_SE, "listDirectory", ["/"], {}))["Successful"]["/"]
    assert not {"/escape", "/leak.dat"} & {*listing["Files"], *listing["SubDirs"]}, "links leading out are not listed"
    result = ok(call(target, "callProxyMethod", FILE_SE, "removeDirectory", ["/"], {"recursive": True}))
    assert "never removed" in result["Failed"]["/"], result
    assert target.guard.snapshot() == before
    assert_serving(target)


# {area}: the area the route serves (getFile to read, putFile to send); {other}: the other one.
BAD_FILE_IDS = [
    "{area}/../x",
    "{area}/..",
    "{area}/",
    "{area}/a/b",
    "{area}/nul\x00byte",
    "{area}/" + "n" * 300,
    "/etc/passwd",
    "../{area}/x",
    "{other}/x",
]


def answer_to(target: BadInputService, route: str, file_id: str) -> tuple[int, bytes]:
    """(HTTP status, body) of reading ``file_id`` (streamToClient) or sending it (form, stream)."""
    if route == "streamToClient":
        response = send_form(target, rpc_fields("streamToClient", file_id, "", **RAW))
    elif route == "form":
        response = send_form(target, rpc_fields("streamFromClient", file_id, "", 4, b"data"))
    else:  # in a URL the whole id is one path segment, so that nothing on the way resolves its dots
        response = send_http(target, "PUT", f"/stream/{quote(file_id, safe='')}", data=b"data")
    assert_no_leak(response.content)
    return response.status_code, response.content


@pytest.mark.parametrize("template", BAD_FILE_IDS, ids=lambda value: repr(value)[:30])
@pytest.mark.parametrize("route, status", [("streamToClient", 400), ("form", 200), ("stream", 400)])
def test_malformed_file_ids(target: BadInputService, route: str, status: int, template: str):
    area, other = ("getFile", "putFile") if route == "streamToClient" else ("putFile", "getFile")
    cached = {entry.id for entry in target.proxy.cache_entries(owner="tester")}
    before = target.guard.snapshot()
    answered, body = answer_to(target, route, template.format(area=area, other=other))
    result = codec.decode(body)
    assert answered == status and result["Errno"] == errno.EINVAL and "file id" in result["Message"], result
    assert {entry.id for entry in target.proxy.cache_entries(owner="tester")} == cached
    assert target.guard.snapshot() == before
    assert_serving(target)


# -- Range headers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(bad_input_service: BadInputService) -> tuple[str, bytes]:
    """(file id, content) of a file prepared for streamToClient."""
    data, name = os.urandom(RANGED_SIZE), unique("ranged") + ".dat"
    (bad_input_service.proxy.place(FILE_SE).root / name).write_bytes(data)
    return ok(bad_input_service.proxy.call("prepareFile", FILE_SE, f"/{name}"))["FileId"], data


@pytest.mark.parametrize("header, status, expected", [*RANGES, *(pytest.param(p.values[0], 200, None, id=p.id) for p in RANGE_LISTS)])
def test_unusable_ranges(target: BadInputService, prepared: tuple[str, bytes], header: str, status: int, expected: Any):
    file_id, data = prepared
    response = send_form(target, rpc_fields("streamToClient", file_id, "", **RAW), Range=header)
    assert_range_answer(response, data, status, expected)
    if status == 416:
        assert response.headers["Content-Type"] == "application/json"
        assert codec.decode(response.content)["Errno"] == errno.EINVAL
    assert_serving(target)


# -- HTTP/1.0, pipelining and slow clients ------------------------------------------------------


def test_pipelined_calls_are_answered_in_order(target: BadInputService):
    refused = form_request(b"method=__class__")
    good = form_request(b"method=echo&args=%5B%22fine%22%5D")
    last = form_request(b"method=echo&args=%5B%22a%22%2C%22b%22%5D", close=True)
    (first, _, body1), (second, _, body2), (third, _, body3) = answers(send_tls(target, refused + good + last))
    assert (first, second, third) == (400, 200, 200)  # a malformed form, then a call with a wrong argument
    assert "not a method name" in codec.decode(body1)["Message"]
    assert codec.decode(body2) == {"OK": True, "Value": "fine"}
    assert "wrong number of arguments" in codec.decode(body3)["Message"]
    assert_serving(target)


def test_http_1_0_calls(target: BadInputService):
    # Without keep-alive an HTTP/1.0 connection ends with its answer: send_tls returns only then.
    ((status, _, body),) = answers(send_tls(target, form_request(b"method=_private", version="1.0")))
    assert status == 400 and "not a method name" in codec.decode(body)["Message"]
    ((status, _, body),) = answers(send_tls(target, form_request(b"method=echo&args=%5B1%5D", version="1.0")))
    assert status == 200 and codec.decode(body) == {"OK": True, "Value": 1}
    assert_serving(target)


def test_a_head_sent_a_byte_a_second_is_cut_off(target: BadInputService):
    with tls_connection(target) as sock:
        answer = trickle(sock, RPC, form_request(b"method=ping"), lambda: assert_serving(target))
    assert answer == b"", "Tornado drops a head not complete within idle_connection_timeout"


@pytest.mark.parametrize("route", ["form", "stream"])
def test_a_body_sent_a_byte_a_second_is_cut_off(target: BadInputService, route: str):
    name = unique("slow")
    body = f"method=echo&args=%5B%22{name}%22%5D".encode()
    if route == "form":
        head, rest = form_request(body)[:-len(body)], body
    else:
        head = request(f"PUT {ROUTE}/stream/putFile/{name} HTTP/1.1", HOST, f"Content-Length: {len(body)}")
        rest = body
    with tls_connection(target) as sock:
        sock.sendall(head)
        ((status, _, answer),) = answers(trickle(sock, RPC, rest, lambda: assert_serving(target)))
    assert status == 408 and "came too slowly" in codec.decode(answer)["Message"], answer
    wait_until(lambda: target.proxy.cache_files()[0] == [], "the partial upload to be dropped")
    assert f"putFile/{name}" not in {entry.name for entry in target.proxy.cache_entries(owner="tester")}
    assert_serving(target)
