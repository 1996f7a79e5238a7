"""The door's refusals that issue 14 left untested: who may write, how deep a PROPFIND goes, a full cache.

A real service with a file element, reached with curl-like ``requests``
over TLS with the test PKI's proxies:

* tester in group lab_user (NormalUser, no FileWrite) reads, and is refused
  PUT, DELETE and MKCOL with 403 naming the missing property;
* tester's limited proxy (RFC 3820 policy "limited") in group lab_admin,
  whose full proxy may write, reads and is refused every write with 403
  naming the limited proxy: seproxy's rule for limited proxies
  (docs/security.md), the door's as the RPC methods';
* ``Depth: infinity`` (or no Depth) on a directory is refused with 403 and
  the ``propfind-finite-depth`` precondition of RFC 4918 §9.1, as Apache's
  mod_dav does by default, instead of a listing silently cut to one level;
  on a file it describes the file;
* a cache on a small full filesystem answers a door PUT and a GET of a
  cold file with 507 naming the cache, and keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.proxy import Credential, ProxyService, file_place, proxy_config
from fixtures.service import start_service
from fixtures.small_fs import SMALL_FS_SIZE

from seproxy.security.pki import Credential as PKICredential
from seproxy.security.pki import issue_proxy

SE = "DOOR-SE"
MiB = 1024 * 1024


def door_url(service: ProxyService, lfn: str) -> str:
    return service.url.split("/DataManagement/")[0] + "/lfn" + lfn


def send(service: ProxyService, method: str, lfn: str, who: Credential, data: bytes | None = None, **headers: str) -> requests.Response:
    answer = requests.request(
        method, door_url(service, lfn), data=data, headers=headers, cert=who.for_requests, verify=str(service.pki.ca_dir), timeout=60
    )
    assert b"Traceback" not in answer.content and b'File "' not in answer.content, answer.text[:500]
    return answer


def refused(answer: requests.Response, status: int, *words: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:500])
    assert all(word in answer.text for word in words), answer.text


@pytest.fixture(scope="module")
def service(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("door-rights")
    place = file_place(SE, directory / "se")
    running = ProxyService(start_service(directory, proxy_config(pki, directory / "state", [place])), pki, {SE: place})
    (place.root / "vo").mkdir()
    (place.root / "vo" / "present.dat").write_bytes(b"present")
    yield running
    running.close_clients()
    running.process.stop()


@pytest.fixture(scope="module")
def limited_writer(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Credential:
    """tester's limited proxy in the group lab_admin (FileWrite): a full one of it may write."""
    user = PKICredential.read(pki.user_cert, pki.user_key)
    path = tmp_path_factory.mktemp("limited") / "limited-writer.pem"
    issue_proxy(user, limited=True, dirac_group="lab_admin").write(path)
    return Credential(str(path))


def assert_no_write(service: ProxyService, who: Credential, *words: str) -> None:
    """Every door write of ``who`` is refused with 403 naming ``words``, and nothing changes on the element."""
    root = service.place(SE).root
    refused(send(service, "PUT", "/vo/new.dat", who, b"new"), 403, *words)
    refused(send(service, "PUT", "/vo/present.dat", who, b"replaced"), 403, *words)
    refused(send(service, "DELETE", "/vo/present.dat", who), 403, *words)
    refused(send(service, "MKCOL", "/vo/made", who), 403, *words)
    assert not (root / "vo" / "new.dat").exists() and not (root / "vo" / "made").exists()
    assert (root / "vo" / "present.dat").read_bytes() == b"present"
    # and reads as before
    got = send(service, "GET", "/vo/present.dat", who)
    assert got.status_code == 200 and got.content == b"present"
    assert send(service, "PROPFIND", "/vo", who, Depth="1").status_code == 207


def test_a_certificate_user_without_the_write_property_reads_only(service: ProxyService) -> None:
    assert_no_write(service, service.reader, "FileWrite", "lab_user")
    # the same user, in the group that has FileWrite, writes
    assert send(service, "MKCOL", "/vo/made", service.writer).status_code == 201
    assert send(service, "DELETE", "/vo/made", service.writer).status_code == 204


def test_a_limited_proxy_reads_and_never_writes_through_the_door(service: ProxyService, limited_writer: Credential) -> None:
    assert_no_write(service, limited_writer, "limited proxy")


@pytest.mark.parametrize("depth", ["infinity", "Infinity", None])
def test_depth_infinity_on_a_directory_is_refused_as_rfc_4918_allows(service: ProxyService, depth: str | None) -> None:
    headers = {} if depth is None else {"Depth": depth}
    answer = send(service, "PROPFIND", "/vo", service.reader, **headers)
    refused(answer, 403, "propfind-finite-depth", "/vo is a directory", "Depth 0 or 1")
    assert answer.headers["Content-Type"].startswith("application/xml")
    # on a file, infinity is the file itself
    described = send(service, "PROPFIND", "/vo/present.dat", service.reader, **headers)
    assert described.status_code == 207 and "present.dat" in described.text
    assert send(service, "PROPFIND", "/vo", service.reader, Depth="1").status_code == 207


def test_a_full_cache_answers_507_to_a_put_and_a_cold_get(
    small_fs: Path, start_proxy: Callable[..., ProxyService], tmp_path: Path
) -> None:
    # small_fs first: its unmount comes after start_proxy has stopped the service
    service = start_proxy([file_place(SE, tmp_path / "se")], root=str(small_fs / "cache"), min_free=0)
    root = service.place(SE).root
    (root / "vo").mkdir()
    big = os.urandom(SMALL_FS_SIZE + 2 * MiB)
    (root / "vo" / "cold.dat").write_bytes(big)
    (root / "vo" / "small.dat").write_bytes(b"fits")
    got = send(service, "GET", "/vo/cold.dat", service.writer)
    refused(got, 507, "cache")
    put = send(service, "PUT", "/vo/big.dat", service.writer, big)
    refused(put, 507, "cache")
    assert not (root / "vo" / "big.dat").exists()
    assert service.cache_files() == ([], [])
    # the service goes on: a small file is served and written
    assert send(service, "GET", "/vo/small.dat", service.writer).content == b"fits"
    assert send(service, "PUT", "/vo/written.dat", service.writer, b"written").status_code == 201
    assert (root / "vo" / "written.dat").read_bytes() == b"written"
