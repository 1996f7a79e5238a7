"""Who may do what through the service: write rights, read-only and VO-bound elements, per-user file ids.

In the shared service only the group lab_admin has FileWrite: ``writer`` is
tester acting in that group, ``reader`` is tester in group lab_user, and
``other`` is the user boss.
"""

from __future__ import annotations

import errno

import pytest
from fixtures.proxy import (
    ANONYMOUS,
    FILE_SE,
    FOREIGN_VO_SE,
    READ_ONLY_SE,
    Credential,
    ProxyService,
    file_place,
    ok,
    refused,
    unique,
    wait_until,
)

from seproxy.transfer import codec


def test_reader_may_read_but_not_write(proxy: ProxyService) -> None:
    pfn, data = f"/{unique('kept')}", b"written by someone allowed to"
    proxy.store(FILE_SE, pfn, data)
    reader = proxy.reader
    assert proxy.fetch(FILE_SE, pfn, who=reader) == data
    assert proxy.bulk(FILE_SE, "exists", pfn, who=reader)["Successful"] == {pfn: True}

    name = unique("denied")
    # Uploads are refused before the cache takes a byte: nobody could ever push them.
    for route, status in [("form", 200), ("stream", 403)]:
        answer = proxy.try_send(f"putFile/{name}", b"sent by a reader", route, who=reader)
        assert answer[0] == status and "FileWrite" in refused(answer[1], errno.EACCES), answer
    assert [e for e in proxy.cache_entries(area="upload") if name in str(e.name)] == []
    message = refused(proxy.call("uploadFile", FILE_SE, f"/{name}", who=reader), errno.EACCES)
    assert "FileWrite" in message and "lab_user" in message
    for operation, path in [("removeFile", pfn), ("createDirectory", f"/{name}-dir"), ("removeDirectory", "/")]:
        refused(proxy.operation(FILE_SE, operation, path, who=reader), errno.EACCES)
    root = proxy.place(FILE_SE).root
    assert (root / pfn.lstrip("/")).read_bytes() == data
    assert not (root / name).exists() and not (root / f"{name}-dir").exists()


def test_read_only_element_refuses_every_write(proxy: ProxyService) -> None:
    place = proxy.place(READ_ONLY_SE)
    (place.root / "published.dat").write_bytes(b"read me")
    assert proxy.fetch(READ_ONLY_SE, "/published.dat") == b"read me"

    name = unique("refused")
    proxy.send(name, b"no room here", "form")
    refused(proxy.call("uploadFile", READ_ONLY_SE, f"/{name}"), errno.EROFS)
    for operation, path in [("removeFile", "/published.dat"), ("createDirectory", "/new"), ("removeDirectory", "/x")]:
        refused(proxy.operation(READ_ONLY_SE, operation, path), errno.EROFS)
    assert sorted(path.name for path in place.root.iterdir()) == ["published.dat"]


def test_element_of_another_vo_refuses_even_reads(proxy: ProxyService) -> None:
    (proxy.place(FOREIGN_VO_SE).root / "theirs.dat").write_bytes(b"not for lab")
    message = refused(proxy.call("prepareFile", FOREIGN_VO_SE, "/theirs.dat"), errno.EACCES)
    assert "'lab'" in message and FOREIGN_VO_SE in message
    refused(proxy.operation(FOREIGN_VO_SE, "exists", "/theirs.dat"), errno.EACCES)
    refused(proxy.operation(FOREIGN_VO_SE, "removeFile", "/theirs.dat"), errno.EACCES)
    assert (proxy.place(FOREIGN_VO_SE).root / "theirs.dat").exists()


def test_unknown_element_is_named(proxy: ProxyService) -> None:
    message = refused(proxy.call("prepareFile", "NO-SUCH-SE", "/x"), errno.ENOENT)
    assert "NO-SUCH-SE" in message and FILE_SE in message


@pytest.mark.parametrize("who, status", [("anonymous", 401), ("unknown DN", 403)])
def test_unregistered_callers_are_refused(proxy: ProxyService, who: str, status: int) -> None:
    pki = proxy.pki
    caller = ANONYMOUS if who == "anonymous" else Credential(str(pki.unknown_cert), str(pki.unknown_key))
    # JSON calls as DIRAC's services answer them (200 and the S_ERROR); a raw call with a status whose
    # body DIRAC's client shows (400); the streamed PUT, no DIRAC route, with the status that means it.
    answers = [
        (proxy.post("prepareFile", FILE_SE, "/x", who=caller), 200),
        (proxy.post("callProxyMethod", FILE_SE, "exists", ["/"], {}, who=caller), 200),
        (proxy.download("getFile/x", who=caller), 400),
        (proxy.put_stream(f"putFile/{unique('unregistered')}", b"data", who=caller), status),
    ]
    for response, expected in answers:
        assert response.status_code == expected, response.text
        assert codec.decode(response.content)["Errno"] == errno.EACCES


def test_file_ids_belong_to_their_user(proxy: ProxyService) -> None:
    pfn, data = f"/{unique('private')}", b"tester's copy"
    proxy.store(FILE_SE, pfn, data)
    file_id = ok(proxy.call("prepareFile", FILE_SE, pfn))["FileId"]

    foreign = proxy.download(file_id, who=proxy.other)
    assert foreign.status_code == 400 and codec.decode(foreign.content)["Errno"] == errno.ENOENT
    # boss stages the same file and gets the same bytes under a name of his own.
    assert proxy.fetch(FILE_SE, pfn, who=proxy.other) == data

    name = unique("pending")
    proxy.send(name, b"tester's upload", "form")
    refused(proxy.call("uploadFile", FILE_SE, f"/{name}", who=proxy.other), errno.ENOENT)
    assert not (proxy.place(FILE_SE).root / name).exists()
    assert ok(proxy.call("uploadFile", FILE_SE, f"/{name}"))["Size"] == len(b"tester's upload")


def test_streamed_uploads_are_logged_with_who_sent_what(proxy: ProxyService) -> None:
    name = unique("logged")
    response = proxy.put_stream(f"putFile/{name}", b"twelve bytes")
    assert response.status_code == 200
    refusal = proxy.put_stream(f"putFile/{name}", b"refused", who=proxy.reader)
    assert refusal.status_code == 403

    def logged() -> list[str]:  # a line is written just after its answer has gone out
        return [line for line in proxy.process.log().splitlines() if f"upload='putFile/{name}'" in line]

    lines = wait_until(lambda: len(logged()) == 2 and logged(), "a line for each upload")
    assert f"[{response.headers['X-Request-ID']}]" in lines[0] and "user=tester" in lines[0]
    assert "status=200 bytes=12 " in lines[0] and "status=403" in lines[1]


def test_the_streamed_upload_follows_the_stream_from_client_rule(start_proxy, tmp_path) -> None:
    service = start_proxy([file_place(FILE_SE, tmp_path / "se")])
    assert service.put_stream("putFile/before", b"allowed").status_code == 200
    service.process.stop()
    service.process.config["authorization"] = {"streamFromClient": ["NoSuchProperty"]}
    service.close_clients()
    service.process.start()
    for route in ("form", "stream"):
        status, result = service.try_send("putFile/after", b"refused", route)
        assert "NoSuchProperty" in refused(result, errno.EACCES), (route, status)
