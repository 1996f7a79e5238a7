"""Uploads through the running service against the quota and a full disk: refused up front with a clear
507, nobody else's file evicted for them, no lease left behind, and the service working once space returns.
(The cache's own rules are in test_cache_upload_quota.py and test_cache_diskfull.py.)"""

from __future__ import annotations

import errno
import http.client
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from fixtures.proxy import FILE_SE, MiB, ProxyService, file_place, ok, refused
from fixtures.small_fs import fill_up

from seproxy.cache import Cache
from seproxy.transfer import codec


def announce_only(service: ProxyService, name: str, size: int) -> tuple[int, dict]:
    """A streamed PUT that announces ``size`` bytes and sends none: the answer to its head alone."""
    context = ssl.create_default_context(capath=str(service.pki.ca_dir))
    context.load_cert_chain(str(service.writer.cert))
    connection = http.client.HTTPSConnection("localhost", service.process.port, context=context, timeout=30)
    try:
        connection.putrequest("PUT", f"{urlsplit(service.url).path}/stream/putFile/{name}")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, codec.decode(response.read())
    finally:
        connection.close()


def writes_in_progress(service: ProxyService) -> int:
    with Cache(service.cache_root, quota=1 << 40, min_free=0) as cache:
        return cache.usage().staging


def test_uploads_beyond_the_quota_evict_nothing(start_proxy: Callable[..., ProxyService], tmp_path: Path) -> None:
    service = start_proxy([file_place(FILE_SE, tmp_path / "se")], quota=8 * MiB, min_free=0)
    theirs = os.urandom(3 * MiB)
    (service.place(FILE_SE).root / "theirs.dat").write_bytes(theirs)
    assert service.fetch(FILE_SE, "/theirs.dat", who=service.other) == theirs  # boss's staged file

    status, answer = announce_only(service, "petabyte.dat", 1 << 50)
    assert status == 507, answer
    assert f"{1 << 50} bytes needed" in refused(answer, errno.ENOSPC)
    status, answer = service.try_send("putFile/over-quota.dat", os.urandom(10 * MiB), "stream")
    assert status == 507, answer
    assert "cache.quota" in refused(answer, errno.EDQUOT)
    assert "cache.quota" in refused(service.try_send("putFile/f.dat", os.urandom(10 * MiB), "form")[1], errno.EDQUOT)

    assert [e.se for e in service.cache_entries()] == [FILE_SE]  # boss's file is still there
    assert service.send("fits.dat", os.urandom(MiB), "stream")["Size"] == MiB
    assert writes_in_progress(service) == 0


def test_a_full_disk_answers_enospc_and_the_service_goes_on(
    start_proxy: Callable[..., ProxyService], small_fs: Path, tmp_path: Path
) -> None:
    service = start_proxy([file_place(FILE_SE, tmp_path / "se")], root=str(small_fs / "cache"), min_free=0)
    data = os.urandom(MiB)
    (service.place(FILE_SE).root / "file.dat").write_bytes(data)
    ballast = fill_up(small_fs)  # the disk fills up with something else: not even the index can grow

    status, answer = service.try_send("putFile/a.dat", data, "stream")
    assert status == 507, answer
    assert "No space left for the cache" in refused(answer, errno.ENOSPC)
    assert "No space left for the cache" in refused(service.try_send("putFile/b.dat", data, "form")[1], errno.ENOSPC)
    assert "No space left for the cache" in refused(service.call("prepareFile", FILE_SE, "/file.dat"), errno.ENOSPC)

    ballast.unlink()
    assert writes_in_progress(service) == 0
    assert service.fetch(FILE_SE, "/file.dat") == data
    assert service.send("a.dat", data, "stream")["Size"] == MiB
    ok(service.call("ping"))
    service.process.stop()  # now: the small filesystem is unmounted next, and must not be busy
