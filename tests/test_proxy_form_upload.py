"""DIRAC's own sendFile: the whole file, base64-encoded, inside the form of ``streamFromClient``. From a
caller who may upload it is decoded into the cache as it arrives (the server's memory stays flat
whatever the file's size); over ``service.max_form_upload`` the body is read, dropped and refused with
a reason the client sees."""

from __future__ import annotations

import base64
import errno
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fixtures.proxy import FILE_SE, MiB, ProxyService, file_place, ok, proxy_config
from fixtures.service import start_service

from seproxy.transfer import codec


@pytest.fixture
def form_proxy(pki: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProxyService]:
    """A service of this test's own (its peak memory is this test's doing), ``service`` settings from the mark."""
    place = file_place(FILE_SE, tmp_path / "se")
    config = proxy_config(pki, tmp_path / "state", [place])
    config["service"].update(getattr(request, "param", {}))
    service = ProxyService(start_service(tmp_path, config), pki, {FILE_SE: place})
    yield service
    service.close_clients()
    service.process.stop()


def send_file_form(service: ProxyService, file_id: str, data: bytes, who: Any = None) -> requests.Response:
    """``sendFile`` as DIRAC 9.1's TornadoClient sends it: ``args`` encoded by its JSON encoder, in a
    form that ``requests`` urlencodes (``data=`` a dict)."""
    args = json.dumps([file_id, "", len(data), {"__dCls": "b64", "obj": base64.b64encode(data).decode()}])
    form = {"method": "streamFromClient", "args": args, "clientVO": "lab", "clientSetup": "None"}
    cert = (who or service.writer).for_requests
    return requests.post(service.url, data=form, cert=cert, verify=str(service.pki.ca_dir), timeout=300)


def peak_rss(service: ProxyService) -> int:
    assert service.process.process is not None
    for line in Path(f"/proc/{service.process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_a_100_mib_send_file_goes_to_the_cache_in_flat_memory(form_proxy: ProxyService) -> None:
    data = os.urandom(100 * MiB)
    ok(form_proxy.call("ping"))
    before = peak_rss(form_proxy)
    answer = send_file_form(form_proxy, "putFile/big.dat", data)
    assert answer.status_code == 200, answer.text[:500]
    sent = ok(codec.decode(answer.content))
    grown = peak_rss(form_proxy) - before
    assert grown < 64 * MiB, f"the service's peak memory grew by {grown >> 20} MiB for a 100 MiB sendFile"
    assert sent["Size"] == len(data) and sent["Checksum"] == f"{zlib.adler32(data):08x}", sent

    ok(form_proxy.call("uploadFile", FILE_SE, "/big.dat"))
    assert (form_proxy.place(FILE_SE).root / "big.dat").read_bytes() == data


@pytest.mark.parametrize("form_proxy", [{"max_form_upload": MiB}], indirect=True)
def test_a_send_file_over_the_cap_is_refused_with_its_reason(form_proxy: ProxyService) -> None:
    answer = send_file_form(form_proxy, "putFile/too-big.dat", os.urandom(3 * MiB))  # read and dropped
    assert answer.status_code == 413, answer.text[:500]
    message = codec.decode(answer.content)["Message"]
    assert f"{3 * MiB} bytes" in message and "service.max_form_upload" in message
    assert form_proxy.cache_files() == ([], []) and form_proxy.cache_entries() == []
    assert send_file_form(form_proxy, "putFile/fits.dat", os.urandom(MiB)).status_code == 200


def test_a_send_file_that_breaks_off_leaves_nothing(form_proxy: ProxyService) -> None:
    args = json.dumps(["putFile/cut.dat", "", 4 * MiB, {"__dCls": "b64", "obj": base64.b64encode(b"z" * MiB).decode()}])
    answer = requests.post(
        form_proxy.url, data={"method": "streamFromClient", "args": args}, cert=form_proxy.writer.for_requests,
        verify=str(form_proxy.pki.ca_dir), timeout=60,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text[:500]  # an RPC answer: the S_ERROR inside, as DIRAC expects
    result = codec.decode(answer.content)
    assert result["Errno"] == errno.EINVAL and f"fileSize is {4 * MiB} but {MiB} bytes" in result["Message"], result
    assert form_proxy.cache_files() == ([], []) and form_proxy.cache_entries() == []


def test_a_send_file_from_a_caller_who_may_not_upload_is_refused_with_its_reason(form_proxy: ProxyService) -> None:
    """Larger than any refused body used to be read (64 MiB): the refusal still reaches the client, whose
    body is read and dropped, instead of a connection closed under it (DIRAC's client showed SSLEOFError)."""
    answer = send_file_form(form_proxy, "putFile/not-yours.dat", os.urandom(70 * MiB), who=form_proxy.reader)
    assert answer.status_code == 413, answer.text[:500]
    assert "service.max_form_size" in codec.decode(answer.content)["Message"]
    assert form_proxy.cache_files() == ([], []) and form_proxy.cache_entries() == []
