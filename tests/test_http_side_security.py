"""The side server's links and connections: single-use links, the connection limit, the access log, links
that outlive a restart, names in URLs. What it refuses as bad input is in test_bad_input_side.py."""

import os
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import requests
from fixtures.http_side import raw_request, status_of


def split(url: str) -> tuple[str, str, str]:
    """(origin, key, name segment) of a download URL."""
    parts = urlsplit(url)
    _, key, name = parts.path.split("/")
    return f"{parts.scheme}://{parts.netloc}", key, name


def assert_refused(response: requests.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text in response.text and len(response.content) < 200


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


def test_connection_limit(start_http_service):
    # Idle connections of other addresses would be evicted to make room (tests/test_connection_limits.py);
    # one address beyond its share is refused.
    service = start_http_service(max_connections=2, max_connections_per_address=2)
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
    key_id, link_id, *_, signature = key.split(".")
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
