"""Staging: the cache entry of a file on a storage element, fetched once however many ask.

One ``Stager`` serves the whole service (it lives in ``ProxyResources``);
the RPC methods, ``prepareFileForHTTP`` and any later door pass their caller
in. It decides which element a caller may use, whether a cached copy is
still current, and runs the fetch through the cache's single-flight so
that concurrent callers of one file share one download. It never touches a
request: what it raises, ``seproxy.errors`` answers.

Freshness: a copy younger than ``cache.revalidate_after`` (since it was
staged or last revalidated) is served without asking its source, as nginx
does (XCache never asks): a comparison costs a PROPFIND and a HEAD on WebDAV, and on a
file element whose ADLER32 is not recorded a read of the whole file
(``bench/freshness.py`` measures it). An older one is compared (size, mtime,
ADLER32 where the source offers one) and staged again if it changed; when
the source cannot be reached, it is served anyway and marked so
(stale-if-error) until a later comparison succeeds; the failed one counts
for freshness, so that a source that hangs is not asked by every reader.
A source that answers "no such file" drops the copy.
"""

from __future__ import annotations

import errno
import logging
import time

from seproxy import metrics
from seproxy.cache import Cache, Entry
from seproxy.proxy.rights import check_access, check_rights
from seproxy.registry import Caller
from seproxy.rpc.executor import CallCancelled, check_cancelled
from seproxy.security.scopes import Access
from seproxy.storage.base import DownloadSink, FileInfo, StorageElement, StorageUnavailable
from seproxy.transfer import SErrorException
from seproxy.transfer.checksum_headers import canonical_adler32

log = logging.getLogger("seproxy.staging")


class _CancellableSink:
    """A download sink that lets a cancelled call stop the transfer between chunks."""

    def __init__(self, sink: DownloadSink) -> None:
        self._sink = sink

    def expect(self, size: int | None, checksums: dict[str, str], mtime: float | None = None) -> None:
        self._sink.expect(size, checksums, mtime)

    def write(self, data: bytes | memoryview) -> None:
        check_cancelled()
        self._sink.write(data)


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

    def __init__(self, cache: Cache, elements: dict[str, StorageElement], *, revalidate_after: float = 0.0) -> None:
        self.cache = cache
        self.elements = elements
        # Seconds a copy is served without asking its source (cache.revalidate_after).
        self.revalidate_after = revalidate_after

    def element(self, caller: Caller, se: str, *, write: bool = False) -> StorageElement:
        """The element named ``se``, if ``caller`` may use it (and write to it)."""
        element = self.elements.get(se)
        if element is None:
            known = ", ".join(sorted(self.elements)) or "none"
            raise SErrorException(f"unknown storage element {se[:100]!r} (configured: {known})", errno=errno.ENOENT)
        check_rights(se, element.settings, caller, write=write)
        return element

    def stage(self, caller: Caller, se: str, pfn: str, *, name: str | None = None, revalidate: bool = False) -> Entry:
        """The cache entry for ``pfn`` on ``se``: staged now, or cached and still current.

        ``name`` records the logical file name when the caller knows it;
        ``revalidate`` compares a cached copy with its source however fresh
        it is (a door GET with ``Cache-Control: no-cache``). An entry whose
        ``unverified`` is set is a copy that could not be revalidated: its
        source was unreachable (stale-if-error).
        """
        element = self.element(caller, se)
        path = element.normalize(pfn)
        check_access(se, caller, (Access.READ, Access.STAGE), path)
        cached = self.cache.lookup(se, path)
        fresh = cached is not None and not revalidate and time.time() - cached.fresh_since < self.revalidate_after
        force = False
        if not fresh:
            source = self._source(element, path, cached)
            if source is not None:
                if source.is_dir:
                    raise IsADirectoryError(errno.EISDIR, f"{se}: {path}: is a directory, not a file")
                force = cached is not None and stale(cached, source)
                if cached is not None and not force:
                    self.cache.record_check(cached.id)
        while True:
            try:
                return self._staged(element, path, caller.username, name, force)
            except CallCancelled:
                # Concurrent callers share one staging: when the one joined was cancelled for its own
                # caller (gone, or out of time), this caller runs one of its own, unless cancelled too.
                check_cancelled()

    def _source(self, element: StorageElement, path: str, cached: Entry | None) -> FileInfo | None:
        """What the storage tells of ``path``; None when it cannot be asked and ``cached`` is served
        instead (stale-if-error: recorded in the index, so every reader of the copy learns it)."""
        try:
            return element.stat(path)
        except FileNotFoundError:
            if cached is not None:  # gone from the storage: so is its copy
                self.cache.drop_source(element.name, path)
            raise
        except StorageUnavailable as exc:
            if cached is None:
                raise
            # Storage errors name their element and path already.
            reason = str(exc.strerror or exc)
            log.warning("%s: %s: serving the cached copy %s, which could not be revalidated: %s", element.name, path, cached.id, reason)
            self.cache.record_check(cached.id, failure=reason)
            return None

    def _staged(self, element: StorageElement, path: str, owner: str, name: str | None, force: bool) -> Entry:
        """One staging through the cache (shared with concurrent callers of the same file), counted."""
        se = element.name
        downloaded = []

        def fetch(writer: DownloadSink) -> None:
            downloaded.append(True)
            with metrics.ACTIVE_TRANSFERS.labels("staging").track_inprogress():
                element.download(path, _CancellableSink(writer))

        try:
            entry = self.cache.stage(se, path, fetch, owner=owner, name=name, force=force)
        except BaseException:
            if downloaded:
                metrics.STAGINGS.labels(se, "failed").inc()
            raise
        if downloaded:
            metrics.STAGINGS.labels(se, "ok").inc()
        return entry
