"""The cache's count of changes: seen by every process at once, no change lost between writers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from seproxy.cache.layout import Layout
from seproxy.cache.stamp import SIZE, ChangeStamp

BUMPS = 300


def _bump(path: Path, times: int) -> None:
    stamp = ChangeStamp(path)
    for _ in range(times):
        stamp.bump()


def test_a_new_cache_counts_from_zero_and_a_reader_sees_another_process_count(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    assert layout.changes.stat().st_size == SIZE
    reader = ChangeStamp(layout.changes)
    assert reader.read() == 0
    process = multiprocessing.get_context("spawn").Process(target=_bump, args=(layout.changes, 3))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert reader.read() == 3  # the mapping read before the other process wrote shows its count
    reader.close()


def test_writers_in_several_processes_lose_no_change(tmp_path: Path) -> None:
    path = tmp_path / "changes"
    ChangeStamp.create(path)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_bump, args=(path, BUMPS)) for _ in range(4)]
    for writer in writers:
        writer.start()
    _bump(path, BUMPS)
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    assert ChangeStamp(path).read() == 5 * BUMPS


def test_a_stamp_of_the_earlier_kind_is_padded_and_counts_on(tmp_path: Path) -> None:
    """An earlier version grew the file by a byte per change: its count is what its bytes say, then moves."""
    path = tmp_path / "changes"
    path.write_bytes(b"...")
    ChangeStamp.create(path)
    assert path.stat().st_size == SIZE
    stamp = ChangeStamp(path)
    before = stamp.read()
    stamp.bump()
    assert stamp.read() == before + 1
    ChangeStamp.create(path)  # there already: left as it is
    assert stamp.read() == before + 1
