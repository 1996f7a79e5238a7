"""DIRAC's ``sendFile`` read as it arrives: the file inside the form, decoded straight into the cache.

DIRAC's client sends ``streamFromClient`` with ``args`` =
``["<fileId>", "<token>", <fileSize>, {"__dCls": "b64", "obj": "<base64>"}]``:
the whole file, base64-encoded, inside one form field. Held whole, a 1 GiB
file would be several GiB of server memory; here the field's head is
checked (file id, size against the cap and the quota) before the first byte
of the file, and the base64 is decoded chunk by chunk into a cache upload,
so the server holds a few MiB whatever the file's size.
"""

from __future__ import annotations

import asyncio
import binascii
import errno
import json
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from seproxy.cache import Cache, NewEntry
from seproxy.proxy.file_ids import PUT_AREA, file_id, parse_file_id
from seproxy.rpc.admission import RequestError
from seproxy.transfer import S_ERROR, SErrorException

T = TypeVar("T")

log = logging.getLogger("seproxy.streams")

# The args field up to the first character of the file's base64 (JSON as DIRAC's encoder writes it).
_STRING = r'"(?:[^"\\]|\\.)*"'
_HEAD = re.compile(rf'\s*\[\s*({_STRING})\s*,\s*({_STRING})\s*,\s*(\d+)\s*,\s*\{{\s*"__dCls"\s*:\s*"b64"\s*,\s*"obj"\s*:\s*"')
_TAIL = re.compile(r'"\s*\}\s*\]\s*')
# The head is a file id and a token: more than this before the base64 starts is no sendFile.
HEAD_LIMIT = 64 * 1024
SHAPE = '[fileId, token, fileSize, {"__dCls": "b64", "obj": BASE64}]'
# Decoded bytes gathered before they are written to the cache.
WRITE_SIZE = 4 * 1024 * 1024


class FormFile:
    """The ``args`` field of a ``streamFromClient`` form, fed its decoded bytes as they arrive.

    ``head`` is (file id, token, size) once read, before any byte of the
    file; ``pending()`` decodes the file's bytes to write; ``args()`` is the
    field as the method then sees it, with the file's bytes left out. A
    field of any other shape (or whose file the caller gives up on with
    ``keep()``) is kept as text, up to ``keep_limit`` bytes, for the method's
    own checks to answer.
    """

    def __init__(self, keep_limit: int) -> None:
        self.head: tuple[str, str, int] | None = None
        self._keep_limit = keep_limit
        self._head = bytearray()
        self._kept: bytearray | None = None  # the field as text, when it is not read as a file
        self._b64 = bytearray()  # base64 not decoded yet
        self._tail: bytearray | None = None  # after the closing quote of the base64

    def feed(self, data: bytes) -> None:
        if self._kept is not None:
            self._kept += data
            if len(self._kept) > self._keep_limit:
                raise RequestError(413, S_ERROR(errno.EFBIG, f"form field 'args' is over {self._keep_limit} bytes"))
        elif self._tail is not None:
            self._tail += data
            if len(self._tail) > 64:
                raise SErrorException(f"streamFromClient: args must be {SHAPE}", errno=errno.EINVAL)
        elif self.head is None:
            self._head += data
            match = _HEAD.match(self._head.decode("utf-8", "replace"))
            if match is not None:
                self.head = (json.loads(match[1]), json.loads(match[2]), int(match[3]))
                rest = bytes(self._head[len(match[0].encode()) :])
                self._head = self._head[: len(match[0].encode())]
                self._base64(rest)
            elif len(self._head) > HEAD_LIMIT:
                self.keep()
        else:
            self._base64(data)

    def _base64(self, data: bytes) -> None:
        end = data.find(b'"')
        self._b64 += data if end < 0 else data[:end]
        if end >= 0:
            self._tail = bytearray(data[end:])

    def keep(self) -> None:
        """Take the field as text after all (nothing of it was decoded yet)."""
        self._kept = self._head + self._b64 + (self._tail or b"")
        self._head, self._b64, self._tail, self.head = bytearray(), bytearray(), None, None

    def pending(self, final: bool = False) -> bytes:
        """The file's bytes decoded so far, in blocks of about ``WRITE_SIZE`` (all of them at the end)."""
        if self.head is None or (len(self._b64) < WRITE_SIZE and not final):
            return b""
        usable = len(self._b64) if final else len(self._b64) - len(self._b64) % 4
        text, self._b64 = bytes(self._b64[:usable]), self._b64[usable:]
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error as exc:
            raise SErrorException(f"streamFromClient: the file's base64 is broken: {exc}", errno=errno.EINVAL) from None

    def args(self) -> str:
        """The field once all in (the file's bytes left out when they went to the cache)."""
        if self.head is None:
            return (self._kept if self._kept is not None else self._head).decode("utf-8", "replace")
        if self._tail is None or not _TAIL.fullmatch(self._tail.decode("utf-8", "replace")):
            raise SErrorException(f"streamFromClient: args must be {SHAPE}", errno=errno.EINVAL)
        return json.dumps([*self.head, {"__dCls": "b64", "obj": ""}])


class FormUpload:
    """DIRAC's ``sendFile`` as an RPC handler's ``FieldSink``: ``args`` decoded into a cache upload.

    The writes run in threads, one after the other, each awaited before the
    next chunk of the body is read (the back-pressure). The method
    ``streamFromClient`` then ``take()``s the upload and commits it; anything
    else ends it with ``abort()``.
    """

    def __init__(self, cache: Cache, owner: str, cap: int, keep_limit: int) -> None:
        self._file = FormFile(keep_limit)
        self._cache = cache
        self._owner = owner
        self._cap = cap
        self._upload: NewEntry | None = None

    def feed(self, data: bytes) -> None:
        self._file.feed(data)

    async def flush(self) -> None:
        await self._write(b"")
        await self._write(self._file.pending())

    async def finish(self) -> str:
        await self._write(b"")
        await self._write(self._file.pending(final=True))
        return self._file.args()

    async def _write(self, data: bytes) -> None:
        if self._file.head is None:
            return
        if self._upload is None:
            given_id, _, size = self._file.head
            try:
                name = file_id(PUT_AREA, parse_file_id(given_id, PUT_AREA))
            except SErrorException:
                self._file.keep()  # the method refuses the file id, in the answer it would give anyway
                return
            self._upload = await _in_thread(self._begin, name, size)
        if data:
            await _in_thread(self._upload.writer.write, data)

    def _begin(self, name: str, size: int) -> NewEntry:
        if size > self._cap:
            raise RequestError(
                413,
                S_ERROR(
                    errno.EFBIG,
                    f"a file of {size} bytes is over this service's limit of {self._cap} bytes for files sent "
                    "inside the form (service.max_form_upload): send it with seproxy's TransferClient, which "
                    "streams it",
                ),
            )
        return self._cache.begin_upload(self._owner, name, expected_size=size)

    def take(self) -> NewEntry | None:
        """The upload, for the method to commit (None if the field held no file yet)."""
        upload, self._upload = self._upload, None
        return upload

    async def abort(self) -> None:
        upload = self.take()
        if upload is None:
            return
        try:
            await _in_thread(self._cache.abort, upload)
        except Exception:
            log.exception("dropping the partial upload sent inside a form failed")


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)
