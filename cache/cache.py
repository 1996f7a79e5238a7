"""The cache as the service and the operator CLI use it.

A file becomes an entry in three steps: a ``write`` lease is recorded, the
bytes go to ``tmp/<id>`` (hashed on the way), and the verified file is renamed
to ``data/<id>`` before its row is inserted. The lease is dropped only after
that (and after any eviction the commit triggers), so no other process ever
takes a file in progress for an orphan. Removal goes the other way: the row
is deleted first (only if no live lease), the file unlinked after the commit.
A crash between any two steps leaves something recovery removes at the next
open, never a partial file that looks whole; each writing process is listed in
the index while it has the cache open, so an open that finds no dead one
skips recovery altogether (see ``recovery``).

A full disk reads the same wherever it strikes, in a file or in the index
(SQLite's "database or disk is full"): an ``OSError(ENOSPC)`` naming the
cache. The lease of a file that failed is dropped even then: if the index
cannot be written at that moment, the heartbeat drops it once space returns.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from seproxy.cache.entry import Area, Entry, Growing, ReadLease, Usage
from seproxy.cache.eviction import Quota, give_up_lru
from seproxy.cache.index import CRASH_MARKS_VERSION, Index
from seproxy.cache.layout import Layout, check_entry_id, new_entry_id
from seproxy.cache.leases import Heartbeat, Holder
from seproxy.cache.locks import CacheLocks
from seproxy.cache.recovery import check_everything, orphans, reap_dead_writers, recover_after_crash
from seproxy.cache.singleflight import SingleFlight
from seproxy.cache.space import DiskSpace
from seproxy.cache.stamp import ChangeStamp
from seproxy.cache.traffic import Traffic, traffic_by_se
from seproxy.cache.writer import StagingWriter

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

Fetch = Callable[[StagingWriter], None]

# The largest size an upload's lease records (SQLite's largest integer).
_MOST_CLAIMED = 2**63 - 1

# Rows read at a time when looking for eviction candidates: a pass that needs
# a few entries reads about one page; a large one reads page after page.
_EVICTION_PAGE = 128

# Seconds to which a hit keeps an entry's last access (the LRU's key): a file that jobs ask for
# many times a second is written to the index about once a second, not once a hit, and the
# service's processes do not queue for the index's write lock to record it.
_ACCESS_RESOLUTION = 1.0

# What a new entry says unless its kind of writing tells (an upload has no source SE, ...).
_NEW_ENTRY: dict[str, Any] = {
    "se": None, "source_path": None, "owner": None, "name": None, "pinned_until": 0.0, "upload_pending": False,
}  # fmt: skip


@dataclass
class NewEntry:
    """A file being written into the cache under a write lease, until ``Cache.commit`` or ``Cache.abort``."""

    id: str
    area: Area
    writer: StagingWriter
    lease: int
    # (owner, name) that resolves to the entry once committed.
    alias: tuple[str, str] | None
    fields: dict[str, Any]


def _staging_lock(se: str, path: str) -> str:
    """The lock a staging of ``path`` on ``se`` holds from its lookup to its commit (in every process)."""
    return f"stage\0{se}\0{path}"


def _no_entry(entry_id: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such cache entry", entry_id)


def _claimed(writer: StagingWriter) -> int:
    """What a file being written will take: its announced size, or what it has written if more."""
    return max(writer.written, writer.expected_size or 0)


def _index_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _full_index_is_enospc(method: Callable[P, R]) -> Callable[P, R]:
    """SQLite's "database or disk is full" out of ``method`` becomes the cache's ENOSPC."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as error:
            if not _index_full(error):
                raise
            cache = args[0]
            assert isinstance(cache, Cache)
            raise cache.space.full_index() from error

    return guarded


class Cache:
    """Staged downloads and pending uploads under one root, with a quota.

    Thread-safe; several processes may open the same root at once (the
    service and the operator CLI). Opening recovers from any earlier crash.
    ``read_only``: look, never change (no recovery, nothing created; the
    root must hold a cache already, else ``FileNotFoundError``).
    """

    def __init__(
        self,
        root: Path,
        *,
        quota: int,
        high_watermark: float = 0.9,
        low_watermark: float = 0.8,
        min_free: int = 1 << 30,
        lease_ttl: float = 120.0,
        upload_lifetime: float = 86400.0,
        read_only: bool = False,
        upload_share: float = 0.5,
    ) -> None:
        self.layout = Layout(root)
        self.quota = Quota(quota, high_watermark, low_watermark)
        self.space = DiskSpace(self.layout.root, min_free)
        self._lease_ttl = lease_ttl
        # Threads of this process share a staging in memory; other processes wait on its lock.
        self._stagings: SingleFlight[Entry] = SingleFlight()
        # The most one user's uploads (pending and in progress) may hold, in bytes.
        self.upload_share = int(quota * upload_share)
        # Files being written by this process, for the quota and the upload shares.
        self._writers: set[StagingWriter] = set()
        # Leases whose drop the index could not take (a full disk): dropped by the heartbeat.
        self._undropped: set[int] = set()
        self._books = threading.Lock()
        # Entries this process evicted since it opened the cache (for metrics).
        self.evictions = 0
        # Told of each staging answered from the cache ("hit") or fetched ("miss") and of evictions
        # ("evicted"), with how many: the service counts them in its metrics, over all its processes.
        self.on_count: Callable[[str, int], None] = lambda what, count: None
        # Bytes by storage element (hit, miss, stream-through), stored by the heartbeat for `cache du`.
        self.traffic = Traffic()
        self._heartbeat: Heartbeat | None = None
        self._stamp = ChangeStamp(self.layout.changes)
        if read_only:
            if not self.layout.index.is_file():
                raise FileNotFoundError(errno.ENOENT, "no cache here yet", str(self.layout.root))
            self._index = Index(
                self.layout.index, self.layout.entry_path, upload_lifetime=upload_lifetime, read_only=True
            )
            return
        self.layout.create()
        self._locks = CacheLocks(self.layout.locks)
        self._index = Index(self.layout.index, self.layout.entry_path, upload_lifetime=upload_lifetime)
        self._holder = Holder.current()
        # Listed first, so that a crash from now on is seen by the next opener.
        self._opener = self._index.add_opener(self._holder, time.time())
        if 0 < self._index.upgraded_from < CRASH_MARKS_VERSION:
            self.check_everything()  # its past left no marks to go by
        else:
            dead = [opener for opener in self._index.openers() if not opener.holder.is_alive()]
            if dead:
                recover_after_crash(self.layout, self._index, dead)
        self._heartbeat = Heartbeat(lease_ttl / 4, self._renew_leases)

    def close(self) -> None:
        """Close; for a writer, also the mark of a clean shutdown (the next open recovers nothing)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            try:
                self._store_traffic()
            except sqlite3.Error as error:
                log.warning("the last traffic counts are lost: the index cannot be written (%s)", error)
            self._index.drop_openers([self._opener])
        self._index.close()
        self._stamp.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- getting files in

    @_full_index_is_enospc
    def stage(
        self,
        se: str,
        path: str,
        fetch: Fetch,
        *,
        owner: str | None = None,
        name: str | None = None,
        force: bool = False,
    ) -> Entry:
        """The entry holding ``path`` of storage element ``se``, fetched if not cached.

        Concurrent calls for one source share one fetch, run in the first
        caller's thread; the others get its entry or its exception. A caller
        in another process waits for that fetch and then finds its entry
        (or, if it failed, fetches itself). ``force``
        fetches again even if a copy exists (the old copy goes once unused).
        ``name`` records the logical file name (LFN) when the caller knows it.
        """

        def work() -> Entry:
            with self._locks.hold(_staging_lock(se, path)):
                cached = self._index.find_source(se, path)
                if cached is not None and not force:
                    return self.hit(cached)  # staged by another process while this one waited
                self.on_count("miss", 1)
                with self._writing("staged", se=se, source_path=path, owner=owner, name=name) as writer:
                    fetch(writer)
                if cached is not None:
                    self._delete(cached, force=False)
                assert writer.entry is not None
                return writer.entry

        cached = None if force else self._index.find_source(se, path)
        if cached is not None:
            return self.hit(cached)  # a committed copy: no staging to share or lock to take
        return self._stagings.run((se, path), work)

    def hit(self, cached: Entry) -> Entry:
        """``cached`` (a committed entry ``lookup`` found) served instead of a staging: counted as a
        hit, and its last access kept."""
        self.on_count("hit", 1)
        now = time.time()
        if now - cached.last_access < _ACCESS_RESOLUTION:
            return cached
        self._index.touch(cached.id, now)
        return replace(cached, last_access=now)

    @_full_index_is_enospc
    def begin_upload(
        self,
        owner: str,
        name: str,
        *,
        expected_size: int | None,
        expected_checksums: Mapping[str, str] | None = None,
    ) -> NewEntry:
        """A file a client sends, to be pushed to a storage element later.

        The caller writes into ``upload.writer``, then ends it with
        ``commit(upload)`` (an entry that owes an upload and that
        ``(owner, name)`` resolves to) or ``abort(upload)`` (nothing is
        left). Handlers that receive a body chunk by chunk hold it across
        callbacks, where a ``with`` block cannot reach.
        """
        return self._begin(
            "upload",
            expected_size=expected_size,
            expected_checksums=expected_checksums,
            alias=(owner, name),
            owner=owner,
            name=name,
            upload_pending=True,
        )

    @contextmanager
    def receive_upload(
        self,
        owner: str,
        name: str,
        *,
        expected_size: int | None,
        expected_checksums: Mapping[str, str] | None = None,
    ) -> Iterator[StagingWriter]:
        """``begin_upload`` as a ``with`` block: committed when it ends without error, else aborted;
        ``writer.entry`` is the new entry after the block."""
        upload = self.begin_upload(owner, name, expected_size=expected_size, expected_checksums=expected_checksums)
        with self._ended(upload):
            yield upload.writer

    @contextmanager
    def _writing(self, area: Area, **fields: Any) -> Iterator[StagingWriter]:
        new = self._begin(area, **fields)
        with self._ended(new):
            yield new.writer

    @contextmanager
    def _ended(self, new: NewEntry) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.abort(new)
            raise
        self.commit(new)

    def _begin(
        self,
        area: Area,
        *,
        expected_size: int | None = None,
        expected_checksums: Mapping[str, str] | None = None,
        alias: tuple[str, str] | None = None,
        **fields: Any,
    ) -> NewEntry:
        entry_id = new_entry_id()
        owner = fields.get("owner") if area == "upload" else None
        # An absurd announced size is refused by ``expect`` below; the index can only hold 64 bits of it.
        lease = self._take_lease(entry_id, "write", owner=owner, claimed=min(expected_size or 0, _MOST_CLAIMED))
        announce = None
        if area == "staged":
            announce = partial(self._announce, entry_id, fields["se"], fields["source_path"], time.time())
        try:
            writer = StagingWriter(
                self.layout.tmp_path(entry_id), self.space, self._admit, self._make_room,
                owner=owner, announce=announce,
            )  # fmt: skip
        except BaseException:
            self._drop_lease(lease)
            raise
        new = NewEntry(entry_id, area, writer, lease, alias, fields)
        try:
            if expected_size is not None or expected_checksums:
                # Refuses what cannot fit, before any byte. A staging learns its size from the
                # source's answer (its fetch calls expect), and announces itself then.
                writer.expect(expected_size, expected_checksums)
        except BaseException:
            self.abort(new)
            raise
        with self._books:
            self._writers.add(writer)
        return new

    @_full_index_is_enospc
    def commit(self, new: NewEntry) -> Entry:
        """Verify and keep the file of ``new``; on failure it is aborted and the error raised."""
        try:
            size, xxh3, adler32 = new.writer.finish()
            now = time.time()
            entry = Entry(
                new.id, new.area, size, xxh3, adler32, created=now, last_access=now, source_mtime=new.writer.source_mtime,
                path=self.layout.entry_path(new.id), **{**_NEW_ENTRY, **new.fields},
            )  # fmt: skip
            new.writer.entry = self._commit(new.writer.path, entry, new.alias)
        except BaseException:
            self.abort(new)
            raise
        self._forget(new.writer)
        try:
            # Still under the write lease: the eviction this commit may trigger spares the new entry.
            self.evict()
        finally:
            self._drop_lease(new.lease)
        return new.writer.entry

    def abort(self, new: NewEntry) -> None:
        """Drop the file of ``new`` and its write lease; nothing of it is left. Never raises:
        it is the cleanup after a failure, whose error is the one to report."""
        self._forget(new.writer)
        try:
            new.writer.discard()
            if new.area == "staged":
                self._index.unannounce(new.id)
        except sqlite3.Error as error:
            # Its readers see the file gone; the row goes with the lease (reap_leases).
            log.warning("cannot drop the growing file %s from the index now (%s)", new.id, error)
        finally:
            self._drop_lease(new.lease)

    def _announce(self, entry_id: str, se: str, source_path: str, started: float, writer: StagingWriter) -> None:
        self._index.announce(entry_id, se, source_path, writer.expected_size, writer.expected_adler32, writer.source_mtime, started)

    def _forget(self, writer: StagingWriter) -> None:
        with self._books:
            self._writers.discard(writer)

    def _drop_lease(self, lease: int) -> None:
        """Drop a lease now, or (the index cannot be written: a full disk) at the next heartbeat."""
        try:
            self._index.drop_lease(lease)
        except sqlite3.Error as error:
            log.warning("cannot drop cache lease %d now (%s): it is dropped once the index can be written", lease, error)
            with self._books:
                self._undropped.add(lease)

    def _commit(self, tmp: Path, entry: Entry, alias: tuple[str, str] | None) -> Entry:
        """Rename the verified file into place, then insert its row (and name) in one transaction."""
        entry.path.parent.mkdir(exist_ok=True)
        os.rename(tmp, entry.path)
        try:
            with self._index.transaction():
                self._index.insert(entry)
                self._index.unannounce(entry.id)
                replaced = self._index.set_alias(*alias, entry.id) if alias else None
        except BaseException:
            entry.path.unlink(missing_ok=True)
            raise
        self._release_replaced(replaced, entry.id)
        return entry

    def _make_room(self, size: int) -> None:
        """Evict for the quota and then for the disk so that ``size`` more bytes fit beside the
        files being written; raise ``OSError(ENOSPC)`` if the disk cannot take them even so."""
        writing = self._in_progress(lambda writer: writer.written)
        target = self.quota.target(self._total() + writing, size)
        if target is not None:
            self._evict_down_to(target - writing)
        shortfall = self.space.shortfall(size)
        if shortfall:
            self._evict_down_to(self._total() - shortfall)
            if self.space.shortfall(size):
                raise self.space.full(size)

    def _in_progress(self, size: Callable[[StagingWriter], int], owner: str | None = None) -> int:
        """Bytes of the files this process is writing (of ``owner``'s uploads only, if given)."""
        with self._books:
            return sum(size(w) for w in self._writers if owner is None or w.owner == owner)

    @_full_index_is_enospc
    def _admit(self, writer: StagingWriter, size: int) -> None:
        """Refuse up front, evicting nothing, a file of ``size`` bytes that could not fit: beyond
        the free disk a purge could give, and for an upload beyond the quota or its owner's share."""
        shortfall = self.space.shortfall(size)
        if not shortfall and writer.owner is None:
            return  # the usual staging: nothing to weigh (and no scan of the index)
        now = time.time()
        held = self._index.held_bytes(now)
        if shortfall > self._total() - held:
            raise self.space.full(size)
        if writer.owner is None:
            return
        # Files being written: this process's as they stand, other processes' uploads as they announced.
        held += self._in_progress(_claimed) + self._index.claimed_elsewhere(now, self._holder)
        if size > self.quota.limit - held:
            raise OSError(
                errno.EDQUOT,
                f"No room for an upload of {size} bytes in the cache at {self.layout.root}: its quota is "
                f"{self.quota.limit} bytes (cache.quota), {held} of them held by files in use, pinned, "
                "being written or waiting to be uploaded",
            )
        pending = (
            self._index.pending_upload_bytes(writer.owner)
            + self._in_progress(_claimed, writer.owner)
            + self._index.claimed_elsewhere(now, self._holder, writer.owner)
        )
        if pending + size > self.upload_share:
            raise OSError(
                errno.EDQUOT,
                f"No room for an upload of {size} bytes from {writer.owner}: their uploads waiting in the cache "
                f"hold {pending} bytes, and one user may hold at most {self.upload_share} bytes "
                "(cache.upload_share of cache.quota); push them to a storage element with uploadFile first",
            )

    # --- reading

    def lookup(self, se: str, path: str) -> Entry | None:
        return self._index.find_source(se, path)

    def get(self, entry_id: str) -> Entry | None:
        return self._index.get(check_entry_id(entry_id))

    def growing(self, se: str, path: str) -> Growing | None:
        """The staging of ``path`` of ``se`` in progress in any process (the newest), None if there is none."""
        return self._growing(se=se, source_path=path)

    def growing_entry(self, entry_id: str) -> Growing | None:
        """The staging in progress that will become entry ``entry_id``, None if there is none (any more)."""
        return self._growing(entry_id=check_entry_id(entry_id))

    def _growing(self, **where: str) -> Growing | None:
        for entry_id, se, source_path, size, adler32, mtime, started, holder in self._index.growing(time.time(), **where):
            # A writer that died before its lease expired writes no more: its file is no staging.
            if holder.is_alive():
                return Growing(
                    entry_id, se, source_path, self.layout.tmp_path(entry_id), self.layout.entry_path(entry_id),
                    size, adler32, mtime, started,
                )  # fmt: skip
        return None

    def record_digest(self, entry_id: str, algorithm: str, value: str) -> None:
        """Keep a checksum computed after the entry was written (md5, sha256: asked for, once)."""
        self._index.record_digest(check_entry_id(entry_id), algorithm, value)
        self._stamp.bump()

    @_full_index_is_enospc
    def acquire_read(self, entry_id: str) -> ReadLease:
        """Keep the entry's file on disk (for every process) until ``release(lease)``.

        The caller opens ``lease.path`` itself (servers hand it to sendfile).
        """
        lease = self._take_lease(check_entry_id(entry_id), "read")
        entry = self._index.get(entry_id)
        if entry is None:  # only if recovery elsewhere found its file lost
            self._drop_lease(lease)
            raise _no_entry(entry_id)
        return ReadLease(entry, entry.path, lease)

    def release(self, lease: ReadLease) -> None:
        self._drop_lease(lease.lease_id)

    @contextmanager
    def open_read(self, entry_id: str) -> Iterator[ReadLease]:
        """``acquire_read`` for the duration of a ``with`` block."""
        lease = self.acquire_read(entry_id)
        try:
            yield lease
        finally:
            self.release(lease)

    def _take_lease(self, entry_id: str, kind: str, *, owner: str | None = None, claimed: int = 0) -> int:
        now = time.time()
        lease = self._index.add_lease(entry_id, kind, Holder.current(), now + self._lease_ttl, now, owner=owner, claimed=claimed)
        if lease is None:
            raise _no_entry(entry_id)
        return lease

    def _renew_leases(self) -> None:
        with self._books:
            undropped, self._undropped = self._undropped, set()
        for lease in undropped:
            self._drop_lease(lease)
        now = time.time()
        self._index.renew(self._holder, self._opener, now, now + self._lease_ttl)
        self._store_traffic()

    def _store_traffic(self) -> None:
        counts = self.traffic.take()
        if not counts:
            return
        try:
            self._index.add_traffic(counts)
        except BaseException:
            self.traffic.back(counts)
            raise

    @_full_index_is_enospc
    def record_check(self, entry_id: str, failure: str | None = None) -> None:
        """One revalidation of a staged copy against its source: it matched (``failure`` None), or it
        could not be compared, ``failure`` saying why. Either way its freshness starts again now:
        a source that cannot be reached is asked again when the copy is due, not by every reader."""
        self._index.record_check(check_entry_id(entry_id), time.time(), failure)
        self._stamp.bump()

    @_full_index_is_enospc
    def drop_source(self, se: str, path: str, *, tree: bool = False) -> int:
        """What every write or removal through seproxy does once the storage element has it: forget
        the cached copies of ``path`` on ``se`` (with ``tree``, of every file below it too).

        Atomic for every process: after the one index transaction no lookup,
        link or ``getFile`` name reaches them, so no new reader gets the old
        bytes. A staging of ``path`` in progress is waited for (it holds the
        same lock) and dropped with the rest. A copy being read stays for
        its readers until their leases go, unpinned and marked least
        recently used, so that the next eviction or purge takes it first; the
        others are removed now. Returns how many copies were dropped."""
        with self._locks.hold(_staging_lock(se, path)):
            dropped = self._index.drop_source(se, path, time.time(), tree=tree)
        entries = [entry for entry in map(self._index.get, dropped) if entry is not None]
        self.delete_batch(entries, force=True)
        if dropped:
            self._stamp.bump()
        return len(dropped)

    def changes(self) -> int:
        """A count of the changes that readers holding an entry must see (copies dropped by a write,
        marked stale or fresh again), from any process: a reader that keeps an entry in memory reads
        the index again only when the count moved. The side server asks once per download."""
        return self._stamp.read()

    # --- names, pins, uploads

    @_full_index_is_enospc
    def set_alias(self, owner: str, name: str, entry_id: str) -> None:
        """Make ``(owner, name)``, such as a user's ``getFile/<basename>``, resolve to the entry."""
        try:
            replaced = self._index.set_alias(owner, name, check_entry_id(entry_id))
        except KeyError:
            raise _no_entry(entry_id) from None
        self._release_replaced(replaced, entry_id)

    def resolve_alias(self, owner: str, name: str) -> Entry | None:
        return self._index.resolve_alias(owner, name)

    def aliases(self, owner: str, prefix: str) -> dict[str, Entry]:
        """The names of ``owner`` that start with ``prefix`` (``getFile/``), with the entries they resolve to."""
        return self._index.aliases(owner, prefix)

    def _release_replaced(self, replaced: str | None, by: str) -> None:
        # A client that sends putFile/x again replaces the earlier upload, which
        # will never be pushed now: without this it would stay pending for ever.
        if replaced is not None and replaced != by:
            self.mark_uploaded(replaced)

    @_full_index_is_enospc
    def pin(self, entry_id: str, until: float) -> None:
        """Keep the entry until ``until`` (epoch seconds), as long as a URL to it is valid."""
        if not self._index.pin(check_entry_id(entry_id), until):
            raise _no_entry(entry_id)

    @_full_index_is_enospc
    def mark_uploaded(self, entry_id: str) -> None:
        """The storage element has the file: release it now (removed at once unless in use)."""
        if self._index.clear_upload_pending(check_entry_id(entry_id)):
            self._delete(self._index.get(entry_id), force=False)

    # --- removing

    @_full_index_is_enospc
    def remove(self, entry_id: str, *, force: bool = False) -> bool:
        """Remove an entry; return False if it is absent or in use.

        In use means read (by any process) or being written; without
        ``force`` also pinned or still owed to a storage element. A read
        lease always wins, even over ``force``.
        """
        return self._delete(self.get(entry_id), force=force)

    def hold(self, entry_id: str, *, force: bool = False) -> str | None:
        """Why ``remove`` would refuse the entry now ("in use", "pinned", "owed to a storage
        element", "gone"); None if it would remove it."""
        return self._index.hold(check_entry_id(entry_id), time.time(), force=force)

    def _delete(self, entry: Entry | None, *, force: bool) -> bool:
        return entry is not None and bool(self.delete_batch([entry], force=force))

    def delete_batch(self, entries: list[Entry], *, force: bool) -> list[Entry]:
        """Remove those of ``entries`` not in use (see ``remove``) in one transaction; return them."""
        deleted = set(self._index.delete([entry.id for entry in entries], time.time(), force=force))
        gone = [entry for entry in entries if entry.id in deleted]
        # After the commit; the index lists these files until they are gone, for recovery after a crash here.
        for entry in gone:
            entry.path.unlink(missing_ok=True)
        if gone:
            self._index.unlinked([entry.id for entry in gone])
        return gone

    @_full_index_is_enospc
    def evict(self) -> list[Entry]:
        """Evict least recently used entries if usage is past the high watermark."""
        target = self.quota.target(self._total())
        return [] if target is None else self._evict_down_to(target)

    def _evict_down_to(self, target: int) -> list[Entry]:
        with self._locks.hold("evict"):  # one eviction at a time, over all processes
            now = time.time()
            reap_dead_writers(self.layout, self._index, now)
            candidates = self._index.scan(releasable_at=now, page=_EVICTION_PAGE)
            decisions = give_up_lru(candidates, self._total(), target, partial(self.delete_batch, force=False))
            removed = [entry for entry, gone in decisions if gone]
        if removed:
            self.evictions += len(removed)
            self.on_count("evicted", len(removed))
            log.info("cache evicted %d entries, %d bytes", len(removed), sum(e.size for e in removed))
        return removed

    # --- for the operator

    def entries(self, *, area: Area | None = None, se: str | None = None, owner: str | None = None) -> list[Entry]:
        """Entries matching every given field, least recently used first."""
        return list(self.scan(area=area, se=se, owner=owner))

    def scan(
        self,
        *,
        area: Area | None = None,
        se: str | None = None,
        owner: str | None = None,
        older_than: float | None = None,
        unused_for: float | None = None,
        limit: int | None = None,
    ) -> Iterator[Entry]:
        """Entries matching every given condition, least recently used first, read
        as they are consumed (constant memory, whatever the size of the cache).
        ``older_than``, ``unused_for``: seconds since created, since last used."""
        now = time.time()
        return self._index.scan(
            area=area,
            se=se,
            owner=owner,
            created_before=None if older_than is None else now - older_than,
            accessed_before=None if unused_for is None else now - unused_for,
            limit=limit,
        )

    def sample(self, count: int) -> list[Entry]:
        """About ``count`` entries picked at random (a spot check of a large cache)."""
        return self._index.sample(count)

    def check_everything(self) -> None:
        """Compare every file with every row and reconcile them (files without row,
        rows whose file is missing or short). Its cost grows with the cache, so it
        runs only when asked (and once after an upgrade from an index without crash marks)."""
        check_everything(self.layout, self._index)

    def orphans(self) -> Iterator[Path]:
        """Files under ``data/`` that no entry describes (a full walk of the cache: the operator's check)."""
        return orphans(self.layout, self._index)

    def usage(self) -> Usage:
        totals = self._index.totals()
        by_area: dict[str, int] = {}
        by_se: dict[str, int] = {}
        entries_by_area: dict[str, int] = {}
        entries_by_se: dict[str, int] = {}
        for area, se, size, count in totals:
            by_area[area] = by_area.get(area, 0) + size
            entries_by_area[area] = entries_by_area.get(area, 0) + count
            if se is not None:
                by_se[se] = by_se.get(se, 0) + size
                entries_by_se[se] = entries_by_se.get(se, 0) + count
        return Usage(
            total=sum(by_area.values()),
            count=sum(entries_by_area.values()),
            by_area=by_area,
            by_se=by_se,
            entries_by_area=entries_by_area,
            entries_by_se=entries_by_se,
            quota=self.quota.limit,
            high_watermark=self.quota.high_bytes,
            low_watermark=self.quota.low_bytes,
            disk_free=self.space.free(),
            staging=len(self._index.leased(time.time(), "write")),
            traffic=traffic_by_se(self._index.traffic()),
        )

    def _total(self) -> int:
        return self._index.total_size()
