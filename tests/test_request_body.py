"""Which RPC bodies Tornado reads whole (``arrived_whole``), on a real connection: a small form that
came with its head, and nothing else. The behaviour of both ways (limits, refusals, a body that
trickles) is tested against the running service in test_bad_input_rpc and test_rpc_bounded_work."""

from __future__ import annotations

import asyncio
import socket

import pytest
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.iostream import IOStream

from seproxy.rpc.request_body import arrived_whole

LIMIT = 4096

FORM = b"method=ping&args=%5B%5D&clientVO=unknown&clientSetup=None"


def whole(head: str, sent: bytes) -> bool:
    """``arrived_whole`` of a request whose head is ``head`` once the server side read the head of
    ``head`` + ``sent`` from a real socket (the rest stays in the stream's buffer, as in the service)."""

    async def check() -> bool:
        server, client = socket.socketpair()
        stream = IOStream(server)
        try:
            client.sendall(head.encode() + b"\r\n\r\n" + sent)
            raw = await stream.read_until_regex(b"\r\n\r\n")
            # Whatever else the socket had is read into the buffer with the head, as it comes.
            await asyncio.sleep(0.05)
            lines = raw.decode().split("\r\n")
            method, path, version = lines[0].split(" ")
            request = HTTPServerRequest(
                connection=HTTP1Connection(stream, is_client=False),
                start_line=RequestStartLine(method, path, version),
                headers=HTTPHeaders.parse("\r\n".join(lines[1:])),
            )
            return arrived_whole(request, LIMIT)
        finally:
            stream.close()
            client.close()

    return asyncio.run(check())


def post(length: int | str, *extra: str) -> str:
    return "\r\n".join(["POST /rpc HTTP/1.1", "Host: x", f"Content-Length: {length}", *extra])


def test_a_small_form_that_came_with_its_head_is_read_whole():
    assert whole(post(len(FORM)), FORM)
    assert whole(post(0), b"")
    longest = b"a" * LIMIT
    assert whole(post(len(longest)), longest)


@pytest.mark.parametrize(
    ("head", "sent"),
    [
        (post(len(FORM)), FORM[:-1]),  # still arriving (or trickling: its deadline must run)
        (post(LIMIT + 1), b"a" * (LIMIT + 1)),  # larger: read as it arrives
        (post(len(FORM), "Content-Encoding: gzip"), FORM),  # Tornado's own parse would refuse it
        ("POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", b"3\r\nabc\r\n0\r\n\r\n"),
        (post("12a"), FORM),
        (post("0" * 10 + "12"), FORM),
    ],
    ids=["incomplete", "larger", "compressed", "chunked", "not-a-number", "long-number"],
)
def test_any_other_body_is_read_as_it_arrives(head: str, sent: bytes):
    assert not whole(head, sent)
