"""Paths from the wire never leave the element's base, whatever the plugin."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.storage_servers import StorageTarget

from seproxy.config import ConfigError, StorageElementSettings
from seproxy.storage import PathRefused, make_storage_element


@pytest.mark.parametrize(
    "pfn",
    [
        "../x.dat",
        "/vo/../../etc/passwd",
        "/../../etc/passwd",
        "/vo/a\x00.dat",
        "/vo/a\n.dat",
        "/vo/" + "a" * 4100,
        "https://elsewhere.example.org/vo/a.dat",
        "root://elsewhere.example.org//vo/a.dat",
        "file:///etc/passwd",
    ],
)
def test_escapes_are_refused(storage_target: StorageTarget, pfn: str) -> None:
    element = storage_target.element()

    with pytest.raises(PathRefused) as refused:
        element.stat(pfn)

    assert refused.value.errno == errno.EPERM
    assert str(refused.value).startswith("[Errno 1] TEST-SE: ") and "refused" in str(refused.value)


def test_urls_of_this_element_are_accepted_and_others_refused(storage_target: StorageTarget) -> None:
    element = storage_target.element()
    base = element.url("/")

    assert element.normalize(f"{base}/vo//./a.dat") == "/vo/a.dat"
    assert element.normalize(base) == "/"
    for outside in (f"{base}/../x", f"{base}-other/x", f"{base}/a?x=1"):
        with pytest.raises(PathRefused):
            element.normalize(outside)


def test_webdav_url_with_another_port_or_credentials_is_refused(webdav_target: StorageTarget) -> None:
    element = webdav_target.element()
    host, _, rest = webdav_target.base.removeprefix("https://").partition("/")

    for pfn in (f"https://127.0.0.1:1/{rest}/a", f"https://user:secret@{host}/{rest}/a", f"http://{host}/{rest}/a"):
        with pytest.raises(PathRefused) as refused:
            element.normalize(pfn)
        assert "secret" not in str(refused.value)
    assert element.normalize(f"https://{host}/{rest}/a%20b%2Fc") == "/a b/c"
    with pytest.raises(PathRefused):
        element.normalize(f"https://{host}/{rest}/%2e%2e/x")


def test_file_symlinks_leading_out_are_refused(file_target: StorageTarget, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dat").write_bytes(b"secret")
    (file_target.root / "vo").mkdir()
    (file_target.root / "vo/inside.dat").write_bytes(b"ok")
    (file_target.root / "vo/escape").symlink_to(outside)
    (file_target.root / "vo/escape.dat").symlink_to(outside / "secret.dat")
    (file_target.root / "vo/alias.dat").symlink_to("inside.dat")
    element = file_target.element()
    source = tmp_path / "new.dat"
    source.write_bytes(b"new")

    for operation in (
        lambda: element.stat("/vo/escape/secret.dat"),
        lambda: element.stat("/vo/escape.dat"),
        lambda: element.listdir("/vo/escape"),
        lambda: element.upload(source, "/vo/escape/new.dat"),
        lambda: element.remove("/vo/escape.dat"),
    ):
        with pytest.raises(PathRefused):
            operation()

    assert [entry.path for entry in element.listdir("/vo")] == ["/vo/alias.dat", "/vo/inside.dat"]
    assert element.stat("/vo/alias.dat").size == 2
    assert sorted(os.listdir(outside)) == ["secret.dat"]


def test_bad_bases_are_configuration_errors(tmp_path: Path) -> None:
    for plugin, base in [("file", "relative/dir"), ("file", "/a/../b"), ("webdav", str(tmp_path)),
                         ("webdav", "https://user@host/x"), ("xroot", "https://host//x")]:
        with pytest.raises(ConfigError, match=r"storage_elements\.SE\.base"):
            make_storage_element("SE", StorageElementSettings(plugin=plugin, base=base))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown plugin 's3'"):
        make_storage_element("SE", StorageElementSettings(plugin="s3", base="/x"))  # type: ignore[arg-type]


def test_service_imports_without_the_xrootd_bindings() -> None:
    script = (
        "import sys; sys.modules['XRootD'] = None\n"
        "from seproxy.config import StorageElementSettings as S\n"
        "from seproxy.storage import make_storage_element as make\n"
        "make('local', S(plugin='file', base='/tmp'))\n"
        "try:\n    make('eos', S(plugin='xroot', base='root://eos.example.org//eos'))\n"
        "except ImportError as exc:\n    print(exc)\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert "PyPI package 'xrootd'" in result.stdout and "seproxy[xroot]" in result.stdout
