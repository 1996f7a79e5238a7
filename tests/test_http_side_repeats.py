"""A URL asked again and again (issue 16): the side server remembers what it resolved to, and
every answer is still the one the request would get the first time.

The requests follow each other within the shared read lease's linger, so
the later ones are answered from what the server remembers, while the
cache changes under them from another process (this test's own ``Cache``).
Request heads too are remembered once parsed, by their bytes.
"""

import base64
import hashlib
import os
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from fixtures.http_side import SE, SECRET

from seproxy.cache import Cache
from seproxy.http_side import request
from seproxy.http_side.request import parse_head
from seproxy.http_side.response import Refused
from seproxy.http_side.signing import CLOCK_SKEW, Signer

STALE = '111 - "Revalidation Failed"'


def without_date(response: requests.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name != "Date"}


def cache_entry(service, lfn: str) -> tuple[Cache, str]:
    cache = Cache(Path(service.process.config["service"]["state_dir"]) / "cache", quota=1 << 40)
    (entry,) = [entry for entry in cache.entries(area="staged") if entry.name == lfn]
    return cache, entry.id


def test_repeat_answers_are_the_first_one_and_each_request_is_still_judged_on_its_own(http_service):
    data = os.urandom(10000)
    url = http_service.url("/lab/repeat.dat", data)
    with requests.Session() as session:
        first = session.get(url, timeout=10)
        assert first.status_code == 200 and first.content == data
        for _ in range(3):
            again = session.get(url, timeout=10)
            assert again.status_code == 200 and again.content == data
            assert without_date(again) == without_date(first)
        etag = first.headers["ETag"]
        assert session.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
        assert session.get(url, headers={"If-Match": '"other"'}, timeout=10).status_code == 412
        ranged = session.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        head = session.head(url, timeout=10)
        assert head.status_code == 200 and head.content == b"" and without_date(head) == without_date(first)
        md5 = session.head(url, headers={"Want-Digest": "md5"}, timeout=10)
        assert md5.headers["Digest"] == f"md5={base64.b64encode(hashlib.md5(data).digest()).decode()}"
        last = session.get(url, timeout=10)
        assert last.content == data and without_date(last) == without_date(first)


def test_repeated_digest_requests_get_each_the_digests_they_asked(http_service):
    """Answers are remembered per combination of digests asked: each repeat gets its own, in its order."""
    data = os.urandom(5000)
    url = http_service.url("/lab/digests.dat", data)
    adler = f"adler32={zlib.adler32(data):08x}"
    md5 = f"md5={base64.b64encode(hashlib.md5(data).digest()).decode()}"
    sha = f"sha-256={base64.b64encode(hashlib.sha256(data).digest()).decode()}"
    asked = [("adler32", adler), ("md5", md5), ("md5, adler32", f"{md5},{adler}"), ("sha-256;q=1", sha), ("adler32", adler)]
    with requests.Session() as session:
        for _ in range(3):
            for want, expected in asked:
                head = session.head(url, headers={"Want-Digest": want}, timeout=10)
                assert head.status_code == 200 and head.headers["Digest"] == expected, want
                got = session.get(url, headers={"Want-Digest": want}, timeout=10)
                assert got.content == data and got.headers["Digest"] == expected, want
            assert session.head(url, timeout=10).headers["Digest"] == adler, "ADLER32 unasked"
        repr_digest = session.head(url, headers={"Want-Repr-Digest": "sha-256=10"}, timeout=10)
        assert repr_digest.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def test_a_copy_marked_stale_fresh_or_dropped_meanwhile_is_answered_as_it_is_now(http_service):
    data = os.urandom(5000)
    lfn = "/lab/changing.dat"
    url = http_service.url(lfn, data)
    cache, entry_id = cache_entry(http_service, lfn)
    with cache, requests.Session() as session:
        for _ in range(3):
            assert "Warning" not in session.get(url, timeout=10).headers
        cache.record_check(entry_id, "the storage element did not answer")
        stale = session.get(url, timeout=10)
        assert stale.content == data and stale.headers["Warning"] == STALE
        cache.record_check(entry_id)
        fresh = session.get(url, timeout=10)
        assert fresh.content == data and "Warning" not in fresh.headers
        assert cache.drop_source(SE, lfn) == 1
        gone = session.get(url, timeout=10)
        assert gone.status_code == 404 and "no longer in the cache" in gone.text


def test_a_url_answered_many_times_is_refused_once_its_key_expires(http_service):
    data = os.urandom(4096)
    parts = urlsplit(http_service.url("/lab/expiring.dat", data))
    _, key, name = parts.path.split("/")
    key_id, link_id = key.split(".")[:2]
    expires = int(time.time()) - CLOCK_SKEW + 2
    # The same link under a key of its own that expires (clock skew included) in a second or two.
    short = f"{parts.scheme}://{parts.netloc}/{Signer(key_id, SECRET.encode()).sign(link_id, expires, name)}/{name}"
    with requests.Session() as session:
        while time.time() < expires + CLOCK_SKEW - 0.3:
            answer = session.get(short, timeout=10)
            assert answer.status_code == 200 and answer.content == data
        time.sleep(max(0.0, expires + CLOCK_SKEW + 1.1 - time.time()))
        expired = session.get(short, timeout=10)
        assert expired.status_code == 403 and "this link has expired" in expired.text


def test_a_head_seen_before_is_answered_as_parsed_and_the_memory_of_heads_stays_bounded():
    plain = b"GET /a/b HTTP/1.1\r\nHost: x\r\n\r\n"
    ranged = b"GET /a/b HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
    closing = b"GET /a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for _ in range(2):
        assert parse_head(plain).headers == {"host": "x"} and parse_head(plain).keep_alive
        assert parse_head(ranged).headers["range"] == "bytes=0-9"
        assert not parse_head(closing).keep_alive
        with pytest.raises(Refused) as refused:
            parse_head(b"GET /a/b HTTP/1.1\r\n\r\n")
        assert refused.value.status == 400 and "Host" in str(refused.value)
    for number in range(request.REMEMBERED + 10):
        assert parse_head(f"GET /{number} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).path == f"/{number}"
    assert len(request._parsed) <= request.REMEMBERED
    long = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Long: " + b"y" * request.REMEMBERED_HEAD + b"\r\n\r\n"
    assert parse_head(long).headers["x-long"] == "y" * request.REMEMBERED_HEAD and long not in request._parsed
