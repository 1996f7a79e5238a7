"""WebDAV specifics: instance digests, bearer tokens, outages and the CA-bundle trap."""

from __future__ import annotations

import errno
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
from fixtures.service import free_port
from fixtures.storage_servers import LOOPBACK, LoopbackCA, MemorySink, StorageTarget

from seproxy.config import ConfigError, StorageElementSettings
from seproxy.storage import ChecksumMismatch, StorageUnavailable, make_storage_element
from seproxy.storage.base import CHUNK_SIZE
from seproxy.storage.webdav import _RING_SIZE


def test_the_digest_header_reaches_the_sink(webdav_target: StorageTarget) -> None:
    data = b"dCache answers Want-Digest" * 1000
    (webdav_target.root / "d.dat").write_bytes(data)

    sink = MemorySink()
    info = webdav_target.element().download("/d.dat", sink)

    assert sink.announced == (len(data), {"adler32": f"{zlib.adler32(data):08x}"})
    assert info.checksums == {"adler32": f"{zlib.adler32(data):08x}"}


def test_a_wrong_digest_after_upload_is_a_checksum_mismatch(
    start_webdav: Callable[..., StorageTarget], tmp_path: Path
) -> None:
    target = start_webdav(lie=True)
    element = target.element()
    data = b"x" * 100_000
    source = tmp_path / "x.dat"
    source.write_bytes(data)

    with pytest.raises(ChecksumMismatch) as mismatch:
        element.upload(source, "/vo/x.dat", checksums={"adler32": f"{zlib.adler32(data):08x}"})

    assert mismatch.value.errno == errno.EIO
    assert f"{zlib.adler32(data):08x}" in str(mismatch.value) and f"{zlib.adler32(data) ^ 1:08x}" in str(mismatch.value)
    assert not (target.root / "vo/x.dat").exists()
    # Without a checksum to compare, only the size is checked.
    assert element.upload(source, "/vo/x.dat").size == len(data)


def test_the_bearer_token_is_read_from_its_file_at_each_request(
    start_webdav: Callable[..., StorageTarget], tmp_path: Path
) -> None:
    target = start_webdav(token="token-one")
    token_file = tmp_path / "token"
    token_file.write_text("token-one\n")
    element = target.element(bearer_token_file=token_file)
    source = tmp_path / "x.dat"
    source.write_bytes(b"abc")

    element.upload(source, "/vo/x.dat")
    token_file.write_text("token-two\n")  # renewed, but the server still wants the old one
    with pytest.raises(PermissionError) as refused:
        element.stat("/vo/x.dat")
    with pytest.raises(PermissionError):
        target.element().stat("/vo/x.dat")  # no token at all

    assert refused.value.errno == errno.EACCES and "401" in str(refused.value)
    assert "token-" not in str(refused.value)
    assert (target.root / "vo/x.dat").read_bytes() == b"abc"


def test_a_missing_token_file_is_a_permission_error_not_a_missing_file(
    webdav_target: StorageTarget, tmp_path: Path
) -> None:
    element = webdav_target.element(bearer_token_file=tmp_path / "no-token")

    with pytest.raises(PermissionError, match="bearer token file"):
        element.stat("/")


def test_a_server_that_is_down_is_storage_unavailable(storage_ca: LoopbackCA) -> None:
    port = free_port()
    settings = StorageElementSettings(plugin="webdav", base=f"https://{LOOPBACK}:{port}/dav", ca_dir=storage_ca.ca_dir)
    element = make_storage_element("DOWN-SE", settings)

    with pytest.raises(StorageUnavailable) as down:
        element.stat("/vo/a.dat")

    assert down.value.errno == errno.ECONNREFUSED
    assert f"DOWN-SE: /vo/a.dat: storage at {LOOPBACK}:{port}" in str(down.value)
    assert "refused" in str(down.value)


def test_a_server_error_is_storage_unavailable(start_webdav: Callable[..., StorageTarget]) -> None:
    element = start_webdav(overloaded=True).element()

    with pytest.raises(StorageUnavailable) as failing:
        element.stat("/vo/a.dat")

    assert failing.value.errno == errno.EHOSTUNREACH
    assert "TEST-SE: /vo/a.dat: storage failed: PROPFIND answered 503" in str(failing.value)


def test_the_configured_ca_dir_beats_the_environment_bundle(
    webdav_target: StorageTarget, other_ca: LoopbackCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On these machines both variables point at the system bundle, which does not hold the test CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    (webdav_target.root / "a.dat").write_bytes(b"abc")

    assert webdav_target.element().stat("/a.dat").size == 3
    tls_default = make_storage_element("SE", webdav_target.settings(ca_dir=None), default_ca_dir=webdav_target.ca_dir)
    assert tls_default.stat("/a.dat").size == 3
    with pytest.raises(StorageUnavailable) as untrusted:
        webdav_target.element(ca_dir=other_ca.ca_dir).stat("/a.dat")

    assert "certificate verify failed" in str(untrusted.value)
    assert str(other_ca.ca_dir) in str(untrusted.value)


def test_unsafe_or_impossible_settings_are_configuration_errors(webdav_target: StorageTarget, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage_elements\.TEST-SE\.ca_dir: .* is not a directory"):
        webdav_target.element(ca_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"storage_elements\.TEST-SE\.bearer_token_file: .*https"):
        webdav_target.element(base="http://127.0.0.1:1/dav", bearer_token_file=tmp_path / "token")


def test_x509_credentials_are_presented_to_the_storage(
    start_webdav: Callable[..., StorageTarget], storage_ca: LoopbackCA
) -> None:
    target = start_webdav(client_certs=True)
    (target.root / "a.dat").write_bytes(b"abc")

    as_proxy = target.element(x509_proxy=storage_ca.client_pem)
    as_pair = target.element(x509_cert=storage_ca.client_cert, x509_key=storage_ca.client_key)
    with pytest.raises(StorageUnavailable):
        target.element().stat("/a.dat")

    assert as_proxy.stat("/a.dat").size == 3
    assert as_pair.stat("/a.dat").size == 3


def test_a_body_larger_than_the_reading_ring_arrives_whole_however_slowly_it_is_written(
    webdav_target: StorageTarget,
) -> None:
    # The connection's thread fills a ring while the sink writes views of it: a sink slower than
    # the connection makes the ring run full and wrap around many times.
    data = os.urandom(2 * _RING_SIZE + 12_345)
    (webdav_target.root / "big.dat").write_bytes(data)

    class SlowSink(MemorySink):
        def write(self, data: bytes | memoryview) -> None:
            time.sleep(0.001)
            super().write(data)

    sink = SlowSink()
    info = webdav_target.element().download("/big.dat", sink)

    assert info.size == len(data) and sink.announced == (len(data), {"adler32": f"{zlib.adler32(data):08x}"})
    assert sink.data == data
    assert len(sink.chunks) > 2 and max(sink.chunks) <= CHUNK_SIZE


def test_a_chunked_body_of_unannounced_length_arrives_whole(start_webdav: Callable[..., StorageTarget]) -> None:
    def without_length(app: Any) -> Any:
        def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                kept = [(name, value) for name, value in headers if name.lower() != "content-length"]
                return start_response(status, kept, exc_info)

            return app(environ, start if environ["REQUEST_METHOD"] == "GET" else start_response)

        return serve

    target = start_webdav(wrap=without_length)
    data = os.urandom(3 * 1024 * 1024 + 7)
    (target.root / "c.dat").write_bytes(data)

    sink = MemorySink()
    info = target.element().download("/c.dat", sink)

    assert sink.announced is not None and sink.announced[0] is None  # no Content-Length: sent chunked
    assert sink.data == data and info.size == len(data)
