"""The StorageElementProxy service: what stands between users and storage elements.

The two-step dances of DIRAC's proxy, with the cache in the middle:

- download: ``prepareFile(se, pfn)`` stages the file into the cache, then
  ``streamToClient("getFile/<name>")`` (DIRAC's ``receiveFile``) streams it;
- upload: the client sends ``putFile/<name>`` (``streamFromClient``, or the
  streamed ``PUT`` route), then ``uploadFile(se, pfn)`` pushes it to the
  storage element and releases it;
- ``callProxyMethod(se, name, args, kwargs)``: one of a fixed list of
  storage operations.

File ids live in a namespace per user: Alice's ``getFile/a.dat`` is not
Bob's. Reading needs a registered user whose VO may use the element; writing
and removing also need one of the element's ``write_properties``.
"""

from __future__ import annotations

import errno
import functools
import inspect
import posixpath
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import tornado.web

from seproxy import metrics
from seproxy.cache import Cache, Entry, VerificationError
from seproxy.cache_access import open_cache
from seproxy.cache_streams import UPLOAD_RULE, RangeRefused, StreamUploadHandler, send_cached_file
from seproxy.config import Settings
from seproxy.element_rights import check_may_upload, check_rights
from seproxy.file_description import describe
from seproxy.file_ids import GET_AREA, PUT_AREA, file_id, parse_file_id
from seproxy.http_side import HTTPSide
from seproxy.http_side.prepare import prepare_for_http
from seproxy.proxy_operations import OPERATIONS, OperationError, options_of, paths_of, run_bulk
from seproxy.rpc.executor import CallCancelled, check_cancelled
from seproxy.rpc.handler import RPCHandler, ServiceContext
from seproxy.storage.base import DownloadSink, FileInfo, StorageElement
from seproxy.storage.factory import make_storage_element
from seproxy.transfer import S_ERROR, S_OK, SErrorException

READ = ("authenticated",)


@dataclass
class ProxyResources:
    """What every request of the service shares: the cache, the storage elements, the HTTP side server."""

    cache: Cache
    elements: dict[str, StorageElement]
    http: HTTPSide | None = None


def _as_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SErrorException):
        return exc.result
    if isinstance(exc, CallCancelled):
        return S_ERROR(errno.ECANCELED, str(exc))
    if isinstance(exc, VerificationError):
        return S_ERROR(errno.EIO, f"the file did not arrive intact: {exc}")
    if isinstance(exc, OperationError):
        return S_ERROR(errno.EINVAL, str(exc))
    assert isinstance(exc, OSError)
    return S_ERROR(exc.errno or errno.EIO, str(exc.strerror or exc))


_EXPECTED = (SErrorException, CallCancelled, VerificationError, OperationError, OSError)


def answers_errors(function: Any) -> Any:
    """Storage, cache and caller errors become S_ERROR; anything else is a bug for the RPC layer."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def run_async(self: Any, *args: Any) -> Any:
            try:
                return await function(self, *args)
            except _EXPECTED as exc:
                return _as_error(exc)

        return run_async

    @functools.wraps(function)
    def run(self: Any, *args: Any) -> Any:
        try:
            return function(self, *args)
        except _EXPECTED as exc:
            return _as_error(exc)

    return run


class _CancellableSink:
    """A download sink that lets a cancelled call stop the transfer between chunks."""

    def __init__(self, sink: DownloadSink) -> None:
        self._sink = sink

    def expect(self, size: int | None, checksums: dict[str, str], mtime: float | None = None) -> None:
        self._sink.expect(size, checksums, mtime)

    def write(self, data: bytes | memoryview) -> None:
        check_cancelled()
        self._sink.write(data)


def _stale(cached: Entry, source: FileInfo) -> bool:
    """Whether the storage's copy changed since it was cached."""
    if cached.size != source.size:
        return True
    adler32 = source.checksums.get("adler32")
    if adler32 and cached.adler32 and int(adler32, 16) != int(cached.adler32, 16):
        return True
    return source.mtime is not None and source.mtime > cached.created


def open_resources(settings: Settings, ca_dir: Any) -> ProxyResources:
    cache = open_cache(settings)
    elements = {
        name: make_storage_element(name, spec, default_ca_dir=ca_dir)
        for name, spec in settings.storage_elements.items()
    }
    return ProxyResources(cache, elements)


class StorageElementProxyHandler(RPCHandler):
    """DataManagement/StorageElementProxy."""

    shared: ProxyResources  # type: ignore[assignment]

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

    @classmethod
    def initializeHandler(cls, service: ServiceContext) -> ProxyResources:
        resources = open_resources(service.settings, service.ca_dir)
        if service.settings.http.enabled:
            resources.http = HTTPSide(service.settings, resources.cache, urlsplit(service.url).hostname or "localhost")
            resources.http.start()
        return resources

    @classmethod
    def extra_routes(cls) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
        return [(r"/stream/(.*)", StreamUploadHandler)]

    @classmethod
    def finalizeHandler(cls, service: ServiceContext) -> None:
        if service.shared is not None:
            if service.shared.http is not None:
                service.shared.http.stop()
            service.shared.cache.close()

    # -- helpers -------------------------------------------------------------

    @property
    def owner(self) -> str:
        return self.caller.username

    def element(self, se: str, *, write: bool = False) -> StorageElement:
        """The element named ``se``, if this caller may use it (and write to it)."""
        element = self.shared.elements.get(se)
        if element is None:
            known = ", ".join(sorted(self.shared.elements)) or "none"
            raise SErrorException(f"unknown storage element {se[:100]!r} (configured: {known})", errno=errno.ENOENT)
        check_rights(se, element.settings, self.caller, write=write)
        return element

    def stage(self, se: str, pfn: str, *, name: str | None = None) -> Entry:
        """The cache entry for ``pfn`` on ``se``: staged now, or cached and still current."""
        element = self.element(se)
        path = element.normalize(pfn)
        source = element.stat(path)
        if source.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"{se}: {path}: is a directory, not a file")
        cached = self.shared.cache.lookup(se, path)
        force = cached is not None and _stale(cached, source)
        while True:
            try:
                return self._staged(element, path, name, force)
            except CallCancelled:
                # Concurrent callers share one staging: when the one joined was cancelled for its own
                # caller (gone, or out of time), this caller runs one of its own, unless cancelled too.
                check_cancelled()

    def _staged(self, element: StorageElement, path: str, name: str | None, force: bool) -> Entry:
        """One staging through the cache (shared with concurrent callers of the same file), counted."""
        se = element.name
        downloaded = []

        def fetch(writer: DownloadSink) -> None:
            downloaded.append(True)
            with metrics.ACTIVE_TRANSFERS.labels("staging").track_inprogress():
                element.download(path, _CancellableSink(writer))

        try:
            entry = self.shared.cache.stage(se, path, fetch, owner=self.owner, name=name, force=force)
        except BaseException:
            if downloaded:
                metrics.STAGINGS.labels(se, "failed").inc()
            raise
        if downloaded:
            metrics.STAGINGS.labels(se, "ok").inc()
        return entry

    # -- the exported methods ------------------------------------------------

    @answers_errors
    def export_prepareFile(self, se: str, pfn: str) -> dict[str, Any]:
        """Stage a file into the cache; ``receiveFile(dest, "getFile/<name>")`` then fetches it."""
        entry = self.stage(se, pfn)
        assert entry.source_path is not None
        name = file_id(GET_AREA, posixpath.basename(entry.source_path))
        self.shared.cache.set_alias(self.owner, name, entry.id)
        return S_OK({"FileId": name, **describe(entry)})

    @answers_errors
    async def export_streamToClient(self, fileId: str, token: str) -> dict[str, Any] | None:
        """DIRAC's ``receiveFile``: the bytes of a prepared file (``Range`` resumes)."""
        assert self.call is not None
        if not self.call.raw_content:
            return S_ERROR(errno.EINVAL, "streamToClient sends raw bytes: call it with rawContent=True")
        entry = self.shared.cache.resolve_alias(self.owner, file_id(GET_AREA, parse_file_id(fileId, GET_AREA)))
        if entry is None:
            return S_ERROR(errno.ENOENT, f"no file {fileId[:120]!r} prepared for you: call prepareFile first")
        with self.shared.cache.open_read(entry.id) as lease:
            try:
                await send_cached_file(self, lease.entry, lease.path)
            except RangeRefused as exc:  # 416, not the 400 an EINVAL would get
                self.send_json(exc.status, exc.result)
        return None

    @answers_errors
    def export_streamFromClient(self, fileId: str, token: str, fileSize: int, data: bytes) -> dict[str, Any]:
        """DIRAC's ``sendFile``: the whole file inside the form (bounded by ``max_form_size``)."""
        name = file_id(PUT_AREA, parse_file_id(fileId, PUT_AREA))
        check_may_upload(self.service.settings.storage_elements, self.caller)
        if fileSize != len(data):
            return S_ERROR(errno.EINVAL, f"fileSize is {fileSize} but {len(data)} bytes were sent")
        with self.shared.cache.receive_upload(self.owner, name, expected_size=fileSize) as writer:
            writer.write(data)
        assert writer.entry is not None
        return S_OK({"FileId": name, **describe(writer.entry)})

    @answers_errors
    def export_uploadFile(self, se: str, pfn: str) -> dict[str, Any]:
        """Push ``putFile/<basename of pfn>`` to ``se`` at ``pfn``, verify it, release it."""
        element = self.element(se, write=True)
        path = element.normalize(pfn)
        name = file_id(PUT_AREA, posixpath.basename(path))
        entry = self.shared.cache.resolve_alias(self.owner, name)
        if entry is None or not entry.upload_pending:
            return S_ERROR(errno.ENOENT, f"no file {name!r} waiting to be uploaded: send it first (sendFile)")
        checksums = {"adler32": entry.adler32} if entry.adler32 else None
        with self.shared.cache.open_read(entry.id) as lease:
            check_cancelled()
            stored = element.upload(lease.path, path, checksums=checksums)
        self.shared.cache.mark_uploaded(entry.id)
        return S_OK({"PFN": element.url(path), "Size": stored.size, "Checksum": entry.adler32 or ""})

    @answers_errors
    def export_callProxyMethod(self, se: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A storage operation by name, from a fixed list; DIRAC's bulk result shape."""
        operation = OPERATIONS.get(name)
        if operation is None:
            offered = ", ".join(sorted(OPERATIONS))
            return S_ERROR(errno.ENOSYS, f"callProxyMethod: {name[:64]!r} is not offered (offered: {offered})")
        element = self.element(se, write=operation.writes)
        if not args:
            return S_ERROR(errno.EINVAL, f"callProxyMethod {name}: the first argument must be the path(s)")
        paths = paths_of(args[0])
        options = options_of(operation, name, args[1:], kwargs)
        return S_OK(run_bulk(element, operation, paths, options))

    @answers_errors
    def export_prepareFileForHTTP(self, lfns: str | list[Any]) -> dict[str, Any]:
        """Stage files by LFN; answer with one signed ``HttpURL`` for them (a tar archive for several)."""
        return prepare_for_http(self, self.shared.http, lfns)
