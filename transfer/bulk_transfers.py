"""Bulks on the client side: several files as one tar stream, written and read in constant memory.

``BulkBody`` is what ``sendBulk`` sends (``PUT <service URL>/stream/bulk/<bulk id>``):
the archive is generated as it goes, file by file and chunk by chunk,
hashed on the way so that the client can compare each file with what the
service stored. ``unpack_bulk`` is what ``receiveBulk`` does with the
answer of ``bulkToClient``: members land in a hidden folder inside the
destination and are moved into place only once the archive is whole, so a
cut stream leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from typing import IO, Any

import xxhash

from seproxy.transfer.returnvalues import SErrorException
from seproxy.transfer.tar_format import Compressor, end_of_archive, member_header, padding

CHUNK = 1024 * 1024
# A member name: a file name, no separator, no control character (what a file id's name may be).
_MEMBER = re.compile(r"[^/\\\x00-\x1f\x7f-\x9f]{1,255}")


def compression_of(compress: bool | str) -> str:
    """The wire name of ``compress``: True is gzip (bzip2, DIRAC's choice, is far slower), False none."""
    if compress is True:
        return "gz"
    if compress is False:
        return ""
    if compress not in ("", "gz", "bz2"):
        raise SErrorException(f"compress={compress!r}: use True, False, 'gz' or 'bz2'", errno.EINVAL)
    return compress


class BulkBody:
    """The tar archive of local files as a request body, iterated once per attempt; sizes and xxh3 as sent."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], compression: str) -> None:
        self.compression = compression
        self.files: dict[str, str] = {}
        for path in paths:
            name = os.path.basename(os.fspath(path))
            if not os.path.isfile(path):
                raise SErrorException(f"{os.fspath(path)}: not a file (a bulk holds files only)", errno.EINVAL)
            if name in self.files:
                raise SErrorException(f"two files are named {name!r}: names in a bulk must differ", errno.EINVAL)
            self.files[name] = os.fspath(path)
        if not self.files:
            raise SErrorException("no file to send", errno.EINVAL)
        self.sent: dict[str, tuple[int, str]] = {}

    def __iter__(self) -> Iterator[bytes]:
        compressor = Compressor(self.compression)
        for block in self._blocks():
            if out := compressor.compress(block):
                yield out
        if out := compressor.flush():
            yield out

    def _blocks(self) -> Iterator[bytes]:
        self.sent = {}
        written = 0
        for name, path in self.files.items():
            with open(path, "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                header = member_header(name, size, os.fstat(stream.fileno()).st_mtime)
                yield header
                xxh3, left = xxhash.xxh3_64(), size
                while left:
                    data = stream.read(min(CHUNK, left))
                    if not data:
                        raise SErrorException(f"{path}: the file shrank while it was being sent", errno.EIO)
                    xxh3.update(data)
                    left -= len(data)
                    yield data
            written += len(header) + size + len(padding(size))
            yield padding(size)
            self.sent[name] = (size, xxh3.hexdigest())
        yield end_of_archive(written)


def check_stored(body: BulkBody, stored: dict[str, Any]) -> None:
    """``SErrorException(EIO)`` unless the service stored each file as it was sent."""
    for name, (size, xxh3) in body.sent.items():
        got = stored.get(name) or {}
        if got.get("Size") != size or got.get("xxh3") != xxh3:
            raise SErrorException(
                f"{name}: the service stored {got.get('Size')} bytes with xxh3 {got.get('xxh3')}, "
                f"{size} bytes with xxh3 {xxh3} were sent",
                errno.EIO,
            )


def unpack_bulk(stream: IO[bytes], destination: str) -> list[str]:
    """Extract the archive read from ``stream`` into the folder ``destination``; the names, once all are in.

    Only regular files with plain names are taken: an archive that holds
    anything else (a path, a link, a device) is refused, not half-extracted.
    """
    landing = os.path.join(destination, f".bulk-{secrets.token_hex(4)}.part")
    os.mkdir(landing)
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                names = [_extract(archive, member, landing) for member in archive]
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise SErrorException(f"the bulk did not arrive whole: {exc}", errno.EIO) from None
        for name in names:
            os.replace(os.path.join(landing, name), os.path.join(destination, name))
        return names
    finally:
        shutil.rmtree(landing, ignore_errors=True)


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo, landing: str) -> str:
    if not member.isreg() or not _MEMBER.fullmatch(member.name) or member.name in (".", ".."):
        raise SErrorException(f"the bulk holds {member.name[:120]!r}, which is not a plain file name", errno.EPROTO)
    source = archive.extractfile(member)
    assert source is not None
    with open(os.path.join(landing, member.name), "xb") as target:
        shutil.copyfileobj(source, target, CHUNK)
    return member.name
