"""What the side server refuses: expired, altered, unknown and used URLs, path tricks, bad requests, and
clients that hold connections. A refusal is a short plain text, never a file."""

import os
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import pytest
import requests
from fixtures.http_side import SECRET, raw_request, status_of

from seproxy.http_side.signing import CLOCK_SKEW, Signer


def split(url: str) -> tuple[str, str, str]:
    """(origin, key, name segment) of a download URL."""
    parts = urlsplit(url)
    _, key, name = parts.path.split("/")
    return f"{parts.scheme}://{parts.netloc}", key, name


def assert_refused(response: requests.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text in response.text and len(response.content) < 200


def test_expired_url_is_refused(http_service):
    origin, key, name = split(http_service.url("/lab/sec/expired.dat", os.urandom(100)))
    key_id, link_id, _, _ = key.split(".")
    signer = Signer(key_id, SECRET.encode())
    past = int(time.time()) - CLOCK_SKEW - 1
    assert_refused(requests.get(f"{origin}/{signer.sign(link_id, past, 'expired.dat')}/{name}", timeout=10), 403, "expired")
    # Within the clock-skew tolerance the link still works.
    recent = int(time.time()) - CLOCK_SKEW + 10
    assert requests.get(f"{origin}/{signer.sign(link_id, recent, 'expired.dat')}/{name}", timeout=10).status_code == 200


def test_altered_urls_are_refused(http_service):
    origin, key, name = split(http_service.url("/lab/sec/tamper.dat", os.urandom(100)))
    key_id, link_id, expires, signature = key.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    later = str(int(expires) + 3600)
    other_link = ("0" if link_id[0] != "0" else "1") + link_id[1:]
    for altered in (
        f"{origin}/{key_id}.{link_id}.{expires}.{flipped}/{name}",
        f"{origin}/{key_id}.{link_id}.{later}.{signature}/{name}",
        f"{origin}/{key_id}.{other_link}.{expires}.{signature}/{name}",
        f"{origin}/{key}/other.dat",
    ):
        assert_refused(requests.get(altered, timeout=10), 403, "invalid link")
    assert_refused(requests.get(f"{origin}/k2.{link_id}.{expires}.{signature}/{name}", timeout=10), 403, "another key")


def test_another_secret_is_refused(http_service):
    origin, key, name = split(http_service.url("/lab/sec/secret.dat", os.urandom(100)))
    key_id, link_id, expires, _ = key.split(".")
    forged = Signer(key_id, b"x" * 64).sign(link_id, int(expires), "secret.dat")
    assert_refused(requests.get(f"{origin}/{forged}/{name}", timeout=10), 403, "invalid link")


def test_unknown_link_with_a_valid_signature_is_not_found(http_service):
    origin, key, _ = split(http_service.url("/lab/sec/unknown.dat", os.urandom(100)))
    signer = Signer(key.split(".")[0], SECRET.encode())
    key = signer.sign("f" * 32, int(time.time()) + 600, "unknown.dat")
    assert_refused(requests.get(f"{origin}/{key}/unknown.dat", timeout=10), 404, "no such download")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/{key}/../../etc/passwd",
        "/{key}/..%2f..%2fetc%2fpasswd",
        "/{key}/%2e%2e",
        "//{key}/{name}",
        "/{key}/{name}/",
        "/{key}/{name}/x",
        "/{key}/{name}%00.txt",
        "/{key}%2f{name}",
        "/{key}",
        "/data/00/0000",
        "/index.sqlite3",
    ],
)
def test_path_tricks_get_no_file(http_service, path):
    url = http_service.url("/lab/sec/tricks.dat", b"secret bytes")
    origin, key, name = split(url)
    target = path.format(key=key, name=name)
    answer = raw_request(url, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) in (400, 403, 404), answer[:200]
    assert b"secret bytes" not in answer and b"root:" not in answer
    assert len(answer) < 400


def test_absolute_form_and_query_are_understood(http_service):
    data = os.urandom(100)
    url = http_service.url("/lab/sec/absolute.dat", data)
    parts = urlsplit(url)
    answer = raw_request(url, f"GET {url}?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) == 200 and answer.endswith(data)
    assert requests.get(f"{url}?ignored=1", timeout=10).content == data
    assert parts.path.startswith("/k1.")


def test_single_use_url(start_http_service):
    service = start_http_service(single_use=True)
    data = os.urandom(1000)
    service.put("/lab/once.dat", data)
    value = service.prepare("/lab/once.dat")
    assert value["SingleUse"] is True
    url = value["HttpURL"]
    assert requests.head(url, timeout=10).status_code == 200, "HEAD does not use the link up"
    assert requests.get(url, timeout=10).content == data
    assert_refused(requests.get(url, timeout=10), 403, "already used")
    assert requests.head(url, timeout=10).status_code == 403
    # Of several downloads racing for a fresh link, exactly one gets the file.
    url = service.prepare("/lab/once.dat")["HttpURL"]
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(requests.get(url, timeout=30).status_code)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [403] * 7


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"this is not http\r\n\r\n", 400),
        (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-Filler: " + b"b" * 20000 + b"\r\n\r\n", 431),
        (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431),
    ],
)
def test_malformed_requests(http_service, request_bytes, status):
    url = http_service.url("/lab/sec/malformed.dat", b"x")
    answer = raw_request(url, request_bytes)  # returns when the server closes the connection
    assert status_of(answer) == status, answer[:300]
    assert b"\r\nConnection: close\r\n" in answer
    if status == 405:
        assert b"\r\nAllow: GET, HEAD\r\n" in answer


def test_keep_alive_and_http_1_0(http_service):
    data = os.urandom(5000)
    url = http_service.url("/lab/sec/keepalive.dat", data)
    path = urlsplit(url).path
    two = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = raw_request(url, two.encode())  # pipelined on one connection
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.count(data) == 2
    old = raw_request(url, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    assert status_of(old) == 200 and b"Connection: close" in old and old.endswith(data)


def test_idle_and_slow_clients_are_cut_off(start_http_service):
    service = start_http_service(idle_timeout=1)
    url = service.url("/lab/slow.dat", b"x")
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as idle:
        assert idle.recv(100) == b""  # closed by the server
    assert 0.9 < time.monotonic() - started < 5
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as trickle:
        with pytest.raises(OSError):  # a head sent a byte at a time does not buy more time
            for byte in f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n".encode() * 10:
                trickle.send(bytes([byte]))
                time.sleep(0.05)
            raise AssertionError("the server kept the connection")
    assert time.monotonic() - started < 5


def test_connection_limit(start_http_service):
    service = start_http_service(max_connections=2)
    url = service.url("/lab/limit.dat", b"y")
    parts = urlsplit(url)
    held = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)
        answer = raw_request(url, b"")
        assert status_of(answer) == 503 and b"too many connections" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while requests.get(url, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the slots were not given back"
        time.sleep(0.1)


def test_access_log_names_client_key_status_bytes_and_duration(http_service):
    data = os.urandom(4321)
    url = http_service.url("/lab/sec/logged.dat", data)
    _, key, _ = split(url)
    key_id, link_id, _, signature = key.split(".")
    requests.get(url, timeout=10)
    line = http_service.wait_for_log(f"key={key_id}:{link_id} GET status=200")
    assert line.split(" seproxy.http [-] ")[1].startswith("127.0.0.1 ")
    assert "bytes=4321 " in line and line.endswith("ms")
    assert signature not in http_service.log(), "the signature never reaches the log"


def test_links_survive_a_restart(start_http_service):
    service = start_http_service()
    data = os.urandom(2000)
    url = service.url("/lab/restart.dat", data)
    port = urlsplit(url).port
    service.process.stop()
    service.process.config["http"]["port"] = port
    service.process.start()
    assert requests.get(url, timeout=10).content == data


def test_names_are_quoted_in_the_url(http_service, tmp_path):
    data = os.urandom(10)
    name = "a b%c?d#é.dat"
    url = http_service.url(f"/lab/sec/{name}", data)
    assert url.endswith("/" + quote(name, safe=""))
    response = requests.get(url, timeout=10)
    assert response.content == data
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"a b_c?d#_.dat\"; filename*=UTF-8''a%20b%25c%3Fd%23%C3%A9.dat"
    )
