"""Bulks: several of a caller's files at once, as one tar stream (DIRAC's ``sendBulk``, ``receiveBulk``, ``listBulk``).

A bulk id names a set of files in one of the caller's own areas, as DIRAC's
``transfer_bulkToClient`` takes a colon-separated list of names:

- ``getFile`` or ``putFile``: every file of the caller in that area;
- ``getFile/a.dat:getFile/b.dat``: those files (all in one area).

A bulk travels as a tar archive whose members are the bare names (``a.dat``),
optionally compressed (gzip or bzip2). Downloads read only ``getFile`` and
uploads write only ``putFile``, as ``streamToClient`` and ``sendFile`` do.

An upload is all or nothing: each member is committed to the cache under a
name of the request, ``bulk-<request id>/<name>``, which no file id can
reach (those start with an area), and only when the whole archive has
arrived are the members given their ``putFile/<name>``. A stream cut or refused half-way removes what it
had brought, and replaces nothing.
"""

from __future__ import annotations

import errno
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from typing import IO

from seproxy import metrics
from seproxy.cache import Cache, Entry
from seproxy.http_side.body import FileSlice
from seproxy.http_side.tar_stream import tar_body
from seproxy.proxy.file_ids import GET_AREA, PUT_AREA, file_id, parse_file_id
from seproxy.transfer import SErrorException
from seproxy.transfer.tar_format import Compressor

AREAS = (GET_AREA, PUT_AREA)
# As prepareFileForHTTP: a bound on the work and the index rows one request makes.
MAX_FILES = 1000
CHUNK = 1024 * 1024


def _invalid(bulk_id: str, why: str) -> SErrorException:
    return SErrorException(f"bulk id {bulk_id[:120]!r}: {why}", errno=errno.EINVAL)


def parse_bulk_id(bulk_id: str, areas: Sequence[str] = AREAS) -> tuple[str, list[str] | None]:
    """(area, names) of ``bulk_id``; names is None for a whole area. ``SErrorException(EINVAL)`` if malformed."""
    form = f"{' or '.join(areas)}, or file ids <area>/<name> joined by ':'"
    if bulk_id in areas:
        return bulk_id, None
    ids = bulk_id.split(":")
    area = ids[0].partition("/")[0]
    if area not in areas:
        raise _invalid(bulk_id, f"a bulk id is {form}")
    if len(ids) > MAX_FILES:
        raise _invalid(bulk_id, f"{len(ids)} files, at most {MAX_FILES}")
    try:
        names = [parse_file_id(one, area) for one in ids]
    except SErrorException as exc:
        raise _invalid(bulk_id, f"{exc.result['Message']}; a bulk id is {form}") from None
    if len(set(names)) != len(names):
        raise _invalid(bulk_id, "a file is named twice")
    return area, names


def bulk_files(cache: Cache, owner: str, bulk_id: str, areas: Sequence[str] = AREAS) -> dict[str, Entry]:
    """The files of ``bulk_id`` by bare name; ``SErrorException(ENOENT)`` naming any that is missing."""
    area, names = parse_bulk_id(bulk_id, areas)
    present = {name.partition("/")[2]: entry for name, entry in cache.aliases(owner, f"{area}/").items()}
    if names is None:
        if len(present) > MAX_FILES:
            raise SErrorException(f"{len(present)} files in {area}, at most {MAX_FILES} in one bulk", errno=errno.EINVAL)
        return present
    missing = [name for name in names if name not in present]
    if missing:
        raise SErrorException(
            f"bulk {bulk_id[:120]!r}: no file {', '.join(missing[:5])} in your {area} area", errno=errno.ENOENT
        )
    return {name: present[name] for name in names}


# -- downloads ---------------------------------------------------------------------


def tar_chunks(members: Sequence[tuple[str, Entry]], compression: str, cache: Cache) -> Iterator[bytes]:
    """The archive of ``members`` in chunks of about ``CHUNK`` bytes, compressed as asked; the file
    bytes read are counted as hits of their storage elements in ``cache``.

    A generator run one step at a time off the event loop: each step reads
    (and compresses) one chunk, so memory stays at one chunk whatever the sizes.
    """
    compressor = Compressor(compression)
    for piece in tar_body(members):
        for data in _piece_chunks(piece):
            if isinstance(piece, FileSlice):
                metrics.count_served(cache, {(piece.se, piece.growing): len(data)})
            if out := compressor.compress(data):
                yield out
    if out := compressor.flush():
        yield out


def _piece_chunks(piece: bytes | FileSlice) -> Iterator[bytes]:
    if isinstance(piece, bytes):
        yield piece
        return
    with open(piece.path, "rb") as stream:
        stream.seek(piece.offset)
        left = piece.length
        while left:
            data = stream.read(min(CHUNK, left))
            if not data:
                raise OSError(errno.EIO, f"cache file {piece.path.name} is shorter than its index says")
            left -= len(data)
            yield data


# -- uploads -----------------------------------------------------------------------


def receive_bulk(cache: Cache, owner: str, bulk_id: str, stream: IO[bytes], tag: str) -> dict[str, Entry]:
    """Take the tar archive read from ``stream`` (plain, gzip or bzip2) into ``owner``'s putFile area.

    ``bulk_id`` is ``putFile`` (any members) or the list of the members
    expected, which must all come. ``tag`` (the request id) names the
    members until all have arrived. Returns the new entries by bare name.
    """
    _, expected = parse_bulk_id(bulk_id, (PUT_AREA,))
    arrived: dict[str, Entry] = {}
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                for member in archive:
                    name = _member_name(member, expected, arrived)
                    source = archive.extractfile(member)
                    assert source is not None  # a regular file, checked above
                    arrived[name] = _receive_member(cache, owner, f"bulk-{tag}/{name}", member.size, source)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise SErrorException(f"the bulk is not a whole tar archive (plain, gzip or bzip2): {exc}", errno=errno.EINVAL) from None
        missing = sorted(set(expected or ()) - set(arrived))
        if missing:
            raise SErrorException(f"the bulk lacks {', '.join(missing[:5])}, which its id names", errno=errno.EINVAL)
        for name, entry in arrived.items():
            cache.set_alias(owner, file_id(PUT_AREA, name), entry.id)
    except BaseException:
        for entry in arrived.values():
            cache.remove(entry.id, force=True)
        raise
    return arrived


def _member_name(member: tarfile.TarInfo, expected: list[str] | None, arrived: dict[str, Entry]) -> str:
    if not member.isreg():
        raise SErrorException(f"bulk member {member.name[:120]!r} is not a regular file: a bulk holds files only", errno=errno.EINVAL)
    try:
        name = parse_file_id(file_id(PUT_AREA, member.name), PUT_AREA)
    except SErrorException as exc:
        raise SErrorException(f"bulk member: {exc.result['Message']}", errno=errno.EINVAL) from None
    if expected is not None and name not in expected:
        raise SErrorException(f"bulk member {name!r} is not among the files its bulk id names", errno=errno.EINVAL)
    if name in arrived:
        raise SErrorException(f"bulk member {name!r} comes twice", errno=errno.EINVAL)
    if len(arrived) >= MAX_FILES:
        raise SErrorException(f"a bulk holds at most {MAX_FILES} files", errno=errno.EINVAL)
    return name


def _receive_member(cache: Cache, owner: str, name: str, size: int, source: IO[bytes]) -> Entry:
    upload = cache.begin_upload(owner, name, expected_size=size)
    try:
        while data := source.read(CHUNK):
            upload.writer.write(data)
    except BaseException:
        cache.abort(upload)
        raise
    return cache.commit(upload)
