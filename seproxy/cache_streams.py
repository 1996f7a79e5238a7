"""Bytes between the cache and HTTPS clients, in chunks, never a whole file in memory.

Out: ``send_cached_file`` writes a cached file (or one ``Range`` of it) to a
Tornado response, flushing after each chunk so a slow client slows the
reads (back-pressure) instead of filling the service's memory.

In: ``StreamUploadHandler`` takes ``PUT <route>/stream/putFile/<name>``, the
route seproxy's own client uses instead of DIRAC's whole-file-in-a-form
``streamFromClient``: the body goes to the cache as it arrives, hashed on
the way, checked against the declared size and checksums, and committed
only when complete.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from typing import Any

import aiofiles
import tornado.iostream
import tornado.web

from seproxy import logs, metrics
from seproxy.byte_range import RangeNotSatisfiable, parse_range
from seproxy.cache import Entry, VerificationError
from seproxy.element_rights import check_may_upload
from seproxy.registry import Caller
from seproxy.file_ids import PUT_AREA, parse_file_id
from seproxy.rpc.authorization import authorize
from seproxy.rpc.handler import ServiceContext
from seproxy.rpc.identity import CredentialsRefused, caller_of
from seproxy.rpc.request_body import StreamedBodyHandler
from seproxy.transfer import S_ERROR, S_OK, SErrorException
from seproxy.transfer.checksum_headers import DIGEST_HEADER, XXH3_HEADER, format_digest, parse_digest

log = logging.getLogger("seproxy.streams")

CHUNK = 1024 * 1024


def checksum_headers(entry: Entry) -> dict[str, str]:
    headers = {XXH3_HEADER: entry.xxh3, "ETag": f'"{entry.xxh3}"'}
    if entry.adler32:
        headers[DIGEST_HEADER] = format_digest(entry.adler32)
    return headers


class RangeRefused(SErrorException):
    """A ``Range`` the file cannot satisfy: the caller answers ``status`` with this S_ERROR."""

    status = 416


async def send_cached_file(handler: tornado.web.RequestHandler, entry: Entry, path: Any) -> None:
    """Answer with the file at ``path`` (the committed bytes of ``entry``), honouring ``Range``.

    Raises ``RangeRefused`` (errno EINVAL, status 416, ``Content-Range`` set)
    for an unsatisfiable range. Once the first byte is out an error can only
    cut the connection, so the client sees a short body and never takes it
    for the whole file.
    """
    try:
        wanted = parse_range(handler.request.headers.get("Range"), entry.size)
    except RangeNotSatisfiable as exc:
        handler.set_header("Content-Range", f"bytes */{entry.size}")
        raise RangeRefused(str(exc), errno=errno.EINVAL) from None
    start, length = (wanted.start, wanted.length) if wanted else (0, entry.size)
    if wanted:
        handler.set_status(206)
        handler.set_header("Content-Range", wanted.content_range(entry.size))
    handler.set_header("Content-Type", "application/octet-stream")
    handler.set_header("Accept-Ranges", "bytes")
    handler.set_header("Content-Length", str(length))
    for name, value in checksum_headers(entry).items():
        handler.set_header(name, value)
    sent = metrics.BYTES_SENT.labels("stream")
    try:
        async with aiofiles.open(path, "rb") as stream:
            await stream.seek(start)
            with metrics.ACTIVE_TRANSFERS.labels("stream").track_inprogress():
                while length:
                    chunk = await stream.read(min(CHUNK, length))
                    if not chunk:
                        raise OSError(errno.EIO, f"cache file {entry.id} is shorter than its index says")
                    length -= len(chunk)
                    handler.write(chunk)
                    await handler.flush()
                    sent.inc(len(chunk))
    except tornado.iostream.StreamClosedError:
        # The client went away: end the request quietly (nothing can reach it), and the caller releases the file.
        log.info("the client left the stream of cache entry %s with %d bytes unsent", entry.id, length)
        handler.finish()
        return
    except Exception:
        # The head said 200 and a length: cutting the connection is the only way to tell the client.
        log.exception("stream of cache entry %s failed mid-way; cutting the connection", entry.id)
        handler.request.connection.close()  # type: ignore[union-attr]
    handler.finish()


# The streamed upload is streamFromClient (DIRAC's sendFile) without the form:
# the same [authorization] rule governs both.
UPLOAD_METHOD = "streamFromClient"
UPLOAD_RULE = ("authenticated",)


@tornado.web.stream_request_body
class StreamUploadHandler(StreamedBodyHandler):
    """``PUT <route>/stream/putFile/<name>``: a streamed upload into the caller's putFile area.

    Headers: ``Content-Length`` (required: free space is checked before the
    first byte), optional ``X-Checksum-XXH3`` and ``Digest: adler32=...`` to be
    verified. Answer: JSON S_OK with the size and checksums, or S_ERROR. The
    writes run in threads one after the other (a lock orders them), so an
    abort never races a write. A refused upload's body is read and dropped,
    so that the client gets the answer; a body that trickles in is cut with a
    408 and what had arrived is dropped (``StreamedBodyHandler``).
    """

    SUPPORTED_METHODS = ("PUT",)
    BUFFER = 4 * CHUNK

    def initialize(self, service: ServiceContext) -> None:  # type: ignore[override]
        self.service = service
        self._upload: Any = None
        self._writer: Any = None
        self._buffer = bytearray()
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None
        self.guard_body(service.settings.service.idle_connection_timeout)
        self.request_id = secrets.token_hex(6)
        self._caller = Caller()
        self._started = time.monotonic()

    async def prepare(self) -> None:
        logs.request_id.set(self.request_id)
        self.set_header("X-Request-ID", self.request_id)
        try:
            caller = self._caller = caller_of(self.request, self.service.registry, self.service.tokens)
        except CredentialsRefused as exc:
            return self.refuse(401, S_ERROR(errno.EACCES, str(exc)))
        rule = self.service.settings.authorization.get(UPLOAD_METHOD, UPLOAD_RULE)
        decision = authorize(rule, caller, UPLOAD_METHOD)
        if not decision.allowed:
            return self.refuse(decision.status, S_ERROR(errno.EACCES, decision.reason))
        try:
            check_may_upload(self.service.settings.storage_elements, caller)
        except SErrorException as exc:
            return self.refuse(403, exc.result)
        file_id = self.path_args[0]
        try:
            parse_file_id(file_id, PUT_AREA)
        except SErrorException as exc:
            return self.refuse(400, exc.result)
        declared = self.request.headers.get("Content-Length", "")
        if not declared.isdigit():
            return self.refuse(411, S_ERROR(errno.EINVAL, "a streamed upload needs a Content-Length header"))
        expected = parse_digest(self.request.headers.get(DIGEST_HEADER))
        if self.request.headers.get(XXH3_HEADER):
            expected["xxh3"] = self.request.headers[XXH3_HEADER]
        upload = self.service.shared.cache.receive_upload(
            caller.username, file_id, expected_size=int(declared), expected_checksums=expected
        )
        try:
            self._writer = await self._in_thread(upload.__enter__)
        except (OSError, ValueError) as exc:
            return self.refuse(*_result(exc))
        self._upload = upload

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def data_received(self, chunk: bytes) -> None:
        if not self.keep_chunk(chunk) or self._upload is None:
            return  # refused (the body is dropped), or failed and answered
        self._buffer += chunk
        metrics.BYTES_RECEIVED.labels("upload").inc(len(chunk))
        if len(self._buffer) >= self.BUFFER:
            # One write in flight while the next buffer fills: disk and network
            # overlap, and memory stays at two buffers (awaiting is the back-pressure).
            await self._written()
            self._writing = asyncio.ensure_future(self._flush_to_cache())

    async def _written(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _flush_to_cache(self) -> None:
        if self._upload is None:
            return  # a write before this one failed, was answered and dropped the upload
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            await self._in_thread(self._writer.write, data)
        except (OSError, ValueError) as exc:
            # Answer now rather than take the rest of a body that cannot be kept.
            await self._abort(exc)
            self.send_json(*_result(exc))
            self.request.connection.close()  # type: ignore[union-attr]

    async def put(self, file_id: str) -> None:
        if self.body_done():
            return
        if self._upload is None:
            return
        try:
            await self._written()
            await self._flush_to_cache()
            if self._upload is None:
                return
            upload, self._upload = self._upload, None
            await self._in_thread(upload.__exit__, None, None, None)
        except (OSError, ValueError) as exc:
            self.send_json(*_result(exc))
            return
        entry = self._writer.entry
        described = {"FileId": file_id, "Size": entry.size, "xxh3": entry.xxh3, "Checksum": entry.adler32}
        self.send_json(200, S_OK(described))

    async def _abort(self, failure: BaseException) -> None:
        upload, self._upload = self._upload, None
        if upload is not None:
            await self._in_thread(upload.__exit__, type(failure), failure, None)

    def on_finish(self) -> None:
        super().on_finish()
        # One line per upload, as the RPC calls have: who sent what, and how it ended.
        log.info(
            "%s user=%s dn=%r upload=%r status=%d bytes=%d %.1fms",
            self.request.remote_ip, self._caller.username, self._caller.dn, self.path_args[0][:200],
            self._status_code, self._received, (time.monotonic() - self._started) * 1000,
        )  # fmt: skip

    def on_connection_close(self) -> None:
        """A client gone mid-body: drop the partial upload."""
        super().on_connection_close()
        if self._upload is not None:
            gone = ConnectionAbortedError("the client closed the connection before the upload ended")
            asyncio.ensure_future(self._abort(gone))


def _result(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and S_ERROR for a failed upload: 507 full disk, 400 bad data, 500 otherwise."""
    if isinstance(exc, VerificationError):
        return 400, S_ERROR(errno.EIO, f"upload refused: {exc}")
    if isinstance(exc, ValueError):
        return 400, S_ERROR(errno.EINVAL, str(exc))
    code = getattr(exc, "errno", None) or errno.EIO
    return (507 if code == errno.ENOSPC else 500), S_ERROR(code, str(getattr(exc, "strerror", None) or exc))
