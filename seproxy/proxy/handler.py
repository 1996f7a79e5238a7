"""The StorageElementProxy service: what stands between users and storage elements.

The two-step dances of DIRAC's proxy, with the cache in the middle:

- download: ``prepareFile(se, pfn)`` stages the file into the cache, then
  ``streamToClient("getFile/<name>")`` (DIRAC's ``receiveFile``) streams it;
- upload: the client sends ``putFile/<name>`` (``streamFromClient``, or the
  streamed ``PUT`` route), then ``uploadFile(se, pfn)`` pushes it to the
  storage element and releases it;
- ``callProxyMethod(se, name, args, kwargs)``: one of a fixed list of
  storage operations;
- bulks (``bulks``): several files as one tar stream, ``bulkToClient``
  (DIRAC's ``receiveBulk``), ``listBulk``, and the streamed ``PUT`` of
  ``sendBulk``.

File ids live in a namespace per user: Alice's ``getFile/a.dat`` is not
Bob's. Reading needs a registered user whose VO may use the element; writing
and removing also need one of the element's ``write_properties``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import posixpath
from typing import Any, ClassVar
from urllib.parse import urlsplit

import tornado.web

from seproxy.config import Settings
from seproxy.proxy.bulk_uploads import BulkUploadHandler
from seproxy.proxy.bulks import bulk_files, tar_chunks
from seproxy.proxy.describe import describe
from seproxy.proxy.door import door_routes
from seproxy.proxy.downloads import send_cached_file, send_chunks
from seproxy.proxy.file_ids import GET_AREA, PUT_AREA, file_id, parse_file_id
from seproxy.proxy.form_upload import FormUpload
from seproxy.proxy.lfns import prepare_for_http
from seproxy.proxy.operations import OPERATIONS, options_of, paths_of, run_bulk
from seproxy.proxy.resources import ProxyResources
from seproxy.proxy.rights import check_access, check_may_upload, upload_access
from seproxy.proxy.uploads import UPLOAD_METHOD, UPLOAD_RULE, StreamUploadHandler
from seproxy.rpc.admission import RequestError
from seproxy.rpc.executor import check_cancelled
from seproxy.rpc.form import FormReader
from seproxy.rpc.handler import FieldSink, RPCHandler, ServiceContext
from seproxy.transfer import S_ERROR, S_OK, SErrorException
from seproxy.transfer.tar_format import COMPRESSIONS

READ = ("authenticated",)


class StorageElementProxyHandler(RPCHandler):
    """DataManagement/StorageElementProxy: the exported methods; the work is done by ``ProxyResources``."""

    auth_prepareFile: ClassVar = READ
    types_prepareFile: ClassVar = (str, str)
    auth_streamToClient: ClassVar = READ
    types_streamToClient: ClassVar = (str, str)
    auth_streamFromClient: ClassVar = UPLOAD_RULE
    types_streamFromClient: ClassVar = (str, str, int, bytes)
    auth_uploadFile: ClassVar = READ
    types_uploadFile: ClassVar = (str, str)
    auth_callProxyMethod: ClassVar = READ
    types_callProxyMethod: ClassVar = (str, str, list, dict)
    auth_prepareFileForHTTP: ClassVar = READ
    types_prepareFileForHTTP: ClassVar = ((str, list),)
    auth_listBulk: ClassVar = READ
    types_listBulk: ClassVar = (str, str)
    auth_bulkToClient: ClassVar = READ
    types_bulkToClient: ClassVar = (str, str, str)

    # DIRAC's sendFile from a caller who may upload: the file goes to the cache as the form arrives.
    # Whether they may is decided when a body could need it (None: not yet), not for every call.
    _may_upload: bool | None = None
    _form_upload: FormUpload | None = None

    @classmethod
    def initializeHandler(cls, service: ServiceContext) -> ProxyResources:
        host = urlsplit(service.url).hostname or "localhost"
        return ProxyResources.open(service.settings, service.ca_dir, host, lambda: service.registry)

    @classmethod
    def extra_routes(cls) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        return [(r"/stream/bulk/(.*)", BulkUploadHandler), (r"/stream/(.*)", StreamUploadHandler)]

    @classmethod
    def absolute_routes(cls, settings: Settings) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        return door_routes(settings.door.prefix) if settings.door.enabled else []

    def _upload_allowed(self) -> bool:
        """Whether this caller may send a file with DIRAC's sendFile (decided once per request)."""
        if self._may_upload is None:
            try:
                caller = self.admit(UPLOAD_METHOD, self.auth_streamFromClient)
                check_may_upload(self.service.settings.storage_elements, caller)
                self._may_upload = True
            except (RequestError, SErrorException):
                self._may_upload = False
        return self._may_upload

    def streamed_body_limit(self) -> int:
        limits = self.service.settings.service
        sendfile_body = limits.max_form_size + 2 * limits.max_form_upload  # base64 and its %-escapes: under twice the file
        if not self._upload_allowed():
            # A known caller who may not upload still gets the refusal of a sendFile that large: its body is
            # read and dropped (at the body deadline's rate, or cut with a 408), never kept.
            self.drain_limit = max(self.drain_limit, sendfile_body)
            return 0
        return sendfile_body

    routed_fields = frozenset({"args"})  # DIRAC's sendFile sends the file in its args

    def route_field(self, name: str, form: FormReader) -> FieldSink | None:
        if form.field("method") != UPLOAD_METHOD or not self._upload_allowed():
            return None
        limits = self.service.settings.service
        self._form_upload = FormUpload(self.resources.cache, self.caller.username, limits.max_form_upload, limits.max_form_size)
        return self._form_upload

    @property
    def resources(self) -> ProxyResources:
        shared = self.service.shared
        assert isinstance(shared, ProxyResources)
        return shared

    # -- the exported methods ------------------------------------------------

    def export_prepareFile(self, se: str, pfn: str) -> dict[str, Any]:
        """Stage a file into the cache; ``receiveFile(dest, "getFile/<name>")`` then fetches it."""
        entry = self.resources.stager.stage(self.caller, se, pfn)
        assert entry.source_path is not None
        name = file_id(GET_AREA, posixpath.basename(entry.source_path))
        self.resources.cache.set_alias(self.caller.username, name, entry.id)
        return S_OK({"FileId": name, **describe(entry)})

    async def export_streamToClient(self, fileId: str, token: str) -> dict[str, Any] | None:
        """DIRAC's ``receiveFile``: the bytes of a prepared file (``Range`` resumes)."""
        assert self.call is not None
        if not self.call.raw_content:
            return S_ERROR(errno.EINVAL, "streamToClient sends raw bytes: call it with rawContent=True")
        cache = self.resources.cache
        entry = cache.resolve_alias(self.caller.username, file_id(GET_AREA, parse_file_id(fileId, GET_AREA)))
        if entry is None:
            return S_ERROR(errno.ENOENT, f"no file {fileId[:120]!r} prepared for you: call prepareFile first")
        # A read lease is a write transaction on the index: never on the event loop.
        loop = asyncio.get_running_loop()
        lease = await loop.run_in_executor(None, cache.acquire_read, entry.id)
        try:
            await send_cached_file(self, lease.entry, lease.path, cache)
        finally:
            await loop.run_in_executor(None, cache.release, lease)
        return None

    def export_streamFromClient(self, fileId: str, token: str, fileSize: int, data: bytes) -> dict[str, Any]:
        """DIRAC's ``sendFile``: the whole file inside the form; from a caller who may upload it is
        already in the cache (``FormUpload``), only to be verified and kept."""
        name = file_id(PUT_AREA, parse_file_id(fileId, PUT_AREA))
        check_may_upload(self.service.settings.storage_elements, self.caller)
        received = self._form_upload.take() if self._form_upload is not None else None
        if received is not None:
            if received.writer.written != fileSize:
                self.resources.cache.abort(received)
                return S_ERROR(errno.EINVAL, f"fileSize is {fileSize} but {received.writer.written} bytes were sent")
            return S_OK({"FileId": name, **describe(self.resources.cache.commit(received))})
        if fileSize != len(data):
            return S_ERROR(errno.EINVAL, f"fileSize is {fileSize} but {len(data)} bytes were sent")
        with self.resources.cache.receive_upload(self.caller.username, name, expected_size=fileSize) as writer:
            writer.write(data)
        assert writer.entry is not None
        return S_OK({"FileId": name, **describe(writer.entry)})

    def export_listBulk(self, bulkId: str, token: str) -> dict[str, Any]:
        """DIRAC's ``listBulk``: the names of the files of a bulk (see ``bulks`` for bulk ids)."""
        return S_OK(sorted(bulk_files(self.resources.cache, self.caller.username, bulkId)))

    async def export_bulkToClient(self, bulkId: str, token: str, compress: str) -> dict[str, Any] | None:
        """DIRAC's ``receiveBulk``: the getFile files of a bulk as one tar stream ('', 'gz' or 'bz2')."""
        assert self.call is not None
        if not self.call.raw_content:
            return S_ERROR(errno.EINVAL, "bulkToClient sends raw bytes: call it with rawContent=True")
        if compress not in COMPRESSIONS:
            return S_ERROR(errno.EINVAL, f"compression {compress[:20]!r}: use '', 'gz' or 'bz2'")
        cache = self.resources.cache
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(None, bulk_files, cache, self.caller.username, bulkId, (GET_AREA,))
        leases = []
        try:
            for entry in files.values():  # the files stay while they are read, as for streamToClient
                leases.append(await loop.run_in_executor(None, cache.acquire_read, entry.id))
            await send_chunks(self, tar_chunks([(name, lease.entry) for name, lease in zip(files, leases)], compress, cache))
        finally:
            for lease in leases:
                await loop.run_in_executor(None, cache.release, lease)
        return None

    def export_uploadFile(self, se: str, pfn: str) -> dict[str, Any]:
        """Push ``putFile/<basename of pfn>`` to ``se`` at ``pfn``, verify it, release it."""
        element = self.resources.stager.element(self.caller, se, write=True)
        path = element.normalize(pfn)
        if self.caller.scopes is not None:  # storage.create may not replace a file: only scoped callers look
            check_access(se, self.caller, upload_access(element.exists(path)), path)
        name = file_id(PUT_AREA, posixpath.basename(path))
        cache = self.resources.cache
        entry = cache.resolve_alias(self.caller.username, name)
        if entry is None or not entry.upload_pending:
            return S_ERROR(errno.ENOENT, f"no file {name!r} waiting to be uploaded: send it first (sendFile)")
        checksums = {"adler32": entry.adler32} if entry.adler32 else None
        try:
            with cache.open_read(entry.id) as lease:
                check_cancelled()
                stored = element.upload(lease.path, path, checksums=checksums)
        finally:
            cache.drop_source(se, path)  # the old copy is wrong now, and so is a partial write's
        cache.mark_uploaded(entry.id)
        return S_OK({"PFN": element.url(path), "Size": stored.size, "Checksum": entry.adler32 or ""})

    def export_callProxyMethod(self, se: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A storage operation by name, from a fixed list; DIRAC's bulk result shape."""
        operation = OPERATIONS.get(name)
        if operation is None:
            offered = ", ".join(sorted(OPERATIONS))
            return S_ERROR(errno.ENOSYS, f"callProxyMethod: {name[:64]!r} is not offered (offered: {offered})")
        element = self.resources.stager.element(self.caller, se, write=operation.writes)
        if not args:
            return S_ERROR(errno.EINVAL, f"callProxyMethod {name}: the first argument must be the path(s)")
        paths = paths_of(args[0])
        options = options_of(operation, name, args[1:], kwargs)
        check = functools.partial(check_access, se, self.caller, (operation.access,))
        # A write or removal, done or failed half-way, leaves no cached copy of what it touched.
        done = functools.partial(self.resources.cache.drop_source, se, tree=True) if operation.writes else None
        return S_OK(run_bulk(element, operation, paths, options, check, done))

    def export_prepareFileForHTTP(self, lfns: str | list[Any]) -> dict[str, Any]:
        """Stage files by LFN; answer with one signed ``HttpURL`` for them (a tar archive for several)."""
        return prepare_for_http(self.resources.stager, self.resources.http, self.caller, lfns)
