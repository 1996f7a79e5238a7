"""Storage elements that fail: down, stalled, too slow, sending wrong or too few bytes.

One service for the module, with an HTTP side server, in front of:

* ``FAULTY-DAV``: a real WebDAV server whose GET bodies go wrong the way a test
  tells it (``FaultyBodies``), while its ``Digest`` and ``Content-Length``
  describe the true file;
* ``GONE-DAV``: a WebDAV server that a test stops;
* ``NO-XROOT``: an XRootD URL where nothing listens;
* ``FILE-SE``: a healthy element, for the requests that must go on meanwhile.

Whatever goes wrong, the caller gets an error that says what, and the cache
is left as it was: no entry, no temporary file, nothing served. Callers of
other files are served meanwhile, and callers of the same file are not
failed by another caller who gave up.
"""

from __future__ import annotations

import errno
import http.client
import os
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from fixtures.proxy import (
    FILE_SE,
    FORM,
    MiB,
    ObservedStorage,
    Place,
    ProxyService,
    element_spec,
    file_place,
    ok,
    proxy_config,
    refused,
    unique,
    wait_until,
    webdav_place,
)
from fixtures.service import free_port, rpc_fields, start_service
from fixtures.storage_servers import LOOPBACK, LoopbackCA, run_webdav

from seproxy.transfer import codec

pytestmark = pytest.mark.cases("faults", "failing storage elements")

FAULTY_DAV, GONE_DAV, NO_XROOT = "FAULTY-DAV", "GONE-DAV", "NO-XROOT"
# The service's limit for one call, and how long a storage element may stay silent.
CALL_LIMIT = 3
SILENCE_LIMIT = 1
# prepareFileForHTTP looks for an LFN on these, in this order.
LFN_ELEMENTS = [FAULTY_DAV, FILE_SE, GONE_DAV, NO_XROOT]


class FaultyBodies:
    """WSGI middleware: GET bodies are sent as they are, or as ``fault`` says; requests are counted.

    ``corrupt`` flips the first byte; ``cut`` breaks the connection after a
    few blocks (the ``Content-Length`` promised more); ``stall`` sends the
    first block, then nothing until ``release`` is set. Headers, with the
    true size and checksum, are left as the server made them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.fault: str | None = None
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def seen(self, method: str, name: str) -> int:
        """How many ``method`` requests asked for a file called ``name``."""
        with self._lock:
            return self._seen[method, name]

    def heal(self) -> None:
        self.fault = None
        self.release.set()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self._seen[environ["REQUEST_METHOD"], environ["PATH_INFO"].rsplit("/", 1)[-1]] += 1
        body = self.app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET" or self.fault is None:
            return body
        return self._closing(body, getattr(self, f"_{self.fault}")(iter(body)))

    @staticmethod
    def _closing(body: Iterable[bytes], blocks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from blocks
        finally:
            getattr(body, "close", lambda: None)()

    def _corrupt(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        first = next(blocks, b"")
        yield bytes([first[0] ^ 0xFF]) + first[1:] if first else first
        yield from blocks

    def _cut(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        for number, block in enumerate(blocks):
            if number == 8:
                raise ConnectionAbortedError("the test storage cuts this body short")
            yield block

    def _stall(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        yield next(blocks)
        self.stalled.set()
        self.release.wait(30)


@dataclass
class FaultyStorage:
    """The service of this module, and the handles on its storage that the tests turn."""

    service: ProxyService
    bodies: FaultyBodies
    observer: ObservedStorage
    gone: ExitStack  # closing it stops the GONE-DAV server

    def place_file(self, se: str, data: bytes) -> str:
        """A new file of ``data`` at the top of element ``se``; its path (also its LFN)."""
        name = unique(se.lower())
        (self.service.place(se).root / name).write_bytes(data)
        return f"/{name}"

    def assert_nothing_cached(self, se: str, path: str) -> None:
        """No entry for ``path`` of ``se``, and no temporary file of any staging."""
        assert self.service.cache_files()[0] == []
        assert [entry for entry in self.service.cache_entries(se=se) if entry.source_path == path] == []


@pytest.fixture(scope="module")
def faulty_storage(
    pki: Any, tmp_path_factory: pytest.TempPathFactory, storage_ca: LoopbackCA
) -> Iterator[FaultyStorage]:
    directory = tmp_path_factory.mktemp("faults")
    wrappers: list[Any] = []

    def watch(app: Any) -> ObservedStorage:
        bodies = FaultyBodies(app)
        wrappers.extend([bodies, ObservedStorage(bodies)])
        return wrappers[-1]

    with ExitStack() as stack:
        roots = {name: directory / name.lower() for name in (FAULTY_DAV, GONE_DAV)}
        for root in roots.values():
            root.mkdir()
        faulty_url = stack.enter_context(run_webdav(roots[FAULTY_DAV], storage_ca, wrap=watch))
        gone = stack.enter_context(ExitStack())
        gone_url = gone.enter_context(run_webdav(roots[GONE_DAV], storage_ca))
        nowhere = f"root://{LOOPBACK}:{free_port()}//data"
        places = [
            file_place(FILE_SE, directory / "file-se"),
            webdav_place(FAULTY_DAV, faulty_url, roots[FAULTY_DAV], storage_ca, timeout=SILENCE_LIMIT),
            webdav_place(GONE_DAV, gone_url, roots[GONE_DAV], storage_ca),
            Place(NO_XROOT, "xroot", directory, element_spec("xroot", nowhere, timeout=SILENCE_LIMIT)),
        ]
        config = proxy_config(pki, directory / "state", places)
        config["service"]["call_timeout"] = CALL_LIMIT
        config["http"] = {"enabled": True, "host": LOOPBACK, "port": 0, "lfn_storage_elements": LFN_ELEMENTS}
        service = ProxyService(start_service(directory, config), pki, {place.name: place for place in places})
        stack.callback(service.process.stop)
        stack.callback(service.close_clients)
        yield FaultyStorage(service, *wrappers, gone)


@pytest.fixture
def storage(faulty_storage: FaultyStorage) -> Iterator[FaultyStorage]:
    """The module's service, healed after the test; its log lines of the test are shown if it fails."""
    start = len(faulty_storage.service.process.log())
    yield faulty_storage
    faulty_storage.bodies.heal()
    faulty_storage.observer.rate = None
    log = faulty_storage.service.process.log()[start:]
    print(f"service log during this test:\n{log}")
    assert "Traceback" not in log, "a storage fault is answered as an error, never a crash"


def assert_still_serving(storage: FaultyStorage) -> None:
    data = os.urandom(100_000)
    assert storage.service.fetch(FILE_SE, storage.place_file(FILE_SE, data)) == data


# -- a storage element that is down ------------------------------------------------


@pytest.mark.parametrize(
    "se, codes",
    [(GONE_DAV, {errno.ECONNREFUSED}), (NO_XROOT, {errno.ETIMEDOUT, errno.EHOSTUNREACH})],
    ids=[GONE_DAV, NO_XROOT],
)
def test_an_element_that_is_down_is_named_and_nothing_is_cached(
    storage: FaultyStorage, se: str, codes: set[int]
) -> None:
    service = storage.service
    if se == GONE_DAV:
        path = storage.place_file(se, b"staged while the server was up")
        assert service.fetch(se, path) == b"staged while the server was up"
        storage.gone.close()
    path = f"/{unique('never-there')}"

    result = service.call("prepareFile", se, path)
    assert result["OK"] is False and result["Errno"] in codes, result
    assert f"{se}: {path}: storage at {LOOPBACK}:" in result["Message"], result
    over_http = service.call("prepareFileForHTTP", path)
    assert over_http["OK"] is False and f"{se}: {path}: storage at {LOOPBACK}:" in over_http["Message"], over_http

    storage.assert_nothing_cached(se, path)
    assert_still_serving(storage)


# -- a storage element that is slow ------------------------------------------------


def test_a_silent_element_is_cut_off_by_its_timeout(storage: FaultyStorage) -> None:
    data = os.urandom(2 * MiB)
    path = storage.place_file(FAULTY_DAV, data)
    storage.bodies.fault = "stall"

    message = refused(storage.service.call("prepareFile", FAULTY_DAV, path), errno.ETIMEDOUT)
    assert f"{FAULTY_DAV}: {path}: storage at {LOOPBACK}:" in message
    assert f"no answer within {SILENCE_LIMIT} s" in message
    assert storage.bodies.stalled.is_set(), "the body must have started before the silence"
    storage.assert_nothing_cached(FAULTY_DAV, path)

    storage.bodies.heal()
    assert storage.service.fetch(FAULTY_DAV, path) == data


def test_a_staging_over_the_call_limit_is_cancelled_while_others_are_served(storage: FaultyStorage) -> None:
    service = storage.service
    data = os.urandom(3 * MiB + MiB // 2)
    path = storage.place_file(FAULTY_DAV, data)
    storage.observer.rate = MiB  # 3.5 s for the whole body, over the call limit

    with ThreadPoolExecutor(1) as pool, service.new_client(service.writer) as client:
        slow = pool.submit(client.prepareFile, FAULTY_DAV, path)
        wait_until(lambda: service.cache_files()[0], "the slow staging to start")
        assert_still_serving(storage)
        assert not slow.done(), "the fast request must not have waited for the slow one"
        message = refused(slow.result(), errno.ETIMEDOUT)

    assert f"did not finish within {CALL_LIMIT} s" in message
    # The cancelled staging stops at its next chunk and removes its temporary file.
    wait_until(lambda: not service.cache_files()[0], "the temporary file of the cancelled staging to go", timeout=10)
    storage.assert_nothing_cached(FAULTY_DAV, path)
    assert storage.observer.gets(path.lstrip("/")) == 1


def call_and_leave(service: ProxyService, method: str, *args: Any) -> http.client.HTTPSConnection:
    """Send an RPC call as the writer, and do not wait for the answer: the caller closes the connection."""
    context = ssl.create_default_context(capath=str(service.pki.ca_dir))
    context.load_cert_chain(str(service.writer.cert))
    connection = http.client.HTTPSConnection("localhost", service.process.port, context=context, timeout=30)
    body = urlencode(rpc_fields(method, *args))
    connection.request("POST", urlsplit(service.url).path, body, FORM)
    return connection


def test_a_caller_that_leaves_fails_no_one_waiting_for_the_same_file(storage: FaultyStorage) -> None:
    service = storage.service
    data = os.urandom(2 * MiB)
    path = storage.place_file(FAULTY_DAV, data)
    name = path.lstrip("/")
    storage.observer.rate = MiB // 4  # 8 s for the whole body: the first caller leaves long before

    leaving = call_and_leave(service, "prepareFile", FAULTY_DAV, path)
    wait_until(lambda: storage.observer.gets(name) == 1, "the first caller's staging to start")
    with ThreadPoolExecutor(1) as pool, service.new_client(service.reader) as client:
        waiting = pool.submit(client.prepareFile, FAULTY_DAV, path)
        wait_until(lambda: storage.bodies.seen("HEAD", name) == 2, "the second caller to join the staging")
        leaving.close()
        # Answered after the service's event loop has seen the close, which cancels the first call.
        ok(service.call("ping"))
        storage.observer.rate = None
        ok(waiting.result())

    assert storage.observer.gets(name) == 2, "the staging is run again for the caller still waiting"
    assert service.download(f"getFile/{name}", who=service.reader).content == data
    assert service.cache_files()[0] == [], "the cancelled staging removed its temporary file"


# -- a storage element that sends wrong bytes ----------------------------------------


@pytest.mark.parametrize(
    "fault, code, detail",
    [
        ("corrupt", errno.EIO, "the file did not arrive intact: adler32 mismatch"),
        ("cut", errno.ECONNRESET, "the connection broke during the transfer"),
    ],
    ids=["corrupt", "cut"],
)
def test_wrong_bytes_are_never_cached_nor_served(storage: FaultyStorage, fault: str, code: int, detail: str) -> None:
    service = storage.service
    data = os.urandom(MiB)
    path = storage.place_file(FAULTY_DAV, data)
    name = path.lstrip("/")
    storage.bodies.fault = fault

    assert detail in refused(service.call("prepareFile", FAULTY_DAV, path), code)
    unknown = service.download(f"getFile/{name}")
    assert unknown.status_code == 400 and codec.decode(unknown.content)["Errno"] == errno.ENOENT
    over_http = service.call("prepareFileForHTTP", path)
    assert over_http["OK"] is False and f"{FAULTY_DAV}: " in over_http["Message"], over_http
    assert detail in over_http["Message"]
    storage.assert_nothing_cached(FAULTY_DAV, path)

    # A good replica further down the list is served instead, and the bad one is named.
    (service.place(FILE_SE).root / name).write_bytes(data)
    prepared = ok(service.call("prepareFileForHTTP", path))
    assert prepared["Files"][path]["SE"] == FILE_SE
    assert detail in prepared["Files"][path]["ReplicaErrors"][FAULTY_DAV]
    assert requests.get(prepared["HttpURL"], timeout=30).content == data
    storage.assert_nothing_cached(FAULTY_DAV, path)

    storage.bodies.heal()
    assert service.fetch(FAULTY_DAV, path) == data
