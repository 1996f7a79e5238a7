"""Staging: the cache entry of a file on a storage element, fetched once however many ask.

One ``Stager`` serves the whole service (it lives in ``ProxyResources``);
the RPC methods, ``prepareFileForHTTP`` and the door pass their caller
in. It decides which element a caller may use, whether a cached copy is
still current, and runs the fetch through the cache's single-flight so
that concurrent callers of one file share one download. It never touches a
request: what it raises, ``seproxy.errors`` answers.

``stage`` waits for the whole file (what ``prepareFile`` promises);
``open`` answers as soon as the first bytes can be followed (a reader that
streams while staging). A staging that ``open`` starts runs in a thread
of the Stager's own, bounded by the staging limit and not by its reader:
when that reader leaves, the file is still completed for the next one (as
XCache and nginx's proxy_cache do), and a second reader in the meantime
follows the same staging.

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
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_future

from seproxy import metrics
from seproxy.cache import Cache, Entry, Growing
from seproxy.cache.traffic import MISS
from seproxy.proxy.rights import check_access, check_rights
from seproxy.registry import Caller
from seproxy.rpc.executor import CallCancelled, CallContext, call_in, check_cancelled
from seproxy.security.scopes import Access
from seproxy.storage.base import DownloadSink, FileInfo, StorageElement, StorageUnavailable
from seproxy.transfer import SErrorException
from seproxy.transfer.checksum_headers import canonical_adler32

log = logging.getLogger(__name__)


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


# How often ``open`` looks whether the staging it waits for has announced itself.
_ANNOUNCE_POLL = 0.005


class Stager:
    """Stages files from the configured storage elements into the cache, for any caller.

    ``background``: how many stagings ``open`` may run at once (more wait
    for a thread); ``staging_limit``: how long one staging may take, in
    seconds (the RPC call limit bounds a ``stage``).
    """

    def __init__(
        self, cache: Cache, elements: dict[str, StorageElement], *, background: int = 4, staging_limit: float = 600.0,
        revalidate_after: float = 0.0,
    ) -> None:  # fmt: skip
        self.cache = cache
        self.elements = elements
        self.staging_limit = staging_limit
        # Seconds a copy is served without asking its source (cache.revalidate_after).
        self.revalidate_after = revalidate_after
        self._pool = ThreadPoolExecutor(max_workers=background, thread_name_prefix="staging")
        # The stagings ``open`` started in this process, by source, until they end.
        self._started: dict[tuple[str, str], tuple[Future[Entry], CallContext]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the background stagings (each aborts, leaving nothing) and wait for their threads."""
        with self._lock:
            running = list(self._started.values())
        for _future, context in running:
            context.cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

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
        element, path, cached, force = self._source(caller, se, pfn, revalidate)
        if cached is not None and not force:
            return self.cache.hit(cached)
        return self._until_staged(element, path, caller.username, name, force)

    def open(self, caller: Caller, se: str, pfn: str, *, name: str | None = None, revalidate: bool = False) -> Entry | Growing:
        """What a reader of ``pfn`` on ``se`` reads: the cached copy if current, else the staging in
        progress (in any process), started now if there is none.

        Returns as soon as the staging has announced itself, or with its
        entry or its error if it ended before that. Same rights and freshness as ``stage``.
        """
        element, path, cached, force = self._source(caller, se, pfn, revalidate)
        if cached is not None and not force:
            return self.cache.hit(cached)  # no fetch
        growing = self.cache.growing(se, path)
        if growing is not None:
            return growing  # another process (or a prepareFile here) stages it: no thread of ours waits for it
        future = self._background(element, path, caller.username, name, force)
        deadline = time.monotonic() + self.staging_limit
        while not future.done():
            growing = self.cache.growing(se, path)
            if growing is not None:
                return growing
            if time.monotonic() > deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"{se}: {path}: the staging did not start within {self.staging_limit:g} s")
            wait_for_future([future], timeout=_ANNOUNCE_POLL)
        return future.result()

    def follow_deadline(self, growing: Growing) -> float:
        """When (``time.monotonic()``) a reader of ``growing`` stops waiting: its staging's own limit."""
        return time.monotonic() + max(0.0, growing.started + self.staging_limit - time.time())

    def still_staged(self, growing: Growing) -> Callable[[], bool]:
        """For a ``Follower`` of ``growing``: whether its staging still runs (its writer lives)."""
        return lambda: self.cache.growing_entry(growing.entry_id) is not None

    def _source(self, caller: Caller, se: str, pfn: str, revalidate: bool) -> tuple[StorageElement, str, Entry | None, bool]:
        """The element and clean path of a file ``caller`` may stage, its cached copy (as the index has
        it now: a revalidation is recorded in it), and whether that copy must be staged again (it
        changed at its source)."""
        element = self.element(caller, se)
        # A fresh copy is served without asking the storage; whatever asks it checks the path there too.
        path = element.clean_path(pfn)
        check_access(se, caller, (Access.READ, Access.STAGE), path)
        cached = self.cache.lookup(se, path)
        if cached is not None and not revalidate and time.time() - cached.fresh_since < self.revalidate_after:
            return element, path, cached, False
        source = self._ask_source(element, path, cached)
        if source is None:
            return element, path, self.cache.get(cached.id) if cached else None, False
        if source.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"{se}: {path}: is a directory, not a file")
        if cached is None or stale(cached, source):
            return element, path, cached, cached is not None
        self.cache.record_check(cached.id)
        return element, path, self.cache.get(cached.id), False

    def _ask_source(self, element: StorageElement, path: str, cached: Entry | None) -> FileInfo | None:
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

    def _background(self, element: StorageElement, path: str, owner: str, name: str | None, force: bool) -> Future[Entry]:
        """The staging this process runs for ``open`` (one per source), started if none runs."""
        key = (element.name, path)
        with self._lock:
            if key in self._started and not self._started[key][0].done():
                return self._started[key][0]
            context = CallContext(deadline=time.monotonic() + self.staging_limit)
            future = self._pool.submit(call_in, context, self._until_staged, element, path, owner, name, force)
            self._started[key] = (future, context)
        future.add_done_callback(lambda done: self._ended(key, done))
        return future

    def _ended(self, key: tuple[str, str], future: Future[Entry]) -> None:
        with self._lock:
            if key in self._started and self._started[key][0] is future:
                del self._started[key]
        if not future.cancelled() and future.exception() is not None:
            log.warning("background staging of %s:%s failed: %s", *key, future.exception())

    def _until_staged(self, element: StorageElement, path: str, owner: str, name: str | None, force: bool) -> Entry:
        while True:
            try:
                return self._staged(element, path, owner, name, force)
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
