"""Staging on demand on the side server: a URL of another instance, whose files come from a slow source.

One service (route ``b``, one side-server thread, one on-demand staging at a
time, a 6 s call limit) in front of a real WebDAV server whose GET bodies
under ``/lab/slow/`` trickle out at 2 MiB/s. The URLs are signed with the
shared secret as instance ``a`` would sign them, so ``b`` holds no link for
them and stages their files on demand. While it does, its one thread keeps
serving other downloads; a second foreign URL is told to come back
(503, Retry-After); a staging past the call limit is a 504; a client that
leaves does not leak what was staged for it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.http_side import SECRET, curl, http_config
from fixtures.proxy import element_spec
from fixtures.service import TEST_ADMIN, TEST_USER, ServiceProcess, free_port, start_service
from fixtures.storage_servers import LoopbackCA, fresh_directory, run_webdav

from seproxy.http_side.grants import Grant
from seproxy.http_side.signing import Signer
from seproxy.transfer import RPCClient, returnValueOrRaise

SLOW_SE = "SlowDAV"
CALL_LIMIT = 6
MiB = 1024 * 1024
PIECE = 64 * 1024
RATE = 2 * MiB  # bytes per second of a slow body


class Trickle:
    """WSGI middleware: GET bodies under /lab/slow/ come out at RATE; records which began.

    (A staging checks for cancellation between the chunks it reads, 4 MiB
    each from WebDAV: a slow body must still come in chunks that large.)
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.started: list[str] = []
        self.lock = threading.Condition()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = self.app(environ, start_response)
        path = environ["PATH_INFO"]
        if environ["REQUEST_METHOD"] != "GET" or "/lab/slow/" not in path:
            return body
        with self.lock:
            self.started.append(path)
            self.lock.notify_all()
        return self._slowly(body)

    @staticmethod
    def _slowly(body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in body:
                for start in range(0, len(chunk), PIECE):
                    piece = chunk[start : start + PIECE]
                    time.sleep(len(piece) / RATE)
                    yield piece
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def wait_started(self, path: str) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: self.gets(path), 30), f"no GET of {path}"

    def gets(self, path: str) -> int:
        return sum(started.endswith(path) for started in self.started)


@dataclass
class Instance:
    process: ServiceProcess
    root: Path
    trickle: Trickle
    pki: Any

    @property
    def side(self) -> str:
        return f"http://127.0.0.1:{self.process.config['http']['port']}"

    def put(self, lfn: str, data: bytes) -> bytes:
        path = self.root / lfn.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def foreign_url(self, lfn: str, link_id: str, grant: Grant | None = None) -> str:
        """A URL of this file as instance ``a`` (same secret) would hand it out, for ``grant`` (tester's)."""
        name = lfn.rsplit("/", 1)[1]
        grant = grant or Grant(TEST_USER, "lab_user", (lfn,), False)
        key = Signer("k1", SECRET.encode()).sign(link_id, int(time.time()) + 600, name, "a", grant)
        return f"{self.side}/a/{key}/{name}"

    def prepared_url(self, lfn: str) -> str:
        """A URL of this instance, made through RPC."""
        client = RPCClient(f"https://localhost:{self.process.port}/DataManagement/StorageElementProxy", proxy=str(self.pki.proxy), ca_dir=str(self.pki.ca_dir))
        with client:
            return str(returnValueOrRaise(client.prepareFileForHTTP(lfn))["HttpURL"])

    def stagings(self, link_id: str) -> int:
        return sum(f":{link_id} on demand for tester: " in line for line in self.process.log().splitlines())


@contextmanager
def run_instance(pki: Any, storage_ca: LoopbackCA, directory: Path, stagings: int) -> Iterator[Instance]:
    """Route ``b`` with ``stagings`` on-demand stagings (each user's share: half, at least one)."""
    trickles: list[Trickle] = []

    def wrap(app: Any) -> Trickle:
        trickles.append(Trickle(app))
        return trickles[-1]

    (directory / "dav").mkdir()
    with run_webdav(directory / "dav", storage_ca, wrap=wrap) as url:
        root = fresh_directory(directory / "dav")
        config = http_config(pki, directory, route="b", port=free_port(), threads=1, on_demand_stagings=stagings)
        config["service"]["call_timeout"] = CALL_LIMIT
        config["storage_elements"] = {SLOW_SE: element_spec("webdav", f"{url}/{root.name}", ca_dir=str(storage_ca.ca_dir))}
        process = start_service(directory / "service", config)
        try:
            yield Instance(process, root, trickles[0], pki)
        finally:
            process.stop()
            assert "Traceback" not in process.log()


@pytest.fixture(scope="module")
def instance(pki: Any, storage_ca: LoopbackCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    with run_instance(pki, storage_ca, tmp_path_factory.mktemp("on-demand"), stagings=1) as running:
        yield running


def test_a_staging_waits_without_holding_the_server_and_bounds_the_others(instance: Instance) -> None:
    slow = instance.put("/lab/slow/first.dat", os.urandom(4 * MiB))  # about 2 s from the source
    instance.put("/lab/slow/second.dat", b"second")
    fast = instance.put("/lab/fast.dat", os.urandom(100_000))
    fast_url = instance.prepared_url("/lab/fast.dat")
    url = instance.foreign_url("/lab/slow/first.dat", "1" * 32)
    answers: list[requests.Response] = []
    waiting = [threading.Thread(target=lambda: answers.append(requests.get(url, timeout=60))) for _ in range(2)]
    waiting[0].start()
    instance.trickle.wait_started("/lab/slow/first.dat")
    waiting[1].start()  # the same URL again: it waits for the same staging, and takes no slot

    # The one staging slot is taken: another foreign URL is told to come back, at once.
    refused = requests.get(instance.foreign_url("/lab/slow/second.dat", "2" * 32), timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "10", refused.text
    assert "being staged here now" in refused.text
    # The side server's one thread serves other downloads meanwhile.
    assert requests.get(fast_url, timeout=10).content == fast
    assert all(thread.is_alive() for thread in waiting), "the slow staging was still going on"

    for thread in waiting:
        thread.join(60)
    assert [(answer.status_code, answer.content == slow) for answer in answers] == [(200, True)] * 2
    assert instance.stagings("1" * 32) == 1
    assert instance.trickle.gets("/lab/slow/first.dat") == 1, "one download from the source"
    # The slot is free again.
    assert requests.get(instance.foreign_url("/lab/slow/second.dat", "2" * 32), timeout=30).content == b"second"


def test_a_staging_past_the_call_limit_is_a_504(instance: Instance) -> None:
    instance.put("/lab/slow/endless.dat", os.urandom(40 * MiB))  # about 20 s from the source
    started = time.monotonic()
    answer = requests.get(instance.foreign_url("/lab/slow/endless.dat", "3" * 32), timeout=60)
    assert answer.status_code == 504 and f"did not finish within {CALL_LIMIT} s" in answer.text, answer.text
    assert time.monotonic() - started < CALL_LIMIT + 4, "cancelled at its next chunk after the limit"
    assert instance.stagings("3" * 32) == 0


def test_a_client_that_leaves_while_its_files_are_staged(instance: Instance) -> None:
    data = instance.put("/lab/slow/left.dat", os.urandom(3 * MiB))
    url = instance.foreign_url("/lab/slow/left.dat", "4" * 32)
    gone = curl("--max-time", "0.5", "-o", "/dev/null", url, check=False)
    assert gone.returncode == 28, gone  # curl's "operation timed out"
    deadline = time.monotonic() + 30
    while instance.stagings("4" * 32) == 0:
        assert time.monotonic() < deadline, "the staging went on without its client"
        time.sleep(0.2)
    # Staged once for the client who left; the next request is served from the link kept.
    assert requests.get(url, timeout=10).content == data
    assert instance.stagings("4" * 32) == 1


def test_refusals_that_come_at_once_are_answered(instance: Instance) -> None:
    """A staging may end before its request is registered to wait for it (an unknown user is refused
    before any I/O): every such request is still answered, and the server's thread never stalls."""
    instance.put("/lab/quick.dat", b"quick")
    for number in range(40):
        grant = Grant(f"stranger{number}", "lab_user", ("/lab/quick.dat",), False)
        key = Signer("k1", SECRET.encode()).sign(f"{number + 0x100:032x}", int(time.time()) + 600, "quick.dat", "a", grant)
        answer = requests.get(f"{instance.side}/a/{key}/quick.dat", timeout=10)
        assert answer.status_code == 403 and f"stranger{number}" in answer.text, answer.text


def test_one_users_urls_take_their_share_of_the_stagings(pki: Any, storage_ca: LoopbackCA, tmp_path: Path) -> None:
    """Two stagings, half each user's: a user's second URL waits its turn (503), another user's is staged."""
    with run_instance(pki, storage_ca, tmp_path, stagings=2) as instance:
        slow = instance.put("/lab/slow/mine.dat", os.urandom(4 * MiB))  # about 2 s from the source
        instance.put("/lab/slow/mine-too.dat", b"mine too")
        theirs = instance.put("/lab/slow/theirs.dat", os.urandom(1 * MiB))
        answers: list[requests.Response] = []
        first = threading.Thread(target=lambda: answers.append(requests.get(instance.foreign_url("/lab/slow/mine.dat", "5" * 32), timeout=60)))
        first.start()
        instance.trickle.wait_started("/lab/slow/mine.dat")

        refused = requests.get(instance.foreign_url("/lab/slow/mine-too.dat", "6" * 32), timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "10", refused.text
        assert "1 file(s) of tester's URLs are being staged here now, that user's share" in refused.text
        other = Grant(TEST_ADMIN, "lab_admin", ("/lab/slow/theirs.dat",), False)
        assert requests.get(instance.foreign_url("/lab/slow/theirs.dat", "7" * 32, other), timeout=30).content == theirs
        assert first.is_alive(), "the first user's staging was still going on"

        first.join(60)
        assert [(answer.status_code, answer.content == slow) for answer in answers] == [(200, True)]
        assert requests.get(instance.foreign_url("/lab/slow/mine-too.dat", "6" * 32), timeout=30).content == b"mine too"
