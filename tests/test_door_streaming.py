"""The door streams a file while it is staged: curl against a real service and a real WebDAV storage.

The storage is held back by the test (a gate in its WSGI stack, after the first
bytes of a GET body), so "the first bytes arrived before the staging ended" is
shown from the state of things at that moment, not from timings: curl has
bytes, and the cache still lists the staging as growing. The service runs two
worker processes, so readers served by one follow the staging of the other.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.http_side import tool
from fixtures.proxy import MiB, ProxyService, proxy_config, wait_until, webdav_place
from fixtures.service import free_port, start_service
from fixtures.storage_servers import LoopbackCA, run_webdav

from seproxy.cache import Cache

SE = "GATED-DAV"
SIZE = 8 * MiB + 12_345
WORKERS = 2
# The access-log line of a door GET, with the worker that answered it.
DOOR_GET = re.compile(r" w(\d+) seproxy\.access \[[^]]+\] .* door=GET lfn='([^']*)' status=200")
# Bytes the storage sends before its gate: curl must have some of them while the staging waits there.
BEFORE_GATE = 2 * MiB


@dataclass
class Rule:
    gate: threading.Event
    after: int
    die: bool = False  # at the gate's opening, the storage breaks the connection
    hide_length: bool = False
    no_digest: bool = False  # a storage that announces no checksum (unlike dCache)
    refuse: bool = False  # its GET fails before any byte (the storage's pools are down)


class GatedStorage:
    """WSGI middleware: counts GETs per file name; a file with a rule sends ``after`` bytes of its
    body, waits for the test to open its gate, then sends the rest or breaks the connection."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rules: dict[str, Rule] = {}
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hold(self, name: str, *, after: int = BEFORE_GATE, **options: bool) -> threading.Event:
        self.rules[name] = Rule(threading.Event(), after, **options)
        return self.rules[name].gate

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        name = environ["PATH_INFO"].rsplit("/", 1)[-1]
        rule = self.rules.get(name)
        if environ["REQUEST_METHOD"] != "GET":
            return self.app(environ, start_response)
        with self._lock:
            self.gets[name] += 1
        if rule is None:
            return self.app(environ, start_response)
        if rule.refuse:
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]

        def answer(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            hidden = {"content-length"} if rule.hide_length else set()
            hidden |= {"digest"} if rule.no_digest else set()
            headers = [(key, value) for key, value in headers if key.lower() not in hidden]
            return start_response(status, headers, exc_info)

        return self._gated(self.app(environ, answer), rule)

    @staticmethod
    def _gated(body: Iterable[bytes], rule: Rule) -> Iterator[bytes]:
        sent = 0
        try:
            for block in body:
                if sent < rule.after <= sent + len(block):
                    cut = rule.after - sent
                    yield block[:cut]
                    assert rule.gate.wait(120), "the test never opened the gate"
                    if rule.die:
                        raise ConnectionAbortedError("the test storage dies in the middle of a GET")
                    block = block[cut:]
                sent += len(block)
                yield block
        finally:
            getattr(body, "close", lambda: None)()  # the WSGI rule: the server closes what the app returned


@dataclass
class Streaming:
    service: ProxyService
    storage: GatedStorage
    root: Path  # the element's directory
    metrics_port: int


@pytest.fixture(scope="module")
def streaming(pki: Any, tmp_path_factory: pytest.TempPathFactory, storage_ca: LoopbackCA) -> Iterator[Streaming]:
    dav_root = tmp_path_factory.mktemp("gated-dav")
    storages: list[GatedStorage] = []

    def gated(app: Any) -> GatedStorage:
        storages.append(GatedStorage(app))
        return storages[-1]

    with run_webdav(dav_root, storage_ca, wrap=gated) as url:
        place = webdav_place(SE, url, dav_root, storage_ca)
        directory = tmp_path_factory.mktemp("streaming-service")
        metrics_port = free_port()
        config = proxy_config(pki, directory / "state", [place])
        config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
        config["service"]["workers"] = WORKERS
        service = ProxyService(start_service(directory, config), pki, {SE: place})
        try:
            wait_until(lambda: f"{WORKERS} workers serving" in service.process.log(), "every worker listening", 60)
            yield Streaming(service, storages[0], place.root, metrics_port)
        finally:
            print(f"service log:\n{service.process.log()}")
            service.close_clients()
            service.process.stop()


def lfn_url(service: ProxyService, lfn: str) -> str:
    return service.process.url.split("/DataManagement/")[0] + "/lfn" + lfn


def curl(pki: Any, url: str, output: Path, *options: str) -> subprocess.Popen[str]:
    """curl with the test proxy, writing the body to ``output``; prints the status and headers' size."""
    command = [tool("curl"), "-sS", "--capath", str(pki.ca_dir), "--cert", str(pki.group_proxy), "-o", str(output),
               "-D", str(output) + ".head", "-w", "%{http_code}", *options, url]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def put(streaming: Streaming, name: str, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    (streaming.root / "vo").mkdir(exist_ok=True)
    (streaming.root / "vo" / name).write_bytes(data)
    return data


def staging_files(service: ProxyService) -> list[Path]:
    return service.cache_files()[0]


def growing_now(service: ProxyService) -> list[str]:
    """The stagings the cache lists as growing (read-only, as another process sees them)."""
    with Cache(service.cache_root, quota=1 << 40, read_only=True) as cache:
        return [path.name for path in staging_files(service) if cache.growing_entry(path.name) is not None]


def header_lines(output: Path) -> str:
    return (Path(str(output) + ".head")).read_text().lower()


def stagings(streaming: Streaming) -> float:
    text = requests.get(f"http://127.0.0.1:{streaming.metrics_port}/metrics", timeout=10).text
    prefix = f'seproxy_stagings_total{{outcome="ok",se="{SE}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def stream_through(streaming: Streaming) -> float:
    text = requests.get(f"http://127.0.0.1:{streaming.metrics_port}/metrics", timeout=10).text
    prefix = f'seproxy_bytes_stream_through_total{{route="door",se="{SE}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def test_twenty_curls_of_a_cold_file_get_bytes_before_its_one_staging_ends(streaming: Streaming, pki: Any, tmp_path: Path) -> None:
    data = put(streaming, "cold.dat")
    gate = streaming.storage.hold("cold.dat")
    before, streamed_before = stagings(streaming), stream_through(streaming)
    outputs = [tmp_path / f"copy{number}.dat" for number in range(20)]
    readers = [curl(pki, lfn_url(streaming.service, "/vo/cold.dat"), output) for output in outputs]
    try:
        # Every reader has bytes while the storage still holds the rest back: the staging has not ended.
        for output in outputs:
            wait_until(lambda output=output: output.exists() and output.stat().st_size > 0, f"first bytes in {output.name}")
        assert [reader.poll() for reader in readers] == [None] * 20
        assert len(growing_now(streaming.service)) == 1
        assert all(0 < output.stat().st_size <= BEFORE_GATE for output in outputs)
        head = curl(pki, lfn_url(streaming.service, "/vo/cold.dat"), tmp_path / "head", "-I")
        status, out, err = ended(head)
        assert (status, out) == (0, "200"), err
        heads = header_lines(tmp_path / "head")
        assert f"content-length: {SIZE}" in heads and "etag" not in heads  # the size, and no validator yet
    finally:
        gate.set()
    for reader in readers:
        status, out, err = ended(reader)
        assert (status, out) == (0, "200"), err
    assert all(output.read_bytes() == data for output in outputs)
    assert f"content-length: {SIZE}" in header_lines(outputs[0]) and "etag" not in header_lines(outputs[0])
    assert streaming.storage.gets["cold.dat"] == 1
    # Both workers answered: one of them streamed a staging that the other process runs.
    assert sorted({worker for worker, lfn in DOOR_GET.findall(streaming.service.process.log()) if lfn == "/vo/cold.dat"}) == ["0", "1"]
    assert wait_until(lambda: stagings(streaming) - before == 1, "the staging counted")
    assert stream_through(streaming) - streamed_before >= 20 * BEFORE_GATE
    assert staging_files(streaming.service) == []
    # Cached now: a read gets the whole file with its validators.
    again = curl(pki, lfn_url(streaming.service, "/vo/cold.dat"), tmp_path / "again.dat")
    assert ended(again)[:2] == (0, "200") and (tmp_path / "again.dat").read_bytes() == data
    assert "etag" in header_lines(tmp_path / "again.dat") and streaming.storage.gets["cold.dat"] == 1


@pytest.mark.parametrize("hide_length", [False, True], ids=["content-length", "chunked"])
def test_a_staging_that_dies_mid_way_cuts_the_connection_and_leaves_nothing(
    streaming: Streaming, pki: Any, tmp_path: Path, hide_length: bool
) -> None:
    name = f"dying-{hide_length}.dat"
    put(streaming, name)
    gate = streaming.storage.hold(name, die=True, hide_length=hide_length)
    output = tmp_path / "partial.dat"
    reader = curl(pki, lfn_url(streaming.service, f"/vo/{name}"), output)
    try:
        wait_until(lambda: output.exists() and output.stat().st_size > 0, "the first bytes")
        assert reader.poll() is None
    finally:
        gate.set()
    status, out, err = ended(reader)
    assert status == 18, f"curl exit {status} (18: partial transfer): {err}"  # never taken for the whole file
    assert out == "200" and output.stat().st_size < SIZE
    heads = header_lines(output)
    assert (f"content-length: {SIZE}" in heads) != hide_length and ("transfer-encoding: chunked" in heads) == hide_length
    wait_until(lambda: staging_files(streaming.service) == [], "the partial file removed")
    with Cache(streaming.service.cache_root, quota=1 << 40, read_only=True) as cache:
        assert cache.lookup(SE, f"/vo/{name}") is None and cache.growing(SE, f"/vo/{name}") is None


def test_a_range_beyond_what_arrived_waits_for_those_bytes(streaming: Streaming, pki: Any, tmp_path: Path) -> None:
    data = put(streaming, "ranged.dat")
    gate = streaming.storage.hold("ranged.dat")
    first = curl(pki, lfn_url(streaming.service, "/vo/ranged.dat"), tmp_path / "first.dat")
    start, end = 6 * MiB + 1, 7 * MiB + 99
    try:
        wait_until(lambda: (tmp_path / "first.dat").exists() and (tmp_path / "first.dat").stat().st_size > 0, "first bytes")
        ranged = curl(pki, lfn_url(streaming.service, "/vo/ranged.dat"), tmp_path / "range.dat", "-r", f"{start}-{end}")
        inside = curl(pki, lfn_url(streaming.service, "/vo/ranged.dat"), tmp_path / "inside.dat", "-r", "10-19")
        assert ended(inside)[:2] == (0, "206") and (tmp_path / "inside.dat").read_bytes() == data[10:20]
        assert ranged.poll() is None  # its bytes are behind the storage's gate
        assert growing_now(streaming.service)
    finally:
        gate.set()
    assert ended(ranged)[:2] == (0, "206")
    assert (tmp_path / "range.dat").read_bytes() == data[start : end + 1]
    assert f"content-range: bytes {start}-{end}/{SIZE}" in header_lines(tmp_path / "range.dat")
    assert ended(first)[:2] == (0, "200") and (tmp_path / "first.dat").read_bytes() == data
    assert streaming.storage.gets["ranged.dat"] == 1


def test_the_adler32_a_source_announces_goes_out_before_the_body(streaming: Streaming, pki: Any, tmp_path: Path) -> None:
    """A WebDAV storage that answers Want-Digest (as dCache does): its ADLER32 is known before the first byte."""
    data = put(streaming, "summed.dat", 3 * MiB)
    gate = streaming.storage.hold("summed.dat")
    output = tmp_path / "summed.dat"
    reader = curl(pki, lfn_url(streaming.service, "/vo/summed.dat"), output, "-H", "Want-Digest: ADLER32")
    try:
        wait_until(lambda: output.exists() and output.stat().st_size > 0, "the first bytes")
        assert growing_now(streaming.service)
    finally:
        gate.set()
    assert ended(reader)[:2] == (0, "200") and output.read_bytes() == data
    assert f"digest: adler32={zlib.adler32(data):08x}" in header_lines(output)


def test_no_checksum_header_when_the_source_announced_none(streaming: Streaming, pki: Any, tmp_path: Path) -> None:
    """A storage that sends no Digest: the streamed answer has none (the client may ask a HEAD afterwards)."""
    data = put(streaming, "unsummed.dat", 3 * MiB)
    gate = streaming.storage.hold("unsummed.dat", no_digest=True)
    output = tmp_path / "unsummed.dat"
    reader = curl(pki, lfn_url(streaming.service, "/vo/unsummed.dat"), output, "-H", "Want-Digest: ADLER32")
    try:
        wait_until(lambda: output.exists() and output.stat().st_size > 0, "the first bytes")
    finally:
        gate.set()
    assert ended(reader)[:2] == (0, "200") and output.read_bytes() == data
    assert "digest:" not in header_lines(output)
    head = curl(pki, lfn_url(streaming.service, "/vo/unsummed.dat"), tmp_path / "head", "-I", "-H", "Want-Digest: ADLER32")
    assert ended(head)[:2] == (0, "200")
    assert f"digest: adler32={zlib.adler32(data):08x}" in header_lines(tmp_path / "head")


def test_a_staging_goes_on_when_its_reader_leaves(streaming: Streaming, pki: Any, tmp_path: Path) -> None:
    data = put(streaming, "left.dat")
    gate = streaming.storage.hold("left.dat")
    output = tmp_path / "left.dat"
    reader = curl(pki, lfn_url(streaming.service, "/vo/left.dat"), output)
    try:
        wait_until(lambda: output.exists() and output.stat().st_size > 0, "the first bytes")
        reader.kill()
        reader.wait(30)
    finally:
        gate.set()

    def cached() -> bool:
        with Cache(streaming.service.cache_root, quota=1 << 40, read_only=True) as cache:
            return cache.lookup(SE, "/vo/left.dat") is not None

    wait_until(cached, "the staging to end in the cache")
    again = curl(pki, lfn_url(streaming.service, "/vo/left.dat"), tmp_path / "again.dat")
    assert ended(again)[:2] == (0, "200") and (tmp_path / "again.dat").read_bytes() == data
    assert streaming.storage.gets["left.dat"] == 1


def test_a_staging_that_fails_before_its_first_byte_gets_an_error_answer(streaming: Streaming, pki: Any, tmp_path: Path) -> None:
    put(streaming, "refused.dat")
    streaming.storage.hold("refused.dat", refuse=True).set()
    status, out, err = ended(curl(pki, lfn_url(streaming.service, "/vo/refused.dat"), tmp_path / "refused.txt"))
    assert status == 0 and out.startswith("5"), (out, err)
    message = (tmp_path / "refused.txt").read_text()
    assert "refused.dat" in message and "503" in message and "Traceback" not in message
    assert staging_files(streaming.service) == []
