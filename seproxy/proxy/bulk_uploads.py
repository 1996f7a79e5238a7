"""``PUT <route>/stream/bulk/<bulk id>``: a tar stream of files into the caller's putFile area (``sendBulk``).

The archive is read as it arrives: Tornado hands the body over chunk by
chunk on the event loop, and a thread of the request's own unpacks it
(``bulks.receive_bulk``) from a ``BodyPipe`` that holds at most a few
chunks, so a fast client waits for the disk instead of filling memory. The
body may be chunked (a compressed archive has no length in advance). The
rights are those of ``sendFile``: the rule of ``streamFromClient``, and the
right to write to some storage element.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import io
import logging
import threading
from collections import deque
from typing import Any

import tornado.web

from seproxy.cache import Cache, Entry
from seproxy.errors import failure
from seproxy.proxy.bulks import parse_bulk_id, receive_bulk
from seproxy.proxy.describe import describe
from seproxy.proxy.file_ids import PUT_AREA
from seproxy.proxy.rights import check_may_upload
from seproxy.proxy.uploads import UPLOAD_METHOD, UPLOAD_RULE
from seproxy.rpc.admission import AdmittingHandler, RequestError
from seproxy.rpc.context import ServiceContext
from seproxy.transfer import S_OK, SErrorException

log = logging.getLogger("seproxy.streams")

# Body bytes waiting for the unpacking thread, at most.
PIPE_LIMIT = 4 * 1024 * 1024


class BodyPipe(io.RawIOBase):
    """Bytes pushed by the event loop (``put``, ``close``, ``cut``), read by one thread (``readinto``)."""

    def __init__(self, limit: int = PIPE_LIMIT) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._limit = limit
        self._ready = threading.Condition()
        self._room = asyncio.Event()
        self._ended = False
        self._cut: str | None = None
        self._reader_gone = False

    def readable(self) -> bool:
        return True

    async def put(self, data: bytes) -> None:
        """Hand ``data`` to the reader, once there is room (dropped if the reader is gone)."""
        while True:
            with self._ready:
                if self._reader_gone:
                    return
                if self._buffered < self._limit:
                    self._chunks.append(memoryview(data))
                    self._buffered += len(data)
                    self._ready.notify()
                    return
                self._room.clear()
            await self._room.wait()

    def close_body(self) -> None:
        """The body is all in."""
        with self._ready:
            self._ended = True
            self._ready.notify()

    def cut(self, why: str) -> None:
        """The body will never end: the reader gets ``OSError(why)``."""
        with self._ready:
            self._cut = why
            self._ready.notify()

    def reader_gone(self) -> None:
        """The reader stopped (done or failed): later bytes are dropped, a waiting ``put`` returns."""
        with self._ready:
            self._reader_gone = True
        self._loop.call_soon_threadsafe(self._room.set)

    def readinto(self, buffer: Any) -> int:
        with self._ready:
            while not self._chunks and not self._ended and self._cut is None:
                self._ready.wait()
            if self._cut is not None:
                raise OSError(errno.ECONNRESET, self._cut)
            if not self._chunks:
                return 0
            chunk = self._chunks[0]
            count = min(len(buffer), len(chunk))
            buffer[:count] = chunk[:count]
            if count == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[count:]
            self._buffered -= count
        self._loop.call_soon_threadsafe(self._room.set)
        return count


@tornado.web.stream_request_body
class BulkUploadHandler(AdmittingHandler):
    """Answer: JSON S_OK({"BulkId", "Files": {name: description}}) once every file is in, or S_ERROR."""

    SUPPORTED_METHODS = ("PUT",)

    def initialize(self, service: ServiceContext) -> None:
        super().initialize(service)
        self._pipe: BodyPipe | None = None
        self._outcome: asyncio.Future[dict[str, Entry]] | None = None

    @property
    def _cache(self) -> Cache:
        shared = self.service.shared
        assert shared is not None and shared.cache is not None
        return shared.cache

    def prepare(self) -> None:
        self.begin_request()
        bulk_id = self.path_args[0]
        try:
            caller = self.admit(UPLOAD_METHOD, UPLOAD_RULE)
            check_may_upload(self.service.settings.storage_elements, caller)
        except RequestError as exc:
            return self.refuse(exc.status, exc.result)
        except SErrorException as exc:
            return self.refuse(403, exc.result)
        try:
            parse_bulk_id(bulk_id, (PUT_AREA,))
        except SErrorException as exc:
            return self.refuse(400, exc.result)
        pipe = self._pipe = BodyPipe()
        done: concurrent.futures.Future[dict[str, Entry]] = concurrent.futures.Future()
        self._outcome = asyncio.wrap_future(done)
        # A request that ends early (a client gone) never awaits it: its failure is no news then.
        self._outcome.add_done_callback(lambda outcome: outcome.cancelled() or outcome.exception())

        def unpack() -> None:
            try:
                stream = io.BufferedReader(pipe, 256 * 1024)  # tarfile reads 512-byte headers: not one lock each
                done.set_result(receive_bulk(self._cache, caller.username, bulk_id, stream, self.request_id))
            except BaseException as exc:  # answered (or logged as a bug) by put()
                done.set_exception(exc)
            finally:
                pipe.reader_gone()

        threading.Thread(target=unpack, name=f"bulk-{self.request_id}", daemon=True).start()

    async def data_received(self, chunk: bytes) -> None:
        if not self.keep_chunk(chunk) or self._pipe is None:
            return
        await self._pipe.put(chunk)

    async def put(self, bulk_id: str) -> None:
        if self.body_done() or self._pipe is None or self._outcome is None:
            return
        self._pipe.close_body()
        try:
            files = await self._outcome
        except Exception as exc:
            answer = failure(exc, "the bulk upload", self.request_id)
            if answer.bug:
                log.error("bulk upload %s failed", bulk_id[:200], exc_info=exc)
            self.send_json(answer.status, answer.result)
            return
        described = {name: describe(entry) for name, entry in files.items()}
        self.send_json(200, S_OK({"BulkId": bulk_id, "Files": described}))

    def access_subject(self) -> str:
        return f"bulk={self.path_args[0][:200]!r}"

    def access_detail(self) -> str:
        return f"bytes={self._received}"

    def on_finish(self) -> None:
        """A request answered before its body ended (refused, too slow): the unpacking stops too."""
        super().on_finish()
        if self._pipe is not None:
            self._pipe.cut("the request ended before the bulk did")

    def on_connection_close(self) -> None:
        """A client gone mid-body: the unpacking stops and removes what it had taken."""
        super().on_connection_close()
        if self._pipe is not None:
            self._pipe.cut("the client closed the connection before the end of the bulk")
