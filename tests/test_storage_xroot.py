"""XRootD specifics: the server's checksum query, outages, credentials from the environment."""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path

import pytest
from fixtures.service import free_port
from fixtures.storage_servers import LOOPBACK, MemorySink, StorageTarget

from seproxy.config import ConfigError, StorageElementSettings
from seproxy.storage import StorageUnavailable, make_storage_element


def test_the_checksum_query_gives_the_adler32_of_the_file(xroot_target: StorageTarget) -> None:
    data = os.urandom(300_000)
    (xroot_target.root / "c.dat").write_bytes(data)
    os.chmod(xroot_target.root / "c.dat", 0o644)

    element = xroot_target.element()
    sink = MemorySink()
    element.download("/c.dat", sink)

    assert element.stat("/c.dat").checksums == {"adler32": f"{zlib.adler32(data):08x}"}
    assert sink.announced == (len(data), {"adler32": f"{zlib.adler32(data):08x}"})


def test_a_server_that_is_down_is_storage_unavailable() -> None:
    element = make_storage_element(
        "DOWN-SE", StorageElementSettings(plugin="xroot", base=f"root://{LOOPBACK}:{free_port()}//data", timeout=3.0)
    )

    with pytest.raises(StorageUnavailable) as down:
        element.stat("/vo/a.dat")

    assert down.value.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT)
    assert str(down.value).startswith(f"[Errno {down.value.errno}] DOWN-SE: /vo/a.dat: ")


def test_credentials_go_to_the_environment_and_must_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("X509_USER_PROXY", "X509_CERT_DIR"):
        monkeypatch.setenv(variable, "")  # so that monkeypatch restores the original state afterwards
        monkeypatch.delenv(variable)
    proxy, other = tmp_path / "proxy.pem", tmp_path / "other.pem"

    def settings(x509_proxy: Path) -> StorageElementSettings:
        return StorageElementSettings(plugin="xroot", base="root://eos.example.org//eos", x509_proxy=x509_proxy)

    make_storage_element("A", settings(proxy), default_ca_dir=tmp_path)
    make_storage_element("B", settings(proxy))
    with pytest.raises(ConfigError, match=r"storage_elements\.C\.x509_proxy: .*X509_USER_PROXY"):
        make_storage_element("C", settings(other))

    assert os.environ["X509_USER_PROXY"] == str(proxy)
    assert os.environ["X509_CERT_DIR"] == str(tmp_path)
