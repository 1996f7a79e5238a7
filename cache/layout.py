"""Where the cache keeps things on disk.

Everything lives under one root so that a rename from ``tmp/`` into ``data/``
never crosses a filesystem (it must be atomic) and so that nothing outside the
root is ever touched. Entry ids come from clients and URLs, so they are
checked before any path is built from them.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from seproxy.cache.stamp import ChangeStamp

_ENTRY_ID = re.compile(r"[0-9a-f]{32}")


def new_entry_id() -> str:
    """A fresh id: random, so ids are never reused and reveal nothing about the file."""
    return secrets.token_hex(16)


def check_entry_id(entry_id: str) -> str:
    """Return ``entry_id`` if it is well formed; raise ``ValueError`` otherwise."""
    if not isinstance(entry_id, str) or not _ENTRY_ID.fullmatch(entry_id):
        raise ValueError(f"not a cache entry id: {entry_id!r}")
    return entry_id


def is_entry_id(name: str) -> bool:
    return _ENTRY_ID.fullmatch(name) is not None


class Layout:
    """The paths of one cache root: ``data/<2 hex>/<id>``, ``tmp/<id>``, the index and the lock file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.tmp = self.root / "tmp"
        self.index = self.root / "index.sqlite3"
        self.locks = self.root / "locks"
        # The count of changes readers that hold an entry must see (``ChangeStamp``).
        self.changes = self.root / "changes"

    def create(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        ChangeStamp.create(self.changes)  # from the start: readers map it once

    def entry_path(self, entry_id: str) -> Path:
        # Fan out over 256 folders so that no folder grows too large to list.
        entry_id = check_entry_id(entry_id)
        return Path(f"{self.data}/{entry_id[:2]}/{entry_id}")  # one parse, not two joins: eviction builds many

    def tmp_path(self, entry_id: str) -> Path:
        return self.tmp / check_entry_id(entry_id)

    def data_files(self) -> list[Path]:
        """Every file under ``data/`` whose name is an entry id (other names are not ours)."""
        return [p for p in self.data.glob("??/*") if is_entry_id(p.name)]

    def tmp_files(self) -> list[Path]:
        return [p for p in self.tmp.iterdir() if is_entry_id(p.name)]
