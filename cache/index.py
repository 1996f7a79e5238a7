"""The persistent index: entries, per-user names and leases, in SQLite.

The service and the operator CLI open the same file at the same time, so the
index runs in WAL mode (readers never wait for the writer), every change is
one short ``BEGIN IMMEDIATE`` transaction, and a busy database is waited for
(``busy_timeout``) instead of failing. Every rule that must hold across
processes ("never delete an entry someone is reading") is written as one SQL
statement, so it is checked and applied atomically.

All SQL of the cache lives here; the policy (what to delete, when) does not.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seproxy.cache.entry import Entry
from seproxy.cache.leases import Holder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    area TEXT NOT NULL CHECK (area IN ('staged', 'upload', 'http')),
    size INTEGER NOT NULL,
    xxh3 TEXT NOT NULL,
    adler32 TEXT,
    se TEXT,
    source_path TEXT,
    owner TEXT,
    name TEXT,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    pinned_until REAL NOT NULL DEFAULT 0,
    upload_pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_source ON entries (se, source_path);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access);
CREATE TABLE IF NOT EXISTS aliases (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE INDEX IF NOT EXISTS aliases_entry ON aliases (entry_id);
-- kind 'read': the file must stay; kind 'write': a staging or upload is
-- writing tmp/<entry_id> (and then commits it) in the holder process.
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    entry_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('read', 'write')),
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_entry ON leases (entry_id);
PRAGMA user_version = 1;
"""

# The columns of an entry, in the order of the Entry fields (path is derived).
_FIELDS = (
    "id", "area", "size", "xxh3", "adler32", "se", "source_path", "owner", "name",
    "created", "last_access", "pinned_until", "upload_pending",
)  # fmt: skip
_COLUMNS = ", ".join(_FIELDS)
_ENTRY_COLUMNS = ", ".join(f"e.{field}" for field in _FIELDS)
# An entry is in use while any lease on it has not expired (dead holders'
# leases are removed by reap_leases before this matters).
_IN_USE = "EXISTS (SELECT 1 FROM leases l WHERE l.entry_id = e.id AND l.expires > :now)"
# An upload still owed keeps its entry until it is older than the upload lifetime:
# then its sender has given up on it, and it may go like any other entry.
_RELEASABLE = (
    f"NOT {_IN_USE} AND e.pinned_until <= :now AND (e.upload_pending = 0 OR e.created <= :now - :upload_lifetime)"
)


class Index:
    """One connection to the index, shared by the threads of one process."""

    def __init__(
        self, path: Path, path_of: Callable[[str], Path], *, busy_timeout: float = 30.0, upload_lifetime: float = 86400.0
    ) -> None:
        self._path_of = path_of
        self._upload_lifetime = upload_lifetime
        # One connection behind a lock: transactions are short, and sqlite
        # connections must not be used by two threads at once.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL is crash-safe in WAL mode; only a power cut may lose the last commits.
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested uses join the outer one."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _change(self, sql: str, params: Any = ()) -> int:
        with self.transaction():
            return self._db.execute(sql, params).rowcount

    def _entries(self, where: str, params: Any = (), order: str = "e.last_access, e.id") -> list[Entry]:
        rows = self._rows(f"SELECT {_ENTRY_COLUMNS} FROM entries e WHERE {where} ORDER BY {order}", params)
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        *fields, upload_pending = row
        return Entry(*fields, upload_pending=bool(upload_pending), path=self._path_of(row[0]))  # type: ignore[misc]

    # --- entries

    def insert(self, entry: Entry) -> None:
        values = ", ".join(f":{field}" for field in _FIELDS)
        self._change(f"INSERT INTO entries ({_COLUMNS}) VALUES ({values})", vars(entry))

    def get(self, entry_id: str) -> Entry | None:
        found = self._entries("e.id = ?", (entry_id,))
        return found[0] if found else None

    def find_source(self, se: str, source_path: str) -> Entry | None:
        """The newest staged copy of a source (a forced re-stage may leave an older one in use)."""
        found = self._entries(
            "e.area = 'staged' AND e.se = ? AND e.source_path = ?", (se, source_path), "e.created DESC"
        )
        return found[0] if found else None

    def select(self, *, area: str | None, se: str | None, owner: str | None) -> list[Entry]:
        """Entries matching every given field, least recently used first."""
        wanted = {"area": area, "se": se, "owner": owner}
        conditions = [f"e.{column} = :{column}" for column, value in wanted.items() if value is not None]
        return self._entries(" AND ".join(conditions) or "1", wanted)

    def releasable(self, now: float) -> list[Entry]:
        """Entries nobody needs (no lease, pin or upload still owed), least recently used first."""
        return self._entries(_RELEASABLE, {"now": now, "upload_lifetime": self._upload_lifetime})

    def ids(self) -> set[str]:
        return {row[0] for row in self._rows("SELECT id FROM entries")}

    def touch(self, entry_id: str, now: float) -> None:
        self._change("UPDATE entries SET last_access = ? WHERE id = ?", (now, entry_id))

    def pin(self, entry_id: str, until: float) -> bool:
        # Several URLs may point at one entry: keep the latest expiry.
        sql = "UPDATE entries SET pinned_until = MAX(pinned_until, ?) WHERE id = ?"
        return self._change(sql, (until, entry_id)) == 1

    def clear_upload_pending(self, entry_id: str) -> bool:
        """Clear the flag; False if the entry owed nothing (so releasing twice is harmless)."""
        sql = "UPDATE entries SET upload_pending = 0 WHERE id = ? AND upload_pending = 1"
        return self._change(sql, (entry_id,)) == 1

    def delete(self, entry_id: str, now: float, *, force: bool) -> Entry | None:
        """Delete the row (and its names) unless in use; return what was deleted.

        A live lease always wins. Without ``force`` a pin or an upload still
        owed also keep the entry. The caller unlinks the file after this
        commits; a crash in between leaves a file without a row, which the
        next open removes.
        """
        rule = f"NOT {_IN_USE}" if force else _RELEASABLE
        with self.transaction():
            rows = self._db.execute(
                f"DELETE FROM entries AS e WHERE e.id = :id AND {rule} RETURNING {_COLUMNS}",
                {"id": entry_id, "now": now, "upload_lifetime": self._upload_lifetime},
            ).fetchall()
            if not rows:
                return None
            self._db.execute("DELETE FROM aliases WHERE entry_id = ?", (entry_id,))
        return self._entry(rows[0])

    def drop(self, entry_ids: set[str]) -> None:
        """Forget rows whose file is gone (recovery)."""
        with self.transaction():
            for entry_id in entry_ids:
                self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
                self._db.execute("DELETE FROM aliases WHERE entry_id = ?", (entry_id,))

    def total_size(self) -> int:
        total: int = self._rows("SELECT COALESCE(SUM(size), 0) FROM entries")[0][0]
        return total

    def totals(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(bytes by area, bytes by SE, number of entries)."""
        by_area = dict(self._rows("SELECT area, SUM(size) FROM entries GROUP BY area"))
        by_se = dict(self._rows("SELECT se, SUM(size) FROM entries WHERE se IS NOT NULL GROUP BY se"))
        (count,) = self._rows("SELECT COUNT(*) FROM entries")[0]
        return by_area, by_se, count

    # --- per-user names

    def set_alias(self, owner: str, name: str, entry_id: str) -> str | None:
        """Point (owner, name) at an existing entry (``KeyError`` if there is none);
        return the entry it pointed at before."""
        with self.transaction():
            before = self._rows("SELECT entry_id FROM aliases WHERE owner = ? AND name = ?", (owner, name))
            added = self._db.execute(
                "INSERT INTO aliases (owner, name, entry_id) SELECT ?, ?, id FROM entries WHERE id = ?"
                " ON CONFLICT (owner, name) DO UPDATE SET entry_id = excluded.entry_id",
                (owner, name, entry_id),
            ).rowcount
            if not added:
                raise KeyError(entry_id)
        return before[0][0] if before else None

    def resolve_alias(self, owner: str, name: str) -> Entry | None:
        found = self._entries(
            "e.id = (SELECT entry_id FROM aliases WHERE owner = ? AND name = ?)", (owner, name)
        )
        return found[0] if found else None

    def aliases(self, owner: str, prefix: str) -> dict[str, Entry]:
        rows = self._rows(
            f"SELECT a.name, {_ENTRY_COLUMNS} FROM aliases a JOIN entries e ON e.id = a.entry_id"
            " WHERE a.owner = ? AND substr(a.name, 1, ?) = ? ORDER BY a.name",
            (owner, len(prefix), prefix),
        )
        return {row[0]: self._entry(row[1:]) for row in rows}

    # --- leases

    def add_lease(self, entry_id: str, kind: str, holder: Holder, expires: float, now: float) -> int | None:
        """Record a lease; a read lease only on an existing entry (then also its last access)."""
        with self.transaction():
            touched = "UPDATE entries SET last_access = ? WHERE id = ?"
            if kind == "read" and self._db.execute(touched, (now, entry_id)).rowcount == 0:
                return None
            cursor = self._db.execute(
                "INSERT INTO leases (entry_id, kind, pid, pid_start, expires) VALUES (?, ?, ?, ?, ?)",
                (entry_id, kind, holder.pid, holder.start, expires),
            )
            return cursor.lastrowid

    def drop_lease(self, lease_id: int) -> None:
        self._change("DELETE FROM leases WHERE id = ?", (lease_id,))

    def renew_leases(self, holder: Holder, expires: float) -> None:
        self._change(
            "UPDATE leases SET expires = ? WHERE pid = ? AND pid_start IS ?", (expires, holder.pid, holder.start)
        )

    def reap_leases(self, now: float, is_alive: Callable[[Holder], bool]) -> int:
        """Remove expired leases and those of dead processes; return how many."""
        holders = {Holder(pid, start) for pid, start in self._rows("SELECT DISTINCT pid, pid_start FROM leases")}
        with self.transaction():
            removed = self._db.execute("DELETE FROM leases WHERE expires <= ?", (now,)).rowcount
            for holder in holders:
                if not is_alive(holder):
                    removed += self._db.execute(
                        "DELETE FROM leases WHERE pid = ? AND pid_start IS ?", (holder.pid, holder.start)
                    ).rowcount
        return removed

    def leased(self, now: float, kind: str | None = None) -> set[str]:
        """Ids of entries (or files being written) under a live lease."""
        rows = self._rows(
            "SELECT DISTINCT entry_id FROM leases WHERE expires > ? AND (? IS NULL OR kind = ?)", (now, kind, kind)
        )
        return {row[0] for row in rows}
