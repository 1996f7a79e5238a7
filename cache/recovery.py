"""Bringing the files and the index back into agreement when a cache is opened.

A process killed at any point leaves at most: a partial file in ``tmp/``, a
committed file whose row was never written or was already deleted, a row
whose file is gone, and leases of a dead process. Recovery removes each of
these. It may run while another process uses the cache (the CLI opens the
cache of a running service), so it never touches a file that a live process
is writing: such files are covered by a live ``write`` lease from before the
file is created until after its row is committed.
"""

from __future__ import annotations

import logging
import time

from seproxy.cache.index import Index
from seproxy.cache.layout import Layout
from seproxy.cache.leases import Holder

log = logging.getLogger(__name__)


def recover(layout: Layout, index: Index) -> None:
    now = time.time()
    leases = index.reap_leases(now, Holder.is_alive)
    # Order matters: list the files first, then read leases, then rows. A file
    # that exists now either still has its writer's lease, or its row was
    # committed before that lease went away.
    tmp_files = layout.tmp_files()
    data_files = layout.data_files()
    writing = index.leased(now, "write")
    rows = index.ids()

    partial = [p for p in tmp_files if p.name not in writing]
    orphans = [p for p in data_files if p.name not in rows and p.name not in writing]
    for path in partial + orphans:
        path.unlink(missing_ok=True)

    # A row is written only after its file is complete, so a missing or
    # short file means the file was lost (deleted by hand, or a power cut).
    lost = set()
    for entry in index.select(area=None, se=None, owner=None):
        try:
            intact = entry.path.stat().st_size == entry.size
        except FileNotFoundError:
            intact = False
        if not intact:
            lost.add(entry.id)
            entry.path.unlink(missing_ok=True)
    index.drop(lost)

    if leases or partial or orphans or lost:
        log.info(
            "cache %s recovered: %d stale leases, %d partial files, %d files without entry, %d entries without file",
            layout.root, leases, len(partial), len(orphans), len(lost),
        )  # fmt: skip
