"""The storage door: ``https://HOST:8443/lfn/<LFN>`` (and ``davs://``) for gfal, davix, xrdcp and curl.

Grid tools speak to storage doors, not to RPC services: GET to read, PUT to
write, PROPFIND to stat and list, with the user's proxy or a bearer token.
The door answers them with the cache in the middle. An LFN resolves to
storage elements as for ``prepareFileForHTTP`` (``lfns.first_replica`` over
the configured places); a read is staged on demand through the ``Stager``
(single-flight, so twenty concurrent copies of a cold file fetch it once)
and served with the side server's representation code (checksums,
validators, conditional and multi-range requests: one function each, not a
twin). A file not cached yet is streamed while it is staged
(``_serve_growing``): its first bytes leave before the staging ends.
Writes (PUT, DELETE, MKCOL) go to the first configured place, the one an
LFN is written to; every write drops any cached copy of that LFN so the
next read stages the new bytes.

Rights are those of the RPC methods: VO and write properties for
certificates (``check_rights``), the storage scopes for tokens
(``check_access``): storage.read to read and stat, storage.create for a new
file or directory, storage.modify to replace or delete. Every failure is
answered through ``seproxy.errors``, as plain text naming the problem.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import re
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote

import tornado.httputil
import tornado.iostream
import tornado.web

from seproxy import metrics
from seproxy.cache import Entry, Follower, Growing
from seproxy.config import LFN_FIELD
from seproxy.errors import Refusal, failure
from seproxy.http_side.body import FileSlice, Piece
from seproxy.http_side.conditional import Validators
from seproxy.http_side.digests import digest_headers
from seproxy.http_side.downloads import entry_representation, file_properties, propfind_answer, refusal, staleness
from seproxy.http_side.propfind import MULTISTATUS_TYPE, FileProperties, finite_depth_error
from seproxy.http_side.representation import OCTET_STREAM, Representation, framed, plan
from seproxy.http_side.request import MAX_BODY, RequestHead
from seproxy.http_side.response import Response, http_date
from seproxy.proxy.downloads import committed, send_followed
from seproxy.proxy.file_ids import PUT_AREA, file_id
from seproxy.proxy.lfns import NoReplica, first_replica, lfn_problem
from seproxy.proxy.resources import ProxyResources
from seproxy.proxy.rights import check_access, upload_access
from seproxy.proxy.staging import stale
from seproxy.proxy.uploads import CacheUploadBody
from seproxy.rpc.admission import RequestError
from seproxy.security.scopes import Access
from seproxy.storage.base import FileInfo, StorageElement, path_text_problem
from seproxy.transfer.checksum_headers import canonical_adler32

T = TypeVar("T")

log = logging.getLogger("seproxy.door")

# The [authorization] rule of every door request.
DOOR_METHOD = "door"
DOOR_RULE = ("authenticated",)
METHODS = ("GET", "HEAD", "PROPFIND", "PUT", "DELETE", "MKCOL", "OPTIONS")
_READ_BLOCK = 1 << 20
# Request headers whose answer needs the file's validators (ETag, its xxh3, is known only at the commit).
_CONDITIONS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range")


def door_routes(prefix: str) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    return [(re.escape(prefix) + r"(/.*)?", DoorHandler)]


def wants_revalidation(headers: tornado.httputil.HTTPHeaders) -> bool:
    """Whether a GET asks that a cached copy be compared with its source first: ``Cache-Control:
    no-cache`` or ``max-age=0`` (RFC 9111), or HTTP/1.0's ``Pragma: no-cache``."""
    directives = {
        part.strip(" \t").lower()
        for name in ("Cache-Control", "Pragma")
        for value in headers.get_list(name)
        for part in value.split(",")
    }
    return bool(directives & {"no-cache", "max-age=0"})


class _InfiniteDepth(Exception):
    """A PROPFIND of a whole directory tree, refused with ``propfind-finite-depth``."""


def _door_lfn(raw: str | None) -> str:
    """The LFN (file or directory) a door path names; ``ValueError`` naming what is wrong otherwise."""
    lfn = (raw or "/").rstrip("/") or "/"
    if lfn == "/":
        return lfn
    problem = lfn_problem(lfn) or path_text_problem(lfn)
    if problem:
        raise ValueError(f"{lfn[:200]!r} is not an LFN: {problem}")
    return lfn


@tornado.web.stream_request_body
class DoorHandler(CacheUploadBody):
    """One request to the door; GET, HEAD and PROPFIND read, PUT, DELETE and MKCOL write."""

    SUPPORTED_METHODS = METHODS

    @property
    def resources(self) -> ProxyResources:
        shared = self.service.shared
        assert isinstance(shared, ProxyResources)
        return shared

    async def prepare(self) -> None:
        self.begin_request()
        self._propfind_body = bytearray()
        self.lfn = "/"
        if self.request.method == "OPTIONS":
            return
        try:
            self.lfn = _door_lfn(self.path_args[0] if self.path_args else None)
            self.admit(DOOR_METHOD, DOOR_RULE)
        except RequestError as exc:
            return self.refuse(exc.status, exc.result)
        except ValueError as exc:
            return self.answer_failure(exc, before_body=True)
        if self.request.method == "PUT":
            try:
                self._target = await self._run(self._writable_file)
            except Exception as exc:
                return self.answer_failure(exc, before_body=True)
            await self.begin(self.caller.username, file_id(PUT_AREA, f"door-{self.request_id}"))

    # -- answers --------------------------------------------------------------

    def send_json(self, status: int, result: dict[str, Any], encoded: str | None = None) -> None:
        """Every refusal, whatever raised it, as a door answers: plain text naming the problem.

        Once the head of an answer is out, a failure can only cut the connection: the client
        sees a short body and never takes it for the whole file."""
        if self._headers_written:
            self.request.connection.close()  # type: ignore[union-attr]
            self.finish()
            return
        self.clear()
        self.set_header("X-Request-ID", self.request_id)
        self.set_status(status)
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="seproxy", charset="UTF-8"')
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status} {HTTPStatus(status).phrase}: {result['Message']}\n".encode())

    def answer_failure(self, exc: BaseException, *, before_body: bool) -> None:
        if isinstance(exc, NoReplica):
            exc = OSError(exc.code, f"{self.lfn}: {exc}")
        answer = failure(exc, f"door {self.request.method}", self.request_id)
        if answer.bug:
            log.error("door %s %s failed", self.request.method, self.lfn[:200], exc_info=exc)
        if before_body:
            self.refuse(answer.status, answer.result)
        elif not self._finished:
            self.send_json(answer.status, answer.result)

    async def _answer(self, work: Callable[[], Any]) -> None:
        """Run ``work`` in a thread (storage and cache block) and answer its failure if it fails."""
        if self.body_done():
            return
        try:
            await work()
        except tornado.iostream.StreamClosedError:
            pass  # the client went away mid-answer: nobody to tell
        except Exception as exc:
            self.answer_failure(exc, before_body=False)

    async def _run(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, function)

    def compute_etag(self) -> None:
        """No ETag of Tornado's own (a hash of what was written: an empty HEAD's, a part's): the
        door's validators are the cache's, and a file still being staged has none yet."""
        return None

    def _send_head(self, response: Response) -> None:
        self.set_status(response.status)
        for name, value in response.headers:
            self.set_header(name, value)

    async def _send(self, response: Response, pieces: list[Piece], follower: Follower | None = None) -> None:
        """Answer ``response`` with the body ``pieces``: read from the cached file, or, with a
        ``follower``, from the file being staged as its bytes arrive."""
        self._send_head(response)
        for piece in pieces if self.request.method != "HEAD" else []:
            if isinstance(piece, bytes):
                if piece:
                    self.write(piece)
                continue
            if follower is not None:
                await send_followed(self, follower, piece.offset, piece.length, "door", self.resources.cache)
                continue
            await self._send_cached(piece)
        self.finish()

    async def _send_cached(self, piece: FileSlice) -> None:
        """A slice of a cached file, read ahead: the next block is read (in a thread) while this one
        goes out, so the disk and the connection work at once."""
        descriptor = os.open(piece.path, os.O_RDONLY | os.O_CLOEXEC)
        offset, end = piece.offset, piece.offset + piece.length
        reading = self._read_block(descriptor, offset, end)
        try:
            while block := await reading:
                offset += len(block)
                reading = self._read_block(descriptor, offset, end)
                self.write(block)
                await self.flush()
                metrics.sent("door", len(block))
                metrics.count_served(self.resources.cache, {(piece.se, piece.growing): len(block)})
            if offset < end:
                raise OSError(errno.EIO, f"{self.lfn}: the cached file is shorter than its index says")
        finally:
            await asyncio.gather(reading, return_exceptions=True)  # no read may outlive the descriptor
            os.close(descriptor)

    def _read_block(self, descriptor: int, offset: int, end: int) -> asyncio.Future[bytes]:
        """The block at ``offset`` (empty at ``end``), read in a thread."""
        loop = asyncio.get_running_loop()
        if offset >= end:
            done: asyncio.Future[bytes] = loop.create_future()
            done.set_result(b"")
            return done
        return loop.run_in_executor(None, os.pread, descriptor, min(_READ_BLOCK, end - offset), offset)

    # -- the places of an LFN -------------------------------------------------

    def _places(self) -> list[tuple[str, str]]:
        return self.service.settings.lfn_places()

    def _primary(self, write: bool) -> tuple[str, StorageElement, str]:
        """Where writes go: the first configured place (element name, element, clean path)."""
        places = self._places()
        if not places:
            raise FileNotFoundError(errno.ENOENT, "no storage element is configured for LFNs")
        se, template = places[0]
        element = self.resources.stager.element(self.caller, se, write=write)
        return se, element, element.normalize(template.replace(LFN_FIELD, self.lfn))

    # -- reading ----------------------------------------------------------------

    async def get(self, _path: str | None = None) -> None:
        await self._answer(self._serve)

    async def head(self, _path: str | None = None) -> None:
        await self._answer(self._serve)

    async def _serve(self) -> None:
        stager, cache = self.resources.stager, self.resources.cache
        revalidate = wants_revalidation(self.request.headers)

        def stage(se: str, pfn: str) -> Entry | Growing:
            return stager.open(self.caller, se, pfn, name=self.lfn, revalidate=revalidate)

        _se, found, _errors = await self._run(lambda: first_replica(self._places(), self.lfn, stage, "door GET"))
        if isinstance(found, Growing):
            if await self._serve_growing(found):
                return
            entry_id = found.entry_id
        else:
            entry_id = found.id
        lease = await self._run(lambda: cache.acquire_read(entry_id))
        try:
            representation = entry_representation(cache, lease.entry)
            headers = {name.lower(): value for name, value in self.request.headers.get_all()}
            chosen = await self._run(lambda: plan(self.request.method or "GET", headers, representation))
            refused = refusal(chosen)
            if refused is not None:
                await self._send(refused, refused.body)
                return
            pieces = framed(chosen, [FileSlice(lease.path, 0, lease.entry.size, se=lease.entry.se)], representation)
            headers = {**chosen.headers, **staleness([lease.entry])}
            await self._send(Response(chosen.status, list(headers.items())), pieces)
        finally:
            await self._run(lambda: cache.release(lease))

    async def _serve_growing(self, growing: Growing) -> bool:
        """Answer from a file still being staged, as its bytes arrive; False when the request needs
        the whole file first (it is then committed, and answered from its entry).

        ``Content-Length`` is the size the source announced (a body of unknown size goes
        chunked); a staging that fails cuts the connection before that length, so a partial
        file never passes for a whole one. Checksum headers only when the source announced its
        ADLER32 before the body. No ETag and no conditional answers: the validators of a
        file (its xxh3) exist only once it is whole, so a conditional request waits for the
        commit, as do ranges and HEAD of a file whose size is still unknown.
        """
        headers = {name.lower(): value for name, value in self.request.headers.get_all()}
        method = self.request.method or "GET"
        stager = self.resources.stager
        with Follower(growing, stager.follow_deadline(growing), still_staged=stager.still_staged(growing)) as follower:
            size = follower.size
            if any(name in headers for name in _CONDITIONS) or (size is None and (method == "HEAD" or "range" in headers)):
                await committed(follower)
                return False
            answer = {}
            if growing.source_mtime is not None:
                answer["Last-Modified"] = http_date(int(growing.source_mtime))
            if growing.adler32 is not None:
                answer.update(digest_headers(headers, lambda _: str(growing.adler32), default=("adler32",), known=("adler32",)))
            if size is None:
                self._send_head(Response(200, [("Content-Type", OCTET_STREAM), *answer.items()]))
                await send_followed(self, follower, 0, None, "door", self.resources.cache)
                self.finish()
                return True
            representation = Representation(size, Validators("", growing.source_mtime or 0))
            chosen = plan(method, headers, representation)
            refused = refusal(chosen)
            if refused is not None:
                await self._send(refused, refused.body)
                return True
            pieces = framed(chosen, [FileSlice(growing.tmp_path, 0, size)], representation)
            chosen.headers.pop("ETag", None)
            chosen.headers.pop("Last-Modified", None)
            await self._send(Response(chosen.status, [*chosen.headers.items(), *answer.items()]), pieces, follower)
        return True

    async def propfind(self, _path: str | None = None) -> None:
        await self._answer(self._describe)

    async def data_received(self, chunk: bytes) -> None:
        if self.request.method != "PROPFIND":
            return await super().data_received(chunk)
        if self.keep_chunk(chunk):
            if len(self._propfind_body) + len(chunk) > MAX_BODY:
                return self.refuse(413, {"OK": False, "Message": f"a PROPFIND body is at most {MAX_BODY} bytes"})
            self._propfind_body += chunk

    async def _describe(self) -> None:
        depth = self.request.headers.get("Depth", "infinity").strip(" \t").lower()
        try:
            resources = await self._run(lambda: self._properties(listing=depth != "0", whole_tree=depth == "infinity"))
        except _InfiniteDepth as refused:
            body = finite_depth_error(str(refused))
            return await self._send(Response(403, [("Content-Type", MULTISTATUS_TYPE), ("Content-Length", str(len(body)))]), [body])
        headers = {name.lower(): value for name, value in self.request.headers.get_all()}
        head = RequestHead("PROPFIND", self.request.path, (1, 1), headers, body=bytes(self._propfind_body))
        answer = propfind_answer(head, resources)
        await self._send(answer, answer.body)

    def _properties(self, *, listing: bool, whole_tree: bool) -> list[tuple[str, FileProperties]]:
        """The LFN (and its children, when ``listing`` a directory) as the storage element tells.

        A directory's ``whole_tree`` (``Depth: infinity``, also what no ``Depth`` means) is refused,
        as RFC 4918 allows: one request must not walk a storage element."""

        def stat(se: str, pfn: str) -> tuple[StorageElement, FileInfo]:
            element = self.resources.stager.element(self.caller, se)
            path = element.normalize(pfn)
            check_access(se, self.caller, (Access.READ,), path)
            return element, element.stat(path)

        se, (element, info), _errors = first_replica(self._places(), self.lfn, stat, "door PROPFIND")
        if whole_tree and info.is_dir:
            raise _InfiniteDepth(f"{self.lfn} is a directory: PROPFIND it with Depth 0 or 1, not infinity")
        href = self.service.settings.door.prefix + quote(self.lfn, errors="surrogateescape")
        found = [(href + ("/" if info.is_dir and self.lfn != "/" else ""), self._info_properties(se, info))]
        if listing and info.is_dir:
            for child in element.listdir(info.path):
                name = posixpath.basename(child.path)
                found.append((href.rstrip("/") + "/" + quote(name, errors="surrogateescape"), self._info_properties(se, child)))
        return found

    def _info_properties(self, se: str, info: FileInfo) -> FileProperties:
        """A file's properties: from its cached copy while that is current (so ETag and checksums
        agree with GET), else from what the storage element told."""
        cached = None if info.is_dir else self.resources.cache.lookup(se, info.path)
        name = posixpath.basename(info.path) or "/"
        if cached is not None and not stale(cached, info):
            return file_properties(entry_representation(self.resources.cache, cached), [cached], name)
        modified = info.mtime or 0
        adler32 = canonical_adler32(info.checksums.get("adler32", ""))
        return FileProperties(
            size=info.size,
            last_modified=http_date(int(modified)),
            created=datetime.fromtimestamp(modified, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            etag="",
            content_type="httpd/unix-directory" if info.is_dir else "application/octet-stream",
            display_name=name,
            checksums=(lambda: f"adler32={adler32}") if adler32 else None,
            collection=info.is_dir,
        )

    # -- writing ----------------------------------------------------------------

    def _writable_file(self) -> tuple[str, StorageElement, str, bool]:
        """Where a PUT lands, and whether it replaces a file; refused before the body when it may not."""
        if self.lfn == "/":
            raise Refusal(405, errno.EISDIR, "/ is a directory: PUT a file below it")
        se, element, path = self._primary(write=True)
        try:
            existing: FileInfo | None = element.stat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and existing.is_dir:
            raise Refusal(409, errno.EISDIR, f"{self.lfn} is a directory")
        if existing is None:
            self._need_parent(element, path)
        scopes = self.caller.scopes
        if existing is not None and scopes is not None and not scopes.allows(Access.MODIFY, path):
            raise Refusal(409, errno.EEXIST, f"{self.lfn} exists: replacing it needs storage.modify; the token has {scopes.describe()}")
        check_access(se, self.caller, upload_access(existing is not None), path)
        return se, element, path, existing is not None

    def _need_parent(self, element: StorageElement, path: str) -> None:
        parent = posixpath.dirname(path)
        try:
            if not element.stat(parent).is_dir:
                raise Refusal(409, errno.ENOTDIR, f"the parent of {self.lfn} is not a directory")
        except FileNotFoundError:
            raise Refusal(409, errno.ENOENT, f"the parent directory of {self.lfn} does not exist: create it first (MKCOL)") from None

    async def put(self, _path: str | None = None) -> None:
        entry = await self.finish_upload()
        if entry is None:
            return
        se, element, path, replaced = self._target
        cache = self.resources.cache

        def push() -> None:
            try:
                with cache.open_read(entry.id) as lease:
                    element.upload(lease.path, path, checksums={"adler32": entry.adler32} if entry.adler32 else None)
            finally:
                cache.drop_source(se, path)  # the old copy is wrong now, and so is a partial write's
                cache.mark_uploaded(entry.id)
                cache.remove(entry.id, force=True)

        try:
            await self._run(push)
        except Exception as exc:
            return self.answer_failure(exc, before_body=False)
        self.set_status(204 if replaced else 201)
        self.set_header("Digest", f"adler32={entry.adler32}")
        self.finish()

    async def delete(self, _path: str | None = None) -> None:
        await self._answer(lambda: self._done(204, self._remove))

    async def _done(self, status: int, work: Callable[[], None]) -> None:
        """Run ``work`` in a thread, then answer ``status`` with no body."""
        await self._run(work)
        self.set_status(status)
        self.finish()

    def _remove(self) -> None:
        se, element, path = self._primary(write=True)
        check_access(se, self.caller, (Access.MODIFY,), path)
        directory = element.stat(path).is_dir
        try:
            if directory:
                element.rmdir(path)
            else:
                element.remove(path)
        finally:
            self.resources.cache.drop_source(se, path, tree=directory)

    async def mkcol(self, _path: str | None = None) -> None:
        await self._answer(lambda: self._done(201, self._make_directory))

    def _make_directory(self) -> None:
        se, element, path = self._primary(write=True)
        check_access(se, self.caller, (Access.CREATE, Access.MODIFY), path)
        if element.exists(path):
            raise Refusal(405, errno.EEXIST, f"{self.lfn} exists already")
        self._need_parent(element, path)
        element.mkdir(path)

    async def options(self, _path: str | None = None) -> None:
        self.set_header("DAV", "1")
        self.set_header("Allow", ", ".join(METHODS))
        self.set_header("Accept-Ranges", "bytes")
        self.finish()

    def access_subject(self) -> str:
        return f"door={self.request.method} lfn={self.lfn[:200]!r}"
