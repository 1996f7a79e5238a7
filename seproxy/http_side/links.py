"""What a download key designates, kept in SQLite beside the cache index.

A link is one cache entry served as itself, or several served as one tar
archive, each under a member name. Links live in ``http-links.sqlite3``
under the cache root, so a restarted service still serves the URLs it
handed out (the cache keeps their files: they are pinned until expiry).

A link served on demand (a URL of another instance, ``on_demand``) is
added under the URL's own link id, so that this instance's next requests
of that URL find it here; two such requests racing to add it keep one.

Single use: ``claim`` marks a link used in one conditional ``UPDATE``, so of
two downloads racing for it, exactly one wins, even across processes.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS links (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    archive INTEGER NOT NULL,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    single_use INTEGER NOT NULL,
    used REAL
);
CREATE INDEX IF NOT EXISTS links_expires ON links (expires);
CREATE TABLE IF NOT EXISTS members (
    link_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (link_id, position)
);
PRAGMA user_version = 1;
"""

FILE_NAME = "http-links.sqlite3"
# Links kept in memory once read (the oldest read goes first).
REMEMBERED = 4096


@dataclass(frozen=True)
class Member:
    """One file of a link: the cache entry and the name it is served under."""

    entry_id: str
    name: str


@dataclass(frozen=True)
class Link:
    """What one key designates. ``archive``: the members are served as one tar file named ``name``."""

    id: str
    name: str
    archive: bool
    owner: str
    created: float
    expires: float
    single_use: bool
    members: tuple[Member, ...]
    used: float | None = None

    @functools.cached_property
    def entry_ids(self) -> tuple[str, ...]:
        """(Asked for every download of the link: made once.)"""
        return tuple(member.entry_id for member in self.members)


class LinkStore:
    """The links of one cache root; safe to share between threads."""

    def __init__(self, cache_root: Path) -> None:
        # One connection behind a lock: the service is the only user, and every statement is short.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(cache_root / FILE_NAME, isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        # A link never changes but for the single-use mark, so the others are remembered once
        # read: downloads of a popular link then never touch the database.
        self._remembered: dict[str, Link] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, link: Link) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO links (id, name, archive, owner, created, expires, single_use)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (link.id, link.name, link.archive, link.owner, link.created, link.expires, link.single_use),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO members (link_id, position, entry_id, name) VALUES (?, ?, ?, ?)",
                [(link.id, position, m.entry_id, m.name) for position, m in enumerate(link.members)],
            )

    def get(self, link_id: str) -> Link | None:
        with self._lock:
            if link_id in self._remembered:
                return self._remembered[link_id]
            link = self._read(link_id)
            if link is not None and not link.single_use:
                self._remembered[link_id] = link
                if len(self._remembered) > REMEMBERED:
                    del self._remembered[next(iter(self._remembered))]
            return link

    def _read(self, link_id: str) -> Link | None:
        row = self._db.execute(
            "SELECT name, archive, owner, created, expires, single_use, used FROM links WHERE id = ?", (link_id,)
        ).fetchone()
        if row is None:
            return None
        members = self._db.execute(
            "SELECT entry_id, name FROM members WHERE link_id = ? ORDER BY position", (link_id,)
        ).fetchall()
        name, archive, owner, created, expires, single_use, used = row
        return Link(
            link_id, name, bool(archive), owner, created, expires, bool(single_use),
            tuple(Member(*member) for member in members), used,
        )  # fmt: skip

    def claim(self, link_id: str, now: float) -> bool:
        """Mark a single-use link used; False if it already was."""
        with self._lock:
            cursor = self._db.execute("UPDATE links SET used = ? WHERE id = ? AND used IS NULL", (now, link_id))
            return cursor.rowcount == 1

    def forget_expired(self, before: float) -> int:
        """Delete links that expired before ``before``; return how many."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM members WHERE link_id IN (SELECT id FROM links WHERE expires < ?)", (before,))
            return self._db.execute("DELETE FROM links WHERE expires < ?", (before,)).rowcount
