"""A ``file`` element reports the ADLER32 that XRootD and StoRM record in extended attributes.

XRootD's own ``xrdadler32`` (Debian xrootd-client) writes and reads the
record on the same disk, so both directions are checked against it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from fixtures.storage_servers import MemorySink, StorageTarget

from seproxy.storage.checksum_xattrs import STORM, XROOTD, record_adler32


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def xrdadler32(path: Path) -> str:
    tool = shutil.which("xrdadler32")
    assert tool, "xrdadler32 is missing: install the Debian package xrootd-client (scripts/setup test)"
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()[0]


def test_a_record_written_by_xrootd_is_reported_and_verifies_a_staging(file_target: StorageTarget) -> None:
    data = os.urandom(300_000)
    path = file_target.root / "x.dat"
    path.write_bytes(data)
    assert xrdadler32(path) == adler32(data)
    assert XROOTD in os.listxattr(path)

    element = file_target.element()
    assert element.stat("/x.dat").checksums == {"adler32": adler32(data)}
    sink = MemorySink()
    element.download("/x.dat", sink)
    assert sink.announced == (len(data), {"adler32": adler32(data)})  # what the cache then verifies


def test_xrootd_reads_the_record_we_write(file_target: StorageTarget) -> None:
    path = file_target.root / "y.dat"
    path.write_bytes(b"some bytes")
    fd = os.open(path, os.O_RDONLY)
    try:
        record_adler32(fd, "0badcafe")  # not the file's: only a tool that reads the record says it
    finally:
        os.close(fd)
    assert xrdadler32(path) == "0badcafe"


def test_computed_once_then_recorded_and_a_stale_record_is_ignored(file_target: StorageTarget) -> None:
    path = file_target.root / "z.dat"
    path.write_bytes(b"first")
    element = file_target.element()
    assert element.stat("/z.dat").checksums == {"adler32": adler32(b"first")}
    assert XROOTD in os.listxattr(path)

    path.write_bytes(b"second version")
    os.utime(path, (1_000_000, 1_000_000))  # another mtime than the one recorded
    assert element.stat("/z.dat").checksums == {"adler32": adler32(b"second version")}


def test_storm_attribute_is_read(file_target: StorageTarget) -> None:
    path = file_target.root / "s.dat"
    path.write_bytes(b"storm")
    os.setxattr(path, STORM, b"1A2B3C4D")
    assert file_target.element().stat("/s.dat").checksums == {"adler32": "1a2b3c4d"}


def test_a_read_only_element_computes_but_records_nothing(file_target: StorageTarget) -> None:
    path = file_target.root / "r.dat"
    path.write_bytes(b"read only")
    element = file_target.element(read_only=True)
    assert element.stat("/r.dat").checksums == {"adler32": adler32(b"read only")}
    assert XROOTD not in os.listxattr(path)


def test_an_upload_is_recorded_for_xrootd(file_target: StorageTarget, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    source = tmp_path / "source"
    source.write_bytes(data)
    stored = file_target.element().upload(source, "/up/u.dat", checksums={"adler32": adler32(data)})
    assert stored.checksums == {"adler32": adler32(data)}
    assert XROOTD in os.listxattr(file_target.root / "up/u.dat")
    assert xrdadler32(file_target.root / "up/u.dat") == adler32(data)


@pytest.mark.parametrize("record", [b"", b"x" * 95, b"\0" * 96])
def test_a_damaged_record_is_ignored(file_target: StorageTarget, record: bytes) -> None:
    path = file_target.root / "d.dat"
    path.write_bytes(b"damaged")
    os.setxattr(path, XROOTD, record or b"\0")
    assert file_target.element(read_only=True).stat("/d.dat").checksums == {"adler32": adler32(b"damaged")}
