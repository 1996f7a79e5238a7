"""Staging: the cache entry of a file on a storage element, fetched once however many ask.

One ``Stager`` serves the whole service (it lives in ``ProxyResources``);
the RPC methods, ``prepareFileForHTTP`` and any later door pass their caller
in. It decides which element a caller may use, whether a cached copy is
still current, and runs the fetch through the cache's single-flight so
that concurrent callers of one file share one download. It never touches a
request: what it raises, ``seproxy.errors`` answers.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

from seproxy import metrics
from seproxy.cache import Cache, Entry
from seproxy.cache.traffic import MISS
from seproxy.proxy.rights import check_access, check_rights
from seproxy.registry import Caller
from seproxy.rpc.executor import CallCancelled, check_cancelled
from seproxy.security.scopes import Access
from seproxy.storage.base import DownloadSink, FileInfo, StorageElement
from seproxy.transfer import SErrorException
from seproxy.transfer.checksum_headers import canonical_adler32


class _CancellableSink:
    """A download sink that lets a cancelled call stop the transfer between chunks, and counts
    the bytes fetched as misses of the element."""

    def __init__(self, sink: DownloadSink, count: Callable[[int], None]) -> None:
        self._sink = sink
        self._count = count

    def expect(self, size: int | None, checksums: dict[str, str], mtime: float | None = None) -> None:
        self._sink.expect(size, checksums, mtime)

    def write(self, data: bytes | memoryview) -> None:
        check_cancelled()
        self._sink.write(data)
        self._count(len(data))


def stale(cached: Entry, source: FileInfo) -> bool:
    """Whether the storage's copy changed since it was cached."""
    if cached.size != source.size:
        return True
    adler32 = canonical_adler32(source.checksums.get("adler32", ""))
    if adler32 and cached.adler32 and adler32 != canonical_adler32(cached.adler32):
        return True
    return source.mtime is not None and source.mtime > cached.created


class Stager:
    """Stages files from the configured storage elements into the cache, for any caller."""

    def __init__(self, cache: Cache, elements: dict[str, StorageElement]) -> None:
        self.cache = cache
        self.elements = elements

    def element(self, caller: Caller, se: str, *, write: bool = False) -> StorageElement:
        """The element named ``se``, if ``caller`` may use it (and write to it)."""
        element = self.elements.get(se)
        if element is None:
            known = ", ".join(sorted(self.elements)) or "none"
            raise SErrorException(f"unknown storage element {se[:100]!r} (configured: {known})", errno=errno.ENOENT)
        check_rights(se, element.settings, caller, write=write)
        return element

    def stage(self, caller: Caller, se: str, pfn: str, *, name: str | None = None) -> Entry:
        """The cache entry for ``pfn`` on ``se``: staged now, or cached and still current.

        ``name`` records the logical file name when the caller knows it.
        """
        element = self.element(caller, se)
        path = element.normalize(pfn)
        check_access(se, caller, (Access.READ, Access.STAGE), path)
        source = element.stat(path)
        if source.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"{se}: {path}: is a directory, not a file")
        cached = self.cache.lookup(se, path)
        force = cached is not None and stale(cached, source)
        while True:
            try:
                return self._staged(element, path, caller.username, name, force)
            except CallCancelled:
                # Concurrent callers share one staging: when the one joined was cancelled for its own
                # caller (gone, or out of time), this caller runs one of its own, unless cancelled too.
                check_cancelled()

    def _staged(self, element: StorageElement, path: str, owner: str, name: str | None, force: bool) -> Entry:
        """One staging through the cache (shared with concurrent callers of the same file), counted."""
        se = element.name
        downloaded = []

        def fetch(writer: DownloadSink) -> None:
            downloaded.append(True)
            with metrics.ACTIVE_TRANSFERS.labels("staging").track_inprogress():
                element.download(path, _CancellableSink(writer, functools.partial(metrics.count_se_bytes, self.cache, se, MISS)))

        try:
            entry = self.cache.stage(se, path, fetch, owner=owner, name=name, force=force)
        except BaseException:
            if downloaded:
                metrics.STAGINGS.labels(se, "failed").inc()
            raise
        if downloaded:
            metrics.STAGINGS.labels(se, "ok").inc()
        return entry
