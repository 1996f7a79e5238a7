"""The RPC protocol of a real ``seproxy serve`` over TLS: auth matrix, whoami, ping, echo, logs.

Malformed requests and their errors are in test_bad_input_rpc.py.

A dedicated service whose config restricts two methods, so that every row
of the auth matrix has something to be refused:
``echo`` needs "authenticated" and ``ping`` needs the "Admin" property.
"""

import datetime
import errno
import time

import pytest
import requests
from fixtures.service import base_config, post_form, rpc_fields, start_service

from seproxy.transfer import codec


@pytest.fixture(scope="module")
def strict_service(pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp("strict")
    config = base_config(pki, directory / "state")
    config["authorization"] = {"echo": ["authenticated"], "ping": ["Admin"]}
    running = start_service(directory, config)
    yield running
    running.stop()


def call(service, pki, method, *args, cert=None, **fields):
    response = post_form(service.url, rpc_fields(method, *args, **fields), pki, cert=cert)
    return response.status_code, codec.decode(response.content)


def credentials(pki):
    return {
        "anonymous": None,
        "user certificate": (str(pki.user_cert), str(pki.user_key)),
        "RFC 3820 proxy": str(pki.proxy),
        "limited proxy": str(pki.limited_proxy),
        "proxy of proxy": str(pki.proxy_of_proxy),
        "proxy with group": str(pki.group_proxy),
        "unknown DN": (str(pki.unknown_cert), str(pki.unknown_key)),
        "admin": (str(pki.admin_cert), str(pki.admin_key)),
    }


# (credential, echo allowed, ping allowed): echo needs a registered user, ping needs Admin. A refusal is
# answered as DIRAC's services answer it: status 200 and an S_ERROR (EACCES) that says why.
MATRIX = [
    ("anonymous", False, False),
    ("user certificate", True, False),
    ("RFC 3820 proxy", True, False),
    ("limited proxy", True, False),
    ("proxy of proxy", True, False),
    ("proxy with group", True, True),
    ("unknown DN", False, False),
    ("admin", True, True),
]


@pytest.mark.parametrize("who, echo_allowed, ping_allowed", MATRIX)
def test_auth_matrix(strict_service, pki, who, echo_allowed, ping_allowed):
    cert = credentials(pki)[who]
    status, result = call(strict_service, pki, "echo", "hello", cert=cert)
    assert status == 200 and result["OK"] == echo_allowed, result
    if echo_allowed:
        assert result["Value"] == "hello"
    else:
        assert result["Errno"] == errno.EACCES and result["Message"]
    status, result = call(strict_service, pki, "ping", cert=cert)
    assert status == 200 and result["OK"] == ping_allowed, result
    if not ping_allowed:
        assert result["Errno"] == errno.EACCES and result["Message"], result


@pytest.mark.parametrize("who", ["foreign", "expired"])
def test_bad_certificates_are_refused_at_the_handshake(strict_service, pki, who):
    cert = (str(getattr(pki, f"{who}_cert")), str(getattr(pki, f"{who}_key")))
    with pytest.raises(requests.exceptions.SSLError):
        post_form(strict_service.url, rpc_fields("whoami"), pki, cert=cert)
    # ...and the service keeps serving others.
    assert call(strict_service, pki, "whoami")[0] == 200


def test_whoami_of_a_proxy(service, pki):
    status, result = call(service, pki, "whoami", cert=str(pki.proxy))
    assert status == 200
    who = result["Value"]
    assert who["DN"] == who["identity"] == pki.user_dn
    assert who["subject"].startswith(pki.user_dn + "/CN=")
    assert who["issuer"] == pki.user_dn
    assert who["isProxy"] is True and who["isLimitedProxy"] is False
    assert who["username"] == "tester" and who["group"] == "lab_user"
    assert who["properties"] == ["NormalUser"]
    assert who["validDN"] is True and who["validGroup"] is True
    assert 0 < who["secondsLeft"] <= 24 * 3600
    assert set(who) >= {"DN", "identity", "issuer", "subject", "isProxy", "isLimitedProxy", "username", "group",
                        "properties", "secondsLeft", "validDN", "validGroup"}


def test_whoami_limited_and_group_proxies(service, pki):
    limited = call(service, pki, "whoami", cert=str(pki.limited_proxy))[1]["Value"]
    assert limited["isLimitedProxy"] is True and limited["DN"] == pki.user_dn
    grouped = call(service, pki, "whoami", cert=str(pki.group_proxy))[1]["Value"]
    assert grouped["group"] == "lab_admin" and "Admin" in grouped["properties"]
    chained = call(service, pki, "whoami", cert=str(pki.proxy_of_proxy))[1]["Value"]
    assert chained["DN"] == pki.user_dn and chained["isProxy"] is True


def test_whoami_anonymous_and_unknown(service, pki):
    anonymous = call(service, pki, "whoami")[1]["Value"]
    assert anonymous["DN"] == "" and anonymous["username"] == "anonymous" and anonymous["validDN"] is False
    unknown = call(service, pki, "whoami", cert=(str(pki.unknown_cert), str(pki.unknown_key)))[1]["Value"]
    assert unknown["DN"] == pki.unknown_dn and unknown["validDN"] is False and unknown["properties"] == []


def test_ping(strict_service, pki):
    status, result = call(strict_service, pki, "ping", cert=str(pki.group_proxy))
    assert status == 200
    value = result["Value"]
    assert value["name"] == "DataManagement/StorageElementProxy"
    assert value["service url"] == strict_service.url
    assert isinstance(value["time"], datetime.datetime)
    assert isinstance(value["service start time"], datetime.datetime)
    assert value["service uptime"] >= 0 and value["host uptime"] > 0
    assert len(value["load"].split()) == 3
    assert {"user time", "system time", "elapsed real time"} <= set(value["cpu times"])
    assert value["version"]


def test_echo_carries_every_wire_type(service, pki):
    payload = {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "day": datetime.date(2026, 1, 2), "raw": b"\x00\xff",
               "list": [1, 2.5, None, True], "tuple": (1, 2)}
    status, result = call(service, pki, "echo", payload, cert=str(pki.proxy))
    assert status == 200
    assert result["Value"] == {**payload, "tuple": [1, 2]}


def test_requests_are_logged_with_identity_and_request_id(service, pki):
    response = post_form(service.url, rpc_fields("whoami"), pki, cert=str(pki.proxy))
    request_id = response.headers["X-Request-ID"]
    deadline = time.monotonic() + 10  # the line is written just after the answer is sent
    while not (lines := [line for line in service.log().splitlines() if f"[{request_id}]" in line]):
        assert time.monotonic() < deadline, "no log line for the request"
        time.sleep(0.05)
    (line,) = lines
    assert "method=whoami" in line and "user=tester" in line and pki.user_dn in line and "status=200" in line
