"""One address must not be able to deny service: per-address limits, a first-request deadline, eviction of idle connections.

2000 idle TCP connections from one client (no TLS hello on the RPC port, no
request on the side port) used to fill both servers' tables: the next
client was closed at accept (RPC) or answered 503 (side server) for as long
as the attacker kept reconnecting. The limits are set low here (20 per
address, 60 in all) so that a few attacking addresses (127.0.0.2-4) fill
the tables completely and the other client (127.0.0.1) needs an eviction.
"""

import socket
import time

import requests

from seproxy.transfer import RPCClient, returnValueOrRaise

ATTEMPTS = 2000
ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PER_ADDRESS, TOTAL = 20, 60


def flood(port, attempts=ATTEMPTS):
    """Idle connections to ``port`` from the attacking addresses, kept open by the caller."""
    sockets = []
    for number in range(attempts):
        sock = socket.socket()
        sock.bind((ATTACKERS[number % len(ATTACKERS)], 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sockets.append(sock)
    return sockets


def limited(http_handshake="30s", rpc_handshake="30s"):
    def config(settings):
        settings["service"].update(
            max_connections=TOTAL, max_connections_per_address=PER_ADDRESS, handshake_timeout=rpc_handshake, log_level="INFO"
        )

    return config, {"max_connections": TOTAL, "max_connections_per_address": PER_ADDRESS, "handshake_timeout": http_handshake}


def test_idle_connections_from_a_few_addresses_do_not_stop_another_client(start_http_service, pki):
    config, http = limited()
    service = start_http_service(config, **http)
    service.put("/lim/a.dat", b"payload")
    side_port = int(service.url("/lim/a.dat", b"payload").split("/")[2].rsplit(":", 1)[1])
    held = []
    try:
        held += flood(service.process.port)
        held += flood(side_port)
        client = RPCClient(service.process.url, proxy=str(pki.proxy), ca_dir=str(pki.ca_dir), timeout=30)
        try:
            assert returnValueOrRaise(client.ping())
            url = returnValueOrRaise(client.prepareFileForHTTP("/lim/a.dat"))["HttpURL"]
        finally:
            client.close()
        response = requests.get(url, timeout=30)
        assert response.status_code == 200 and response.content == b"payload"
        log = service.log()
        assert "too many connections from this address" in log
        assert "to make room for a new one" in log
    finally:
        for sock in held:
            sock.close()


def closed_by_server(sock, within):
    """Whether the server closes ``sock`` (EOF or reset) before ``within`` seconds pass (a hang detector)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout(start_http_service):
    config, http = limited(http_handshake="1s", rpc_handshake="1s")
    service = start_http_service(config, **http)
    side_port = int(service.url("/lim/b.dat", b"b").split("/")[2].rsplit(":", 1)[1])
    for port in (service.process.port, side_port):
        with socket.create_connection(("127.0.0.1", port)) as silent:
            assert closed_by_server(silent, within=30), port  # not the idle timeouts (2 min, 1 min)
    assert "no request within 1 s" in service.log()


def test_one_address_gets_its_share_and_no_more(start_http_service):
    config, http = limited()
    service = start_http_service(config, **http)
    held = []
    try:
        for _ in range(PER_ADDRESS):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", service.process.port))
            held.append(sock)
        time.sleep(0.5)  # let the server accept them all
        extra = socket.socket()
        extra.bind(("127.0.0.2", 0))
        extra.connect(("127.0.0.1", service.process.port))
        held.append(extra)
        assert closed_by_server(extra, within=30)
        assert not closed_by_server(held[0], within=0.5)  # the share stays open
    finally:
        for sock in held:
            sock.close()
