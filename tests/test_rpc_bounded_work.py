"""Work done for a call before its caller is known is bounded by the body's size, and no call holds up
another caller: the body limit follows the identity known at the handshake, a form is read in memory
bounded by the body (whatever its escapes), and large calls are decoded and answered off the event loop."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.service import ServiceProcess, base_config, start_service

from seproxy.transfer import RPCClient, codec

KiB, MiB = 1024, 1024 * 1024
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def fresh_service(pki: Any, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service of this test's own: its peak memory is this test's doing."""
    running = start_service(tmp_path, base_config(pki, tmp_path / "state"))
    yield running
    running.stop()


def peak_rss(service: ServiceProcess) -> int:
    """The service process's peak resident memory so far (VmHWM), in bytes."""
    assert service.process is not None
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KiB
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def post(service: ServiceProcess, pki: Any, body: bytes, cert: Any) -> requests.Response:
    return requests.post(service.url, data=body, cert=cert, verify=str(pki.ca_dir), headers=FORM, timeout=120)


def test_an_anonymous_caller_may_send_only_a_small_form(service: ServiceProcess, pki: Any) -> None:
    body = b"method=echo&args=" + codec.encode(["x" * 100 * KiB]).encode()
    refused = post(service, pki, body, None)
    assert refused.status_code == 413, refused.text[:300]
    answer = codec.decode(refused.content)
    assert answer["Errno"] == errno.EFBIG and "service.max_anonymous_form_size" in answer["Message"], answer
    assert f"limit of {64 * KiB} bytes" in answer["Message"]
    assert post(service, pki, body, str(pki.proxy)).status_code == 200  # the same body from a known caller
    small = post(service, pki, b"method=echo&args=" + codec.encode(["x" * KiB]).encode(), None)
    assert codec.decode(small.content)["Value"] == "x" * KiB


def test_a_form_of_escapes_is_read_in_memory_bounded_by_its_size(fresh_service: ServiceProcess, pki: Any) -> None:
    body = b"method=ping&args=" + b"%20" * (14 * MiB // 3)  # 14 MiB: parse_qsl made over a GiB of it
    before = peak_rss(fresh_service)
    answer = post(fresh_service, pki, body, str(pki.proxy))
    assert answer.status_code == 400 and "'args'" in codec.decode(answer.content)["Message"], answer.text[:300]
    grown = peak_rss(fresh_service) - before
    assert grown < 4 * len(body), f"the service's peak memory grew by {grown >> 20} MiB for a 14 MiB form"


class Pinger(threading.Thread):
    """Pings the service as another user, for as long as it runs: the slowest answer is what a call cost others."""

    def __init__(self, service: ServiceProcess, pki: Any) -> None:
        super().__init__(daemon=True)
        self.client = RPCClient(service.url, cert=str(pki.admin_cert), key=str(pki.admin_key), ca_dir=str(pki.ca_dir))
        self.slowest = 0.0
        self.answers = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            assert self.client.executeRPC("ping")["OK"]
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers += 1
            time.sleep(0.02)


@pytest.mark.parametrize("who", ["anonymous", "known"])
def test_one_call_does_not_stall_another_callers_ping(service: ServiceProcess, pki: Any, who: str) -> None:
    body = b"method=echo&args=[[" + b"[]," * 5_000_000 + b"[]]]"  # five million tiny lists, 15 MiB
    pinger = Pinger(service, pki)
    pinger.start()
    try:
        while not pinger.answers:
            time.sleep(0.01)
        answer = post(service, pki, body, None if who == "anonymous" else str(pki.proxy))
    finally:
        pinger.stop.set()
        pinger.join()
        pinger.client.close()
    assert pinger.slowest < 1.0, f"another caller's ping waited {pinger.slowest:.1f} s"
    assert answer.status_code == (413 if who == "anonymous" else 400), answer.text[:300]
    if who == "known":
        assert "more than 50000 JSON lists and dicts" in codec.decode(answer.content)["Message"]
