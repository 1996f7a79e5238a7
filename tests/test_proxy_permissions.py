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
    ok,
    refused,
    unique,
)

from seproxy.transfer import codec


def test_reader_may_read_but_not_write(proxy: ProxyService) -> None:
    pfn, data = f"/{unique('kept')}", b"written by someone allowed to"
    proxy.store(FILE_SE, pfn, data)
    reader = proxy.reader
    assert proxy.fetch(FILE_SE, pfn, who=reader) == data
    assert proxy.bulk(FILE_SE, "exists", pfn, who=reader)["Successful"] == {pfn: True}

    name = unique("denied")
    proxy.send(name, b"sent by a reader", "form", who=reader)  # the cache takes it; the push is what needs rights
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
    answers = [
        proxy.post("prepareFile", FILE_SE, "/x", who=caller),
        proxy.post("callProxyMethod", FILE_SE, "exists", ["/"], {}, who=caller),
        proxy.download("getFile/x", who=caller),
        proxy.put_stream(f"putFile/{unique('unregistered')}", b"data", who=caller),
    ]
    for response in answers:
        assert response.status_code == status, response.text
        assert codec.decode(response.content)["Errno"] == errno.EACCES


def test_file_ids_belong_to_their_user(proxy: ProxyService) -> None:
    pfn, data = f"/{unique('private')}", b"tester's copy"
    proxy.store(FILE_SE, pfn, data)
    file_id = ok(proxy.call("prepareFile", FILE_SE, pfn))["FileId"]

    foreign = proxy.download(file_id, who=proxy.other)
    assert foreign.status_code == 404 and codec.decode(foreign.content)["Errno"] == errno.ENOENT
    # boss stages the same file and gets the same bytes under a name of his own.
    assert proxy.fetch(FILE_SE, pfn, who=proxy.other) == data

    name = unique("pending")
    proxy.send(name, b"tester's upload", "form")
    refused(proxy.call("uploadFile", FILE_SE, f"/{name}", who=proxy.other), errno.ENOENT)
    assert not (proxy.place(FILE_SE).root / name).exists()
    assert ok(proxy.call("uploadFile", FILE_SE, f"/{name}"))["Size"] == len(b"tester's upload")
