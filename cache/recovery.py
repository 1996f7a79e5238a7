"""Bringing the files and the index back into agreement after a crash, at the cost of what a crash can leave.

A process killed at any point leaves at most: a partial file in ``tmp/``, a
committed file whose row was never written (its ``write`` lease names it),
a file whose row was deleted but which was not unlinked yet (listed in the
``unlinking`` table), and leases of a dead process. All of these are found
through the index and ``tmp/``, which hold only what was in progress, so an
open after a crash costs the same whatever the size of the cache; a clean
close (no dead opener in the index) costs nothing at all. Only a power cut
can lose more: the renames of the last moments (rows whose file vanished),
checked for the entries created shortly before the dead process last said
it lived. The whole cache is compared with the index only by
``check_everything``: once when an index from before these marks is
upgraded, and on the operator's demand (``seproxy cache verify``).

Recovery may run while another process uses the cache (the CLI opens the
cache of a running service), so it never touches a file that a live process
is writing: such files are covered by a live ``write`` lease from before the
file is created until after its row is committed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from seproxy.cache.entry import Entry
from seproxy.cache.index import Index, Opener
from seproxy.cache.layout import Layout, is_entry_id
from seproxy.cache.leases import Holder

log = logging.getLogger(__name__)

# How long before its last heartbeat a dead process's renames may not have
# reached the disk (file systems commit metadata every few seconds; this is
# generous), so that a power cut may have lost them while their rows stayed.
UNSYNCED_WINDOW = 300.0


def reap_dead_writers(layout: Layout, index: Index, now: float) -> int:
    """Drop stale leases; remove what dead writers left (the partial file, or a
    renamed file whose row was never committed); return how many leases went."""
    removed, dead_writes = index.reap_leases(now, Holder.is_alive)
    committed = index.has_rows(dead_writes)
    for entry_id in dead_writes:
        layout.tmp_path(entry_id).unlink(missing_ok=True)
        if entry_id not in committed:
            layout.entry_path(entry_id).unlink(missing_ok=True)
    return removed


def finish_unlinking(layout: Layout, index: Index) -> int:
    """Unlink the files of rows deleted by a process that died before it unlinked them."""
    pending = index.unlinking()
    for entry_id in pending:
        layout.entry_path(entry_id).unlink(missing_ok=True)
    index.unlinked(pending)
    return len(pending)


def _undo_in_progress(layout: Layout, index: Index) -> str:
    """Remove what dead processes left in progress; say what was found."""
    now = time.time()
    leases = reap_dead_writers(layout, index, now)
    # Files first, then leases: a file that exists now either still has its writer's lease, or is stale.
    tmp_files = layout.tmp_files()
    writing = index.leased(now, "write")
    partial = [path for path in tmp_files if path.name not in writing]
    for path in partial:
        path.unlink(missing_ok=True)
    unlinked = finish_unlinking(layout, index)
    return f"{leases} stale leases, {len(partial)} partial files, {unlinked} files unlinked"


def recover_after_crash(layout: Layout, index: Index, dead: list[Opener]) -> None:
    """Undo what the ``dead`` openers left half-done."""
    found = _undo_in_progress(layout, index)
    since = min(opener.seen for opener in dead) - UNSYNCED_WINDOW
    lost = _drop_lost(index, index.created_since(since))
    index.drop_openers([opener.id for opener in dead])
    holders = ", ".join(f"pid {opener.holder.pid}" for opener in dead)
    log.info("cache %s recovered after a crash of %s: %s, %d entries without file", layout.root, holders, found, lost)


def _intact(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _drop_lost(index: Index, entries: Iterable[Entry]) -> int:
    """Forget entries whose file is missing or short (lost, never written by us that way)."""
    lost = set()
    for entry in entries:
        if not _intact(entry.path, entry.size):
            lost.add(entry.id)
            entry.path.unlink(missing_ok=True)
            if len(lost) >= 500:
                index.drop(lost)
                lost.clear()
    index.drop(lost)
    return len(lost)


def orphans(layout: Layout, index: Index) -> Iterator[Path]:
    """Files under ``data/`` that no row describes and no live writer is committing.

    One fan-out folder at a time, so memory follows a folder, not the cache.
    Order matters: list the files first, then read leases, then rows. A file
    that exists now either still has its writer's lease, or its row was
    committed before that lease went away.
    """
    for folder in sorted(p for p in layout.data.iterdir() if p.is_dir() and len(p.name) == 2):
        names = [name for name in os.listdir(folder) if is_entry_id(name)]
        if not names:
            continue
        writing = index.leased(time.time(), "write")
        rows = index.has_rows(names)
        yield from (folder / name for name in names if name not in rows and name not in writing)


def check_everything(layout: Layout, index: Index) -> None:
    """Compare every file with every row (the cost grows with the cache)."""
    found = _undo_in_progress(layout, index)
    files = list(orphans(layout, index))
    for path in files:
        path.unlink(missing_ok=True)
    lost = _drop_lost(index, index.scan())
    log.info(
        "cache %s checked in full: %s, %d files without entry, %d entries without file",
        layout.root, found, len(files), lost,
    )  # fmt: skip
