"""A service killed (SIGKILL) while it stages, receives an upload or pushes one, then started again.

After the restart nothing partial looks whole: the cache holds no temporary
file and every entry passes ``seproxy cache verify``; an interrupted staging
or upload is unknown, and said to be; an upload that had fully arrived is
still owed and can be pushed; the storage element holds nothing or the
complete file under its name. (A WebDAV push therefore goes to a temporary
name first and is moved into place, which must never replace a directory.)
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fixtures.proxy import (
    FILE_SE,
    MiB,
    ObservedStorage,
    ProxyService,
    file_place,
    ok,
    refused,
    unique,
    wait_until,
    webdav_place,
)
from fixtures.storage_servers import LoopbackCA, run_webdav

from seproxy.transfer import codec

pytestmark = pytest.mark.cases("faults", "a service killed mid-transfer")

SLOW_DAV = "SLOW-DAV"
# Paced transfers run at this rate: a few MiB take long enough to be killed half-way.
SLOW_RATE = 4 * MiB


class _PacedInput:
    """A WSGI input stream read at the rate of its ``SlowPuts``."""

    def __init__(self, stream: Any, owner: SlowPuts) -> None:
        self._stream, self._owner = stream, owner

    def read(self, *size: int) -> bytes:
        block = self._stream.read(*size)
        self._owner.count(len(block))
        return block


class SlowPuts:
    """WSGI middleware: reads PUT bodies at ``rate`` bytes/s (None: as fast as they come).

    Counts the body bytes received and the PUTs the server has finished with.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rate: float | None = None
        self.received = 0
        self.finished = 0
        self._lock = threading.Lock()

    def count(self, size: int) -> None:
        with self._lock:
            self.received += size
        if self.rate:
            time.sleep(size / self.rate)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] != "PUT":
            return self.app(environ, start_response)
        environ["wsgi.input"] = _PacedInput(environ["wsgi.input"], self)
        try:
            return self.app(environ, start_response)  # wsgidav has read and stored the body when this returns
        finally:
            with self._lock:
                self.finished += 1


@dataclass
class Crashable:
    """A service of the test's own, in front of a file element and of a WebDAV server the test slows."""

    service: ProxyService
    gets: ObservedStorage  # paces GET bodies (stagings) at its ``rate``
    puts: SlowPuts  # paces PUT bodies (pushes) at its ``rate``


@pytest.fixture
def crashable(start_proxy: Callable[..., ProxyService], tmp_path: Path, storage_ca: LoopbackCA) -> Iterator[Crashable]:
    root = tmp_path / "slow-dav"
    root.mkdir()
    middlewares: list[Any] = []

    def slowed(app: Any) -> SlowPuts:
        gets = ObservedStorage(app)
        middlewares.extend([gets, SlowPuts(gets)])
        return middlewares[-1]

    with run_webdav(root, storage_ca, wrap=slowed) as url:
        places = [file_place(FILE_SE, tmp_path / "file-se"), webdav_place(SLOW_DAV, url, root, storage_ca)]
        service = start_proxy(places)
        yield Crashable(service, *middlewares)
        service.process.stop()  # before its storage goes


def seproxy_cache(service: ProxyService, *args: str) -> Any:
    """``seproxy cache ARGS --json`` on the service's config, which must succeed; what it printed."""
    command = [sys.executable, "-m", "seproxy", "cache", *args, "--json", "--config", str(service.process.config_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def recovered_entries(service: ProxyService) -> list[dict[str, Any]]:
    """After a restart: no temporary file is left and every entry verifies; the entries, as listed."""
    assert service.cache_files()[0] == [], "recovery removes what the killed process was writing"
    assert seproxy_cache(service, "verify")["damaged"] == []
    return seproxy_cache(service, "ls")


def partly_written(service: ProxyService, size: int) -> bool:
    """Some bytes, but fewer than ``size``, are in the cache's temporary files."""
    written = sum(path.stat().st_size for path in service.cache_files()[0])
    assert written < size, "the transfer ended before it could be interrupted"
    return written > 0


def kill_and_restart(service: ProxyService) -> list[Path]:
    """SIGKILL the service, then start it again; the temporary files the kill left in the cache."""
    service.process.stop(signal.SIGKILL)
    partial, _ = service.cache_files()
    service.restart()
    return partial


def streamed_upload(service: ProxyService, name: str, size: int) -> http.client.HTTPSConnection:
    """A ``PUT <route>/stream/putFile/<name>`` announcing ``size`` bytes, none of them sent yet."""
    context = ssl.create_default_context(capath=str(service.pki.ca_dir))
    context.load_cert_chain(str(service.writer.cert))
    connection = http.client.HTTPSConnection("localhost", service.process.port, context=context, timeout=30)
    connection.putrequest("PUT", f"{urlsplit(service.url).path}/stream/putFile/{name}")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    return connection


def test_killed_while_staging(crashable: Crashable) -> None:
    service = crashable.service
    name, data = unique("staged"), os.urandom(8 * MiB)  # written to the cache in two blocks, a second apart
    (service.place(SLOW_DAV).root / name).write_bytes(data)
    crashable.gets.rate = SLOW_RATE

    with ThreadPoolExecutor(1) as pool:
        staging = pool.submit(service.client().prepareFile, SLOW_DAV, f"/{name}")
        wait_until(lambda: partly_written(service, len(data)), "part of the staging in the cache")
        left = kill_and_restart(service)
        assert staging.result()["OK"] is False
    crashable.gets.rate = None

    assert len(left) == 1 and recovered_entries(service) == []
    answer = service.download(f"getFile/{name}")
    assert answer.status_code == 400 and codec.decode(answer.content)["Errno"] == errno.ENOENT
    assert service.fetch(SLOW_DAV, f"/{name}") == data
    assert [(entry.source_path, entry.size) for entry in service.cache_entries()] == [(f"/{name}", len(data))]


def test_killed_while_receiving_an_upload(crashable: Crashable) -> None:
    service = crashable.service
    waiting, partial, data = unique("waiting"), unique("partial"), os.urandom(8 * MiB)
    service.send(waiting, data, "stream")
    upload = streamed_upload(service, partial, len(data))
    upload.send(data[: 5 * MiB])  # more than the service buffers: part of it goes to the cache

    wait_until(lambda: partly_written(service, len(data)), "part of the upload in the cache")
    left = kill_and_restart(service)
    upload.close()

    assert len(left) == 1
    [entry] = recovered_entries(service)
    assert (entry["name"], entry["upload_pending"], entry["size"]) == (f"putFile/{waiting}", True, len(data))
    assert "waiting to be uploaded" in refused(service.call("uploadFile", FILE_SE, f"/{partial}"), errno.ENOENT)
    ok(service.call("uploadFile", FILE_SE, f"/{waiting}"))
    stored = service.place(FILE_SE).root
    assert [path.name for path in stored.iterdir()] == [waiting] and (stored / waiting).read_bytes() == data
    assert service.cache_entries() == [], "a pushed upload is released"


def test_killed_while_pushing(crashable: Crashable) -> None:
    service, puts = crashable.service, crashable.puts
    name, data = unique("pushed"), os.urandom(16 * MiB)  # far more than the socket buffers hold
    target = service.place(SLOW_DAV).root / name
    service.send(name, data, "stream")
    puts.rate = SLOW_RATE

    with ThreadPoolExecutor(1) as pool:
        push = pool.submit(service.client().uploadFile, SLOW_DAV, f"/{name}")
        wait_until(lambda: puts.received > MiB, "part of the push on the storage")
        assert kill_and_restart(service) == [], "a push only reads the cache"
        assert push.result()["OK"] is False
    puts.rate = None
    wait_until(lambda: puts.finished, "the storage to be done with the broken PUT")

    assert puts.received < len(data), "the kill must come mid-push for this test to mean anything"
    assert not target.exists(), "a broken push leaves nothing under the file's name"
    [entry] = recovered_entries(service)
    assert (entry["name"], entry["upload_pending"]) == (f"putFile/{name}", True), "the push is still owed"
    assert ok(service.call("uploadFile", SLOW_DAV, f"/{name}"))["Size"] == len(data)
    assert target.read_bytes() == data
    assert service.cache_entries() == [], "a pushed upload is released"


def test_a_push_never_replaces_a_directory(crashable: Crashable) -> None:
    service = crashable.service
    name = unique("directory")
    service.send(name, b"a file of the same name", "stream")
    for se in (FILE_SE, SLOW_DAV):
        kept = service.place(se).root / name / "kept.dat"
        kept.parent.mkdir()
        kept.write_bytes(b"must stay")

        assert "directory" in refused(service.call("uploadFile", se, f"/{name}"), errno.EISDIR)
        assert kept.read_bytes() == b"must stay"
    assert [entry.upload_pending for entry in service.cache_entries()] == [True], "still owed, to be pushed elsewhere"
