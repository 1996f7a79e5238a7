"""DIRAC's TransferClient: whole files to and from a service, streamed, verified, resumable.

``receiveFile`` speaks DIRAC's own download protocol (``streamToClient``: a
form POST with ``rawContent=True``), so that a DIRAC service and seproxy
serve it alike. ``sendFile`` uses seproxy's streamed upload route
(``PUT <service URL>/stream/<fileId>``) instead of DIRAC's whole file inside
the form, which needs the file in memory on both sides.

Memory stays constant: bytes go from the socket to the disk (and back) in
chunks, hashed on the way; no file is read twice. A download lands under a
temporary name beside the destination and is renamed into place only once
its size and checksums match what the service announced, so a failure
never leaves a file that looks whole.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import re
import secrets
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import quote

import requests
import xxhash
from urllib3 import exceptions as u3

from seproxy.transfer.bulk_transfers import BulkBody, check_stored, compression_of, unpack_bulk
from seproxy.transfer.checksum_headers import DIGEST_HEADER, XXH3_HEADER, canonical_adler32, parse_digest
from seproxy.transfer.network_errors import classify
from seproxy.transfer.returnvalues import S_ERROR, S_OK, ReturnValue, SErrorException
from seproxy.transfer.rpc_client import RPCClient, dirac_result

CHUNK = 1024 * 1024
DEFAULT_MAX_RESUMES = 5

# The service's areas of file ids: prepareFile's copies are getFile/<name>; a file
# sent as putFile/<name> is what uploadFile(se, ".../<name>") pushes.
GET_AREA = "getFile"
PUT_AREA = "putFile"

Progress = Callable[[int, int | None], None]
"""Called after every chunk with (bytes done, total bytes or None when the total is unknown)."""

LocalFile = str | os.PathLike[str] | BinaryIO
"""A path, or an open binary file object."""

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")


class TransferClient(RPCClient):
    """Sends and receives files; also an ``RPCClient`` for the same service.

    Takes the URL(s) and the credential options of ``RPCClient``.
    ``max_resumes`` bounds how often one download resumes after its
    connection broke off.
    """

    def __init__(self, url: str | Sequence[str], *, max_resumes: int = DEFAULT_MAX_RESUMES, **options: Any) -> None:
        super().__init__(url, **options)
        self.max_resumes = max_resumes

    def receiveFile(
        self, destination: LocalFile, fileId: str, token: str = "", *, progress: Progress | None = None
    ) -> ReturnValue:
        """Download ``fileId`` into ``destination`` (a path or an open binary file).

        S_OK({"Size": n, "xxh3": hex, "Checksum": adler32 hex or ""}) once the
        bytes match the size and checksums the service announced (ADLER32 is
        computed when the service sends one). A file object is written from
        its current position and cut back there if the download fails.
        """
        return self._receive(destination, fileId, token, progress=progress)

    def sendFile(
        self, source: LocalFile, fileId: str, token: str = "", *, progress: Progress | None = None
    ) -> ReturnValue:
        """Upload ``source`` (a path or an open, seekable binary file) as ``fileId`` (``putFile/<name>``).

        S_OK({"FileId", "Size", "xxh3", "Checksum"}) as the service stored
        it. The file is read once: its size is declared and its xxh3 computed
        while it streams, then compared with the one the service computed.
        ``token`` is DIRAC's opaque transfer token, accepted so that DIRAC
        code calls this unchanged; the streamed route has no use for it.
        """
        try:
            with _opened(source) as stream:
                body = _UploadBody(stream, progress)
                response = self._request(
                    "PUT",
                    f"/stream/{quote(fileId, safe='/')}",
                    data=body if body.size else b"",  # an empty iterable would go chunked, without Content-Length
                    headers={"Content-Type": "application/octet-stream"},
                )
        except SErrorException as exc:
            return exc.result
        except _SourceError as exc:
            return S_ERROR(exc.errno, f"{_name_of(source)}: {exc}")
        except OSError as exc:
            return _local_error(exc, source)
        result = dirac_result(response)
        if result["OK"]:
            return _check_stored(fileId, result["Value"], body)
        return result

    def sendBulk(
        self,
        fileList: Sequence[str | os.PathLike[str]],
        bulkId: str = PUT_AREA,
        token: str = "",
        compress: bool | str = True,
        bulkSize: int = -1,
        onthefly: bool = True,
    ) -> ReturnValue:
        """Upload several files as one tar stream into your ``putFile`` area, all or none.

        ``bulkId`` is ``putFile``, or the file ids expected
        (``putFile/a.dat:putFile/b.dat``), which must be the files' names.
        ``compress``: True (gzip), False, ``"gz"`` or ``"bz2"``. S_OK({name:
        description}) once each file is stored as sent. ``bulkSize`` and
        ``onthefly`` are DIRAC's, accepted with no effect: the archive is
        always made on the fly.
        """
        try:
            body = BulkBody(fileList, compression_of(compress))
            headers = {"Content-Type": "application/x-tar"}
            response = self._request("PUT", f"/stream/bulk/{quote(bulkId, safe='/:')}", data=body, headers=headers)
        except SErrorException as exc:
            return exc.result
        except OSError as exc:
            return S_ERROR(exc.errno or errno.EIO, f"{exc.filename or 'a file of the bulk'}: {exc.strerror or exc}")
        result = dirac_result(response)
        if not result["OK"]:
            return result
        try:
            check_stored(body, result["Value"]["Files"])
        except SErrorException as exc:
            return exc.result
        return S_OK(result["Value"]["Files"])

    def receiveBulk(
        self, destDir: str | os.PathLike[str], bulkId: str = GET_AREA, token: str = "", compress: bool | str = True
    ) -> ReturnValue:
        """Download the files of ``bulkId`` (``getFile``, or ``getFile/a.dat:getFile/b.dat``) into the
        existing folder ``destDir``, as one tar stream. S_OK(the names) once all are in; nothing on failure."""
        destination = os.fspath(destDir)
        if not os.path.isdir(destination):
            return S_ERROR(errno.ENOTDIR, f"{destination} is not a directory for bulk receival")
        try:
            args = [bulkId, token, compression_of(compress)]
            with self._post("bulkToClient", args, raw=True, stream=True, headers={"Accept-Encoding": "identity"}) as response:
                return S_OK(unpack_bulk(io.BufferedReader(_RawBody(response), CHUNK), destination))
        except SErrorException as exc:
            return exc.result
        except OSError as exc:
            return _local_error(exc, destination)

    def listBulk(self, bulkId: str, token: str = "", compress: bool | str = True) -> ReturnValue:
        """The names of the files of ``bulkId`` (``compress`` is DIRAC's, with no effect on a list)."""
        return self.executeRPC("listBulk", bulkId, token)

    def _receive(
        self,
        destination: LocalFile,
        fileId: str,
        token: str,
        *,
        progress: Progress | None,
        expected: Mapping[str, Any] | None = None,
    ) -> ReturnValue:
        """``receiveFile``; ``expected`` is what the file must be (``Size``, ``xxh3``, ``Checksum``,
        as ``prepareFile`` describes it), so that a file replaced meanwhile is refused."""
        try:
            with _landing(destination) as target:
                download = _Download(target, fileId, progress, _Expected.described(expected or {}))
                self._fetch(download, token)
                received = download.verified()
        except SErrorException as exc:
            return exc.result
        except OSError as exc:
            return _local_error(exc, destination)
        return S_OK(received)

    def _fetch(self, download: _Download, token: str) -> None:
        """Receive the whole file, resuming with ``Range`` after each cut, up to ``max_resumes`` times."""
        for resumes in itertools.count():
            headers = {"Accept-Encoding": "identity"}  # the bytes as stored, never re-encoded
            if download.size:
                headers["Range"] = f"bytes={download.size}-"
            response = self._post("streamToClient", [download.file_id, token], raw=True, stream=True, headers=headers)
            with response:
                try:
                    download.take(response)
                    return
                except _Cut as cut:
                    if resumes >= self.max_resumes:
                        raise SErrorException(
                            f"{download.file_id}: the download broke off at byte {download.size} "
                            f"after {resumes} resume(s): {cut}",
                            cut.errno,
                        ) from None


# -- downloads -----------------------------------------------------------------


class _Cut(Exception):
    """The answer broke off before its end; a ``Range`` request may resume it."""

    def __init__(self, reason: str, code: int = errno.ECONNRESET) -> None:
        super().__init__(reason)
        self.errno = code


@dataclass
class _Expected:
    """What the file is said to be; each part None until someone says."""

    size: int | None = None
    xxh3: str | None = None
    adler32: str | None = None

    @classmethod
    def described(cls, description: Mapping[str, Any]) -> _Expected:
        """From a description with the keys ``prepareFile`` and ``receiveFile`` use."""
        return cls(description.get("Size"), description.get("xxh3") or None, canonical_adler32(description.get("Checksum") or ""))

    @classmethod
    def announced(cls, response: requests.Response, size: int | None) -> _Expected:
        """From the headers of a ``streamToClient`` answer."""
        adler32 = canonical_adler32(parse_digest(response.headers.get(DIGEST_HEADER)).get("adler32", ""))
        return cls(size, response.headers.get(XXH3_HEADER) or None, adler32)

    def merge(self, other: _Expected) -> str | None:
        """Take what ``other`` adds; the first part on which both disagree, or None."""
        for part in fields(self):
            mine, theirs = getattr(self, part.name), getattr(other, part.name)
            if theirs is None:
                continue
            if mine is None:
                setattr(self, part.name, theirs)
            elif not _same(mine, theirs):
                return f"{part.name} {theirs}, expected {mine}"
        return None


def _same(first: int | str, second: int | str) -> bool:
    """Equal sizes, or equal checksums whatever the case and leading zeros of their hex."""
    if isinstance(first, int) or isinstance(second, int):
        return first == second
    try:
        return int(first, 16) == int(second, 16)
    except ValueError:
        return first == second


class _Target(Protocol):
    stream: BinaryIO

    def restart(self) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class _Download:
    """One file arriving, possibly over several answers, hashed as it is written."""

    def __init__(self, target: _Target, file_id: str, progress: Progress | None, expected: _Expected) -> None:
        self.target = target
        self.file_id = file_id
        self.progress = progress
        self.expected = expected
        self._start_over()

    def _start_over(self) -> None:
        self.size = 0
        self._xxh3 = xxhash.xxh3_64()
        # ADLER32 is slower to compute than xxh3: only when there is one to compare with.
        self._adler32: int | None = 1 if self.expected.adler32 else None

    def take(self, response: requests.Response) -> None:
        """Write what ``response`` carries after the bytes already here; ``_Cut`` if it breaks off."""
        start, total = self._extent(response)
        conflict = self.expected.merge(_Expected.announced(response, total))
        if conflict:
            raise SErrorException(f"{self.file_id}: the file changed on the service: {conflict}", errno.EIO)
        if start == 0:  # the first answer, or the service ignored the Range: the whole file
            if self.size:
                self.target.restart()
            self._start_over()
        self._copy(response)
        if self.expected.size is not None and self.size < self.expected.size:
            raise _Cut(f"the answer ended at byte {self.size} of {self.expected.size}")
        response.raw.release_conn()  # read to the end: the connection may serve the next call

    def _extent(self, response: requests.Response) -> tuple[int, int | None]:
        """Where the answer's bytes start in the file, and the file's size if known."""
        if response.status_code == 200:
            length = response.headers.get("Content-Length", "")
            return 0, int(length) if length.isdigit() else None
        content_range = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if response.status_code != 206 or content_range is None:
            raise SErrorException(
                f"{response.url} answered {response.status_code} to streamToClient without a usable Content-Range",
                errno.EPROTO,
            )
        start = int(content_range[1])
        if start != self.size:
            raise SErrorException(f"{response.url} resumed at byte {start}, not at {self.size}", errno.EPROTO)
        return start, int(content_range[3])

    def _copy(self, response: requests.Response) -> None:
        write, xxh3_update = self.target.stream.write, self._xxh3.update
        while True:
            try:
                chunk = response.raw.read(CHUNK, decode_content=False)
            except u3.HTTPError as exc:
                failure = classify(exc, answer_started=True)
                raise _Cut(failure.reason, failure.errno) from None
            if not chunk:
                return
            write(chunk)
            xxh3_update(chunk)
            if self._adler32 is not None:
                self._adler32 = zlib.adler32(chunk, self._adler32)
            self.size += len(chunk)
            if self.progress is not None:
                self.progress(self.size, self.expected.size)

    def verified(self) -> dict[str, Any]:
        """The description of what arrived, if it is what was announced; ``SErrorException(EIO)`` if not."""
        adler32 = None if self._adler32 is None else f"{self._adler32:08x}"
        received = _Expected(self.size, self._xxh3.hexdigest(), adler32)
        # An ADLER32 first announced by a resumed answer came too late to be computed.
        announced = replace(self.expected, adler32=self.expected.adler32 if adler32 else None)
        mismatch = announced.merge(received)
        if mismatch:
            raise SErrorException(f"{self.file_id}: what arrived has {mismatch}; nothing was kept", errno.EIO)
        return {"Size": received.size, "xxh3": received.xxh3, "Checksum": received.adler32 or ""}


class _PathTarget:
    """A destination path: the bytes go to a temporary name beside it, renamed into place at the end."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        self._temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.part")
        self.stream: BinaryIO = open(self._temporary, "xb")

    def restart(self) -> None:
        self.stream.seek(0)
        self.stream.truncate()

    def commit(self) -> None:
        self.stream.close()
        os.replace(self._temporary, self.path)

    def discard(self) -> None:
        self.stream.close()
        try:
            os.unlink(self._temporary)
        except FileNotFoundError:
            pass


class _StreamTarget:
    """An open binary file, written from its position; cut back there on failure when it can seek."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._start = stream.tell() if stream.seekable() else None

    def restart(self) -> None:
        if self._start is None:
            raise SErrorException(
                "the service ignored the Range of a resumed download, and the destination cannot seek back",
                errno.ESPIPE,
            )
        self.discard()

    def commit(self) -> None:
        self.stream.flush()

    def discard(self) -> None:
        if self._start is None:
            return
        try:
            self.stream.seek(self._start)
            self.stream.truncate()
        except OSError:
            pass  # a device that refuses (/dev/full): the error that led here is the one to report


@contextmanager
def _landing(destination: LocalFile) -> Iterator[_Target]:
    """The target for a download: committed if the block ends normally, discarded otherwise."""
    target: _Target = _PathTarget(destination) if _is_path(destination) else _StreamTarget(destination)  # type: ignore[arg-type]
    try:
        yield target
        target.commit()
    except BaseException:
        target.discard()
        raise


class _RawBody(io.RawIOBase):
    """The body of a streamed answer as a file for ``tarfile``: a connection that breaks is an ``SErrorException``."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__()
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._response.raw.read(len(buffer), decode_content=False)
        except u3.HTTPError as exc:
            failure = classify(exc, answer_started=True)
            raise SErrorException(f"the bulk broke off: {failure.reason}", failure.errno) from None
        buffer[: len(data)] = data
        return len(data)


# -- uploads -------------------------------------------------------------------


class _SourceError(Exception):
    """Reading the file being sent failed; not a network error, so never retried elsewhere."""

    def __init__(self, reason: str, code: int = errno.EIO) -> None:
        super().__init__(reason)
        self.errno = code


class _UploadBody:
    """A file as a request body: sized, so that requests declares Content-Length; hashed while it is read.

    Iterated once per attempt: when a connection fails before the service
    took the request, the client moves on to the next URL and the body
    starts again from the beginning.
    """

    def __init__(self, stream: BinaryIO, progress: Progress | None) -> None:
        self._stream = stream
        self._progress = progress
        self._start = stream.tell()
        self.size = stream.seek(0, os.SEEK_END) - self._start
        stream.seek(self._start)
        self.xxh3 = xxhash.xxh3_64()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        self._stream.seek(self._start)
        self.xxh3.reset()
        sent = 0
        while sent < self.size:
            try:
                chunk = self._stream.read(min(CHUNK, self.size - sent))
            except OSError as exc:
                raise _SourceError(f"cannot read: {exc.strerror or exc}", exc.errno or errno.EIO) from None
            if not chunk:
                raise _SourceError(f"the file shrank to {sent} bytes while it was being sent")
            self.xxh3.update(chunk)
            sent += len(chunk)
            yield chunk
            if self._progress is not None:
                self._progress(sent, self.size)


def _check_stored(file_id: str, stored: dict[str, Any], body: _UploadBody) -> ReturnValue:
    """S_OK(stored) if the service stored the bytes that were sent."""
    sent = _Expected(body.size, body.xxh3.hexdigest())
    mismatch = sent.merge(_Expected(stored.get("Size"), stored.get("xxh3")))
    if mismatch:
        return S_ERROR(errno.EIO, f"{file_id}: the service stored {mismatch} (what was sent)")
    return S_OK(stored)


@contextmanager
def _opened(source: LocalFile) -> Iterator[BinaryIO]:
    """``source`` as an open binary file; a path is opened here and closed after."""
    if not _is_path(source):
        yield cast(BinaryIO, source)
        return
    with open(cast(str | os.PathLike[str], source), "rb") as stream:
        yield stream


def _is_path(local: LocalFile) -> bool:
    return isinstance(local, (str, os.PathLike))


def _name_of(local: LocalFile) -> str:
    return os.fspath(local) if _is_path(local) else str(getattr(local, "name", "the open file"))  # type: ignore[arg-type]


def _local_error(exc: OSError, local: LocalFile) -> ReturnValue:
    return S_ERROR(exc.errno or errno.EIO, f"{_name_of(local)}: {exc.strerror or exc}")
