"""The values the cache hands out: entries, read leases and usage totals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Area = Literal["staged", "upload"]


@dataclass(frozen=True)
class Entry:
    """One complete, verified file in the cache, as the index describes it.

    ``staged``: fetched from a storage element (``se``, ``source_path``);
    ``upload``: sent by a client, owed to a storage element while
    ``upload_pending``.
    ``name`` is the logical name (LFN) or the client's file name.
    """

    id: str
    area: Area
    size: int
    xxh3: str
    adler32: str | None
    se: str | None
    source_path: str | None
    owner: str | None
    name: str | None
    created: float
    last_access: float
    pinned_until: float
    upload_pending: bool
    path: Path
    # When the source last modified the file (staged entries whose storage told it).
    source_mtime: float | None = None
    # Checksums computed on first request (the HTTP side's Want-Digest), hex.
    md5: str | None = None
    sha256: str | None = None

    @property
    def modified(self) -> float:
        """The file's modification time as served: the source's where known, else when it was cached."""
        return self.source_mtime if self.source_mtime is not None else self.created


@dataclass(frozen=True)
class Growing:
    """A staging in progress (in any process), as its writer announced it, for readers to follow.

    The bytes are in ``tmp_path`` while they arrive; the verified file lands
    at ``final_path`` by a rename, which keeps the inode, so a reader that
    opened the temporary file reads on through the commit
    (``seproxy.cache.follow``). ``size``, ``adler32`` and ``source_mtime``
    are what the source told before the first byte, None where it told
    nothing.
    """

    entry_id: str
    se: str
    source_path: str
    tmp_path: Path
    final_path: Path
    size: int | None
    adler32: str | None
    source_mtime: float | None
    started: float


@dataclass(frozen=True)
class ReadLease:
    """Proof that ``path`` stays on disk until the lease is released."""

    entry: Entry
    path: Path
    lease_id: int


@dataclass(frozen=True)
class Usage:
    """What the operator needs to judge the cache: bytes by area and by SE, and the limits."""

    total: int
    count: int
    by_area: dict[str, int]
    by_se: dict[str, int]
    entries_by_area: dict[str, int]
    entries_by_se: dict[str, int]
    quota: int
    high_watermark: int
    low_watermark: int
    disk_free: int
    staging: int  # stagings and uploads in progress (any process)
