"""``PUT <route>/stream/putFile/<name>``: a streamed upload into the caller's putFile area.

This is the route seproxy's own client uses instead of DIRAC's
whole-file-in-a-form ``streamFromClient``: the body goes to the cache as it
arrives, hashed on the way, checked against the declared size and
checksums, and committed only when complete.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import tornado.web

from seproxy import metrics
from seproxy.cache import Cache, Entry, NewEntry
from seproxy.errors import Refusal, failure
from seproxy.proxy.describe import describe
from seproxy.proxy.file_ids import PUT_AREA, parse_file_id
from seproxy.proxy.rights import check_may_upload
from seproxy.rpc.admission import AdmittingHandler, RequestError
from seproxy.rpc.context import ServiceContext
from seproxy.transfer import S_OK, SErrorException
from seproxy.transfer.checksum_headers import DIGEST_HEADER, XXH3_HEADER, parse_digest

T = TypeVar("T")

log = logging.getLogger("seproxy.streams")

# The streamed upload is streamFromClient (DIRAC's sendFile) without the form:
# the same [authorization] rule governs both.
UPLOAD_METHOD = "streamFromClient"
UPLOAD_RULE = ("authenticated",)
CHUNK = 1024 * 1024


class CacheUploadBody(AdmittingHandler):
    """A request body streamed into a new cache upload: what the streamed ``PUT`` and the door share.

    The subclass begins the upload (``begin``) once it has admitted the
    request, ends it with ``finish`` and says how a failure is answered
    (``answer_failure``). The writes run in threads one after the other (a
    lock orders them), so an abort never races a write. A refused request's
    body is read and dropped, so that the client gets the answer; a body that
    trickles in is cut with a 408 and what had arrived is dropped
    (``StreamedBodyHandler``).
    """

    BUFFER = 4 * CHUNK

    def initialize(self, service: ServiceContext) -> None:
        super().initialize(service)
        self._upload: NewEntry | None = None
        self._buffer = bytearray()
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None
        self._aborting: asyncio.Future[None] | None = None
        # What made a write fail mid-body (a full disk), answered at once if the answer could go out.
        self._failed_with: BaseException | None = None

    @property
    def _cache(self) -> Cache:
        shared = self.service.shared
        assert shared is not None and shared.cache is not None
        return shared.cache

    def answer_failure(self, exc: BaseException, *, before_body: bool) -> None:
        """Answer the request with what ``exc`` means (``seproxy.errors``); ``before_body``: the
        body is still to come (``refuse`` reads and drops it)."""
        raise NotImplementedError

    async def begin(self, owner: str, name: str) -> bool:
        """Open the upload ``name`` of ``owner`` for the body, sized by ``Content-Length`` and checked
        against the ``Digest`` and ``X-Checksum-XXH3`` given; False when refused (and answered)."""
        declared = self.request.headers.get("Content-Length")
        if declared is None or not declared.isdigit():
            refusal = (
                Refusal(411, errno.EINVAL, "a streamed upload needs a Content-Length header")
                if declared is None
                else Refusal(400, errno.EINVAL, f"Content-Length {declared[:40]!r} is not a number of bytes")
            )
            self.answer_failure(refusal, before_body=True)
            return False
        expected = parse_digest(self.request.headers.get(DIGEST_HEADER))
        if self.request.headers.get(XXH3_HEADER):
            expected["xxh3"] = self.request.headers[XXH3_HEADER]
        try:
            self._upload = await self._in_thread(
                self._cache.begin_upload, owner, name, expected_size=int(declared), expected_checksums=expected
            )
        except Exception as exc:
            self.answer_failure(exc, before_body=True)
            return False
        return True

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(None, lambda: function(*args, **kwargs))

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
            await self._in_thread(self._upload.writer.write, data)
        except Exception as exc:
            # Answer now rather than take the rest of a body that cannot be kept.
            self._failed_with = exc
            await self._abort()
            if not self._finished:
                self.answer_failure(exc, before_body=False)
            self.request.connection.close()  # type: ignore[union-attr]

    async def finish_upload(self) -> Entry | None:
        """The committed upload once the whole body arrived; None when it failed (and was answered)."""
        if self.body_done():
            return None
        if self._upload is None:
            if not self._finished:  # a write failed and its answer is not out yet
                self.answer_failure(self._failed_with or OSError(errno.EIO, "the upload was dropped"), before_body=False)
            return None
        try:
            await self._written()
            await self._flush_to_cache()
            if self._upload is None:
                return None
            upload, self._upload = self._upload, None
            return await self._in_thread(self._cache.commit, upload)
        except Exception as exc:
            self.answer_failure(exc, before_body=False)
            return None

    async def _abort(self) -> None:
        """Drop the partial upload; never raises (it runs after a failure, and as a task of its own)."""
        upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            await self._in_thread(self._cache.abort, upload)
        except Exception:
            log.exception("dropping the partial upload %s failed", self.path_args[0][:200])

    def access_detail(self) -> str:
        return f"bytes={self._received}"

    def on_connection_close(self) -> None:
        """A client gone mid-body: drop the partial upload."""
        super().on_connection_close()
        if self._upload is not None:
            self._aborting = asyncio.ensure_future(self._abort())


@tornado.web.stream_request_body
class StreamUploadHandler(CacheUploadBody):
    """Headers: ``Content-Length`` (required: free space is checked before
    the first byte), optional ``X-Checksum-XXH3`` and ``Digest: adler32=...``
    to be verified. Answer: JSON S_OK with the size and checksums, or S_ERROR.
    """

    SUPPORTED_METHODS = ("PUT",)

    async def prepare(self) -> None:
        self.begin_request()
        try:
            caller = self.admit(UPLOAD_METHOD, UPLOAD_RULE)
        except RequestError as exc:
            return self.refuse(exc.status, exc.result)
        try:
            check_may_upload(self.service.settings.storage_elements, caller)
        except SErrorException as exc:
            return self.refuse(403, exc.result)
        file_id = self.path_args[0]
        try:
            parse_file_id(file_id, PUT_AREA)
        except SErrorException as exc:
            return self.refuse(400, exc.result)
        await self.begin(caller.username, file_id)

    def answer_failure(self, exc: BaseException, *, before_body: bool) -> None:
        answer = failure(exc, "the upload", self.request_id)
        if answer.bug:
            log.error("upload %s failed", self.path_args[0][:200], exc_info=exc)
        if before_body:
            self.refuse(answer.status, answer.result)
        else:
            self.send_json(answer.status, answer.result)

    async def put(self, file_id: str) -> None:
        entry = await self.finish_upload()
        if entry is not None:
            self.send_json(200, S_OK({"FileId": file_id, **describe(entry)}))

    def access_subject(self) -> str:
        return f"upload={self.path_args[0][:200]!r}"
