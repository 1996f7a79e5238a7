"""The persistent index: entries, per-user names and leases, in SQLite.

The service and the operator CLI open the same file at the same time, so the
index runs in WAL mode (readers never wait for the writer), every change is
one short ``BEGIN IMMEDIATE`` transaction, and a busy database is waited for
(``busy_timeout``) instead of failing. Every rule that must hold across
processes ("never delete an entry someone is reading") is written as one SQL
statement, so it is checked and applied atomically.

Nothing here reads the whole table on a path that runs often: totals are
kept by triggers, eviction and listings walk the LRU index a page at a time
and stop when they have enough, so the cost of an operation follows what it
touches, not the number of entries (a site cache holds millions).

All SQL of the cache lives here; the policy (what to delete, when) does not.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seproxy.cache.entry import Entry
from seproxy.cache.leases import Holder

# A growing file's row as stored, and the holder of its write lease.
GrowingRow = tuple[str, str, str, int | None, str | None, float | None, float, Holder]

# The schema grows by steps: step N brings an index of version N - 1 to version
# N, so an index left by any earlier release is brought up to date when a
# writer opens it (a site upgrades in place) and the same steps build a new one.
_ENTRIES_V1 = """
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
"""

# Bytes and entries by (area, SE), kept by triggers in the transaction that
# changes an entry, so that quota checks, metrics and `cache du` read a few
# rows whatever the size of the cache ('' stands for "no SE").
_RUNNING_TOTALS_V2 = """
CREATE TABLE totals (
    area TEXT NOT NULL,
    se TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    PRIMARY KEY (area, se)
);
CREATE TRIGGER totals_insert AFTER INSERT ON entries BEGIN
    INSERT INTO totals (area, se, bytes, entries) VALUES (NEW.area, COALESCE(NEW.se, ''), NEW.size, 1)
    ON CONFLICT (area, se) DO UPDATE SET bytes = bytes + excluded.bytes, entries = entries + 1;
END;
CREATE TRIGGER totals_delete AFTER DELETE ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size, entries = entries - 1
    WHERE area = OLD.area AND se = COALESCE(OLD.se, '');
END;
CREATE TRIGGER totals_update AFTER UPDATE OF area, se, size ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size, entries = entries - 1
    WHERE area = OLD.area AND se = COALESCE(OLD.se, '');
    INSERT INTO totals (area, se, bytes, entries) VALUES (NEW.area, COALESCE(NEW.se, ''), NEW.size, 1)
    ON CONFLICT (area, se) DO UPDATE SET bytes = bytes + excluded.bytes, entries = entries + 1;
END;
INSERT INTO totals (area, se, bytes, entries)
    SELECT area, COALESCE(se, ''), SUM(size), COUNT(*) FROM entries GROUP BY area, COALESCE(se, '');
"""

# Eviction and listings walk (last_access, id) in index order and stop early;
# `--older-than` and crash recovery find entries by creation time.
_ORDERS_V3 = """
DROP INDEX entries_lru;
CREATE INDEX entries_lru ON entries (last_access, id);
CREATE INDEX entries_created ON entries (created);
"""

# What lets an open skip the full scan: every writing process is listed in
# `openers` while it has the cache open (a row left by a dead process marks a
# crash), and a row deleted before its file is unlinked is listed in
# `unlinking` until the file is gone.
_CRASH_MARKS_V4 = """
CREATE TABLE openers (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    opened REAL NOT NULL,
    seen REAL NOT NULL
);
CREATE TABLE unlinking (entry_id TEXT PRIMARY KEY);
"""

# What the grid HTTP conventions need of an entry: when the source last modified
# the file (Last-Modified), and checksums computed on first request (hex).
_DIGESTS_V5 = """
ALTER TABLE entries ADD COLUMN source_mtime REAL;
ALTER TABLE entries ADD COLUMN md5 TEXT;
ALTER TABLE entries ADD COLUMN sha256 TEXT;
"""

# Bytes by storage element and kind (hit, miss, stream-through: see ``traffic``), added to by
# every process's heartbeat, read by `cache du`.
_TRAFFIC_V6 = """
CREATE TABLE traffic (
    se TEXT NOT NULL,
    kind TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (se, kind)
);
"""

# Stagings in progress, announced by their writer so that a reader in any
# process can follow the file while it grows (stream while staging). A row
# lives only while its writer's write lease does: it is deleted in the
# commit's transaction, at abort, and with the leases of dead writers.
_GROWING_V7 = """
CREATE TABLE growing (
    entry_id TEXT PRIMARY KEY,
    se TEXT NOT NULL,
    source_path TEXT NOT NULL,
    size INTEGER,
    adler32 TEXT,
    source_mtime REAL,
    started REAL NOT NULL
);
CREATE INDEX growing_source ON growing (se, source_path);
"""

# Freshness: when a staged copy was last revalidated against its source (and why that failed), and
# when a write through seproxy dropped it (kept only for the readers it had then).
_FRESHNESS_V8 = """
ALTER TABLE entries ADD COLUMN checked REAL;
ALTER TABLE entries ADD COLUMN unverified TEXT;
ALTER TABLE entries ADD COLUMN dropped REAL;
"""

# Uploads in progress, on their write lease: whose, and how many bytes they announced, so that
# one user's share of the quota holds over all the processes that take uploads (worker processes).
_UPLOAD_CLAIMS_V9 = """
ALTER TABLE leases ADD COLUMN owner TEXT;
ALTER TABLE leases ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;
"""

_MIGRATIONS = (
    _ENTRIES_V1, _RUNNING_TOTALS_V2, _ORDERS_V3, _CRASH_MARKS_V4, _DIGESTS_V5, _TRAFFIC_V6, _GROWING_V7,
    _FRESHNESS_V8, _UPLOAD_CLAIMS_V9,
)  # fmt: skip
SCHEMA_VERSION = len(_MIGRATIONS)
# From this version on, a crash leaves marks; an index of an earlier version
# gets one full consistency check when it is upgraded.
CRASH_MARKS_VERSION = 4

# The columns of an entry, by Entry field (path is derived).
_FIELDS = (
    "id", "area", "size", "xxh3", "adler32", "se", "source_path", "owner", "name",
    "created", "last_access", "pinned_until", "upload_pending", "source_mtime", "md5", "sha256",
    "checked", "unverified", "dropped",
)  # fmt: skip
# The checksums that may be recorded after the entry was written (column names): adler32 for
# entries written before it was always computed.
_RECORDED_DIGESTS = ("adler32", "md5", "sha256")
_COLUMNS = ", ".join(_FIELDS)
_ENTRY_COLUMNS = ", ".join(f"e.{field}" for field in _FIELDS)
_ALIAS_OF = "SELECT entry_id FROM aliases WHERE owner = ? AND name = ?"
# An entry is in use while any lease on it has not expired (dead holders'
# leases are removed by reap_leases before this matters).
_IN_USE = "EXISTS (SELECT 1 FROM leases l WHERE l.entry_id = e.id AND l.expires > :now)"
# What keeps an entry, first match first: (reason, condition, yields to force).
# An upload still owed keeps its entry until it is older than the upload lifetime:
# then its sender has given up on it, and it may go like any other entry.
_HOLDS = (
    ("in use", _IN_USE, False),
    ("pinned", "e.pinned_until > :now", True),
    ("owed to a storage element", "e.upload_pending = 1 AND e.created > :now - :upload_lifetime", True),
)


def _hold(*, force: bool) -> str:
    """SQL: why entry ``e`` must stay, NULL when it may go. The one rule that deleting, evicting
    and a purge's dry run all apply."""
    cases = " ".join(f"WHEN {condition} THEN '{reason}'" for reason, condition, yields in _HOLDS if not (force and yields))
    return f"(CASE {cases} END)"


_RELEASABLE = f"{_hold(force=False)} IS NULL"


def _statements(script: str) -> Iterator[str]:
    """The statements of a script one by one (a trigger's body holds semicolons of its own)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in the schema: {pending!r}")


class OutdatedIndex(Exception):
    """A read-only opener met an index that a writer must upgrade first."""


@dataclass(frozen=True)
class Opener:
    """A process that had the cache open for writing, and when it last said it lived."""

    id: int
    holder: Holder
    opened: float
    seen: float


class Index:
    """One connection to the index, shared by the threads of one process.

    ``read_only``: the connection never writes, so it neither upgrades the
    schema nor changes anything (the operator's ``ls`` and ``du``).
    ``upgraded_from`` is the schema version the index had when opened (0: new).
    """

    def __init__(
        self,
        path: Path,
        path_of: Callable[[str], Path],
        *,
        busy_timeout: float = 30.0,
        upload_lifetime: float = 86400.0,
        read_only: bool = False,
    ) -> None:
        self._path_of = path_of
        self._upload_lifetime = upload_lifetime
        # One connection behind a lock: transactions are short, and sqlite
        # connections must not be used by two threads at once.
        self._lock = threading.RLock()
        if read_only:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self.upgraded_from = self._version()
            if self.upgraded_from != SCHEMA_VERSION:
                self._db.close()
                raise OutdatedIndex(
                    f"the cache index {path} has schema version {self.upgraded_from}, this seproxy reads version "
                    f"{SCHEMA_VERSION}: start the service or run a writing command (seproxy cache purge or verify) "
                    "once to upgrade it"
                )
            return
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        _wal_mode(self._db, busy_timeout)
        # NORMAL is crash-safe in WAL mode; only a power cut may lose the last commits.
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            self.upgraded_from = self._version()
            for step in _MIGRATIONS[self.upgraded_from :]:
                for statement in _statements(step):
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

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

    def _entries(
        self,
        where: str,
        params: Any = (),
        order: str = "e.last_access, e.id",
        limit: int = -1,
        table: str = "entries e",
    ) -> list[Entry]:
        sql = f"SELECT {_ENTRY_COLUMNS} FROM {table} WHERE {where} ORDER BY {order} LIMIT {int(limit)}"
        rows = self._rows(sql, params)
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        fields = dict(zip(_FIELDS, row))
        fields["upload_pending"] = bool(fields["upload_pending"])
        return Entry(**fields, path=self._path_of(fields["id"]))

    # --- entries

    def insert(self, entry: Entry) -> None:
        values = ", ".join(f":{field}" for field in _FIELDS)
        self._change(f"INSERT INTO entries ({_COLUMNS}) VALUES ({values})", vars(entry))

    def get(self, entry_id: str) -> Entry | None:
        found = self._entries("e.id = ?", (entry_id,))
        return found[0] if found else None

    def find_source(self, se: str, source_path: str) -> Entry | None:
        """The newest staged copy of a source (a forced re-stage may leave an older one in use), unless dropped."""
        found = self._entries(
            "e.area = 'staged' AND e.se = ? AND e.source_path = ? AND e.dropped IS NULL",
            (se, source_path),
            "e.created DESC",
        )
        return found[0] if found else None

    def scan(
        self,
        *,
        area: str | None = None,
        se: str | None = None,
        owner: str | None = None,
        created_before: float | None = None,
        accessed_before: float | None = None,
        releasable_at: float | None = None,
        limit: int | None = None,
        page: int = 500,
    ) -> Iterator[Entry]:
        """Entries matching every given condition, least recently used first.

        Read page by page along the LRU index, each page a query of its own:
        memory stays constant, no read transaction stays open (WAL checkpoints
        go on), and a caller that stops early (eviction with enough bytes
        freed, ``ls | head``) pays only for what it read. ``releasable_at``:
        only entries nobody needs at that time (no lease, pin or upload owed).
        """
        wanted: dict[str, Any] = {"area": area, "se": se, "owner": owner}
        conditions = [f"e.{column} = :{column}" for column, value in wanted.items() if value is not None]
        if created_before is not None:
            conditions.append("e.created <= :created_before")
        if accessed_before is not None:
            conditions.append("e.last_access <= :accessed_before")
        if releasable_at is not None:
            conditions.append(_RELEASABLE)
        params = {
            **wanted, "created_before": created_before, "accessed_before": accessed_before,
            "now": releasable_at, "upload_lifetime": self._upload_lifetime,
        }  # fmt: skip
        after = "(e.last_access, e.id) > (:after_access, :after_id)"
        remaining = limit
        while remaining is None or remaining > 0:
            size = page if remaining is None else min(page, remaining)
            # Along the LRU index even with an SE or owner given: another index would sort all their rows per page.
            where = " AND ".join(conditions) or "1"
            found = self._entries(where, params, limit=size, table="entries e INDEXED BY entries_lru")
            yield from found
            if len(found) < size:
                return
            if remaining is not None:
                remaining -= len(found)
            if after not in conditions:
                conditions.append(after)
            params.update(after_access=found[-1].last_access, after_id=found[-1].id)

    def sample(self, count: int) -> list[Entry]:
        """About ``count`` entries picked at random, without reading the whole table."""
        (top,) = self._rows("SELECT COALESCE(MAX(rowid), 0) FROM entries")[0]
        if top == 0 or count <= 0:
            return []
        picked: dict[str, Entry] = {}
        # Each probe takes the first row at or after a random rowid; a few misses
        # (duplicates) are made up for, but a small table cannot give more than it has.
        for _ in range(4 * count):
            if len(picked) >= count:
                break
            for entry in self._entries("e.rowid >= abs(random()) % :top + 1", {"top": top}, "e.rowid", 1):
                picked.setdefault(entry.id, entry)
        return list(picked.values())

    def created_since(self, since: float) -> list[Entry]:
        return self._entries("e.created >= ?", (since,), "e.created")

    def record_digest(self, entry_id: str, algorithm: str, value: str) -> None:
        if algorithm not in _RECORDED_DIGESTS:
            raise ValueError(f"no {algorithm!r} checksum is kept in the index")
        self._change(f"UPDATE entries SET {algorithm} = ? WHERE id = ?", (value, entry_id))

    def record_check(self, entry_id: str, now: float, failure: str | None) -> None:
        """One revalidation at ``now``: the copy matched its source, or ``failure`` says why it could not be compared."""
        self._change("UPDATE entries SET checked = ?, unverified = ? WHERE id = ?", (now, failure, entry_id))

    def drop_source(self, se: str, path: str, now: float, *, tree: bool) -> list[str]:
        """Mark the staged copies of ``path`` on ``se`` (and, with ``tree``, of every file below it)
        dropped, in one transaction: no lookup finds them, no new read lease is taken on them, their
        names and pins go and they come first for eviction; return their ids. The readers they have
        keep their leases. One range of the source index: the cost follows the copies dropped."""
        below = path.rstrip("/") + "/"
        # One range of the source index holds the path and all below it: from "<path>" up to "<path>0"
        # ('0' follows '/'); what else sorts in there ("<path>-1") is left out by the exact test.
        where = (
            "e.source_path >= :path AND e.source_path < :after"
            " AND (e.source_path = :path OR (:tree AND substr(e.source_path, 1, :length) = :below))"
        )
        with self.transaction():
            rows = self._db.execute(
                "UPDATE entries AS e SET dropped = :now, pinned_until = 0, last_access = 0"
                f" WHERE e.se = :se AND {where} AND e.area = 'staged' AND e.dropped IS NULL RETURNING id",
                {"se": se, "path": path, "tree": tree, "below": below, "length": len(below), "after": below[:-1] + "0", "now": now},
            ).fetchall()
            self._db.executemany("DELETE FROM aliases WHERE entry_id = ?", rows)
        return [entry_id for (entry_id,) in rows]

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

    def delete(self, entry_ids: list[str], now: float, *, force: bool) -> list[str]:
        """Delete the rows (and their names) not in use, in one transaction; return the ids deleted.

        A live lease always wins. Without ``force`` a pin or an upload still
        owed also keep an entry. The deleted ids are listed in ``unlinking``
        until the caller has unlinked their files (``unlinked``): a crash in
        between leaves a list that the next open works through.
        """
        if not entry_ids:
            return []
        rule = f"{_hold(force=force)} IS NULL"
        names = {f"id{number}": entry_id for number, entry_id in enumerate(entry_ids)}
        marks = ", ".join(f":{name}" for name in names)
        with self.transaction():
            rows = self._db.execute(
                f"DELETE FROM entries AS e WHERE e.id IN ({marks}) AND {rule} RETURNING id",
                {**names, "now": now, "upload_lifetime": self._upload_lifetime},
            ).fetchall()
            self._db.executemany("DELETE FROM aliases WHERE entry_id = ?", rows)
            self._db.executemany("INSERT OR IGNORE INTO unlinking (entry_id) VALUES (?)", rows)
        return [entry_id for (entry_id,) in rows]

    def hold(self, entry_id: str, now: float, *, force: bool) -> str | None:
        """Why ``delete`` would keep the entry now ("in use", "pinned", ...); None if it would delete it."""
        rows = self._rows(
            f"SELECT {_hold(force=force)} FROM entries AS e WHERE e.id = :id",
            {"id": entry_id, "now": now, "upload_lifetime": self._upload_lifetime},
        )
        return rows[0][0] if rows else "gone"

    def unlinked(self, entry_ids: list[str]) -> None:
        """The files of these deleted rows are gone."""
        with self.transaction():
            self._db.executemany("DELETE FROM unlinking WHERE entry_id = ?", [(i,) for i in entry_ids])

    def unlinking(self) -> list[str]:
        return [row[0] for row in self._rows("SELECT entry_id FROM unlinking")]

    def drop(self, entry_ids: set[str]) -> None:
        """Forget rows whose file is gone (recovery)."""
        with self.transaction():
            for entry_id in entry_ids:
                self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
                self._db.execute("DELETE FROM aliases WHERE entry_id = ?", (entry_id,))

    def has_rows(self, entry_ids: list[str]) -> set[str]:
        """Which of these ids have a row."""
        found: set[str] = set()
        for start in range(0, len(entry_ids), 500):
            chunk = entry_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found.update(row[0] for row in self._rows(f"SELECT id FROM entries WHERE id IN ({marks})", chunk))
        return found

    def held_bytes(self, now: float) -> int:
        """Bytes of the entries nothing may remove now (in use, pinned, owed): what no eviction can free.

        A scan of the table: only for an upload's admission, or when the disk is short."""
        rows = self._rows(
            f"SELECT COALESCE(SUM(e.size), 0) FROM entries e WHERE NOT ({_RELEASABLE})",
            {"now": now, "upload_lifetime": self._upload_lifetime},
        )
        held: int = rows[0][0]
        return held

    def pending_upload_bytes(self, owner: str) -> int:
        """Bytes of ``owner``'s uploads still owed to a storage element."""
        rows = self._rows(
            "SELECT COALESCE(SUM(size), 0) FROM entries WHERE area = 'upload' AND upload_pending = 1 AND owner = ?",
            (owner,),
        )
        pending: int = rows[0][0]
        return pending

    def total_size(self) -> int:
        total: int = self._rows("SELECT COALESCE(SUM(bytes), 0) FROM totals")[0][0]
        return total

    def totals(self) -> list[tuple[str, str | None, int, int]]:
        """(area, SE or None, bytes, entries) for every pair that holds entries."""
        rows = self._rows("SELECT area, se, bytes, entries FROM totals WHERE entries > 0 ORDER BY area, se")
        return [(area, se or None, size, count) for area, se, size, count in rows]

    def add_traffic(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add (SE, kind) byte counts to the stored ones, in one transaction."""
        with self.transaction():
            self._db.executemany(
                "INSERT INTO traffic (se, kind, bytes) VALUES (?, ?, ?)"
                " ON CONFLICT (se, kind) DO UPDATE SET bytes = bytes + excluded.bytes",
                [(se, kind, size) for (se, kind), size in counts.items()],
            )

    def traffic(self) -> list[tuple[str, str, int]]:
        """(SE, kind, bytes) as stored."""
        return [(se, kind, size) for se, kind, size in self._rows("SELECT se, kind, bytes FROM traffic ORDER BY se, kind")]

    # --- per-user names

    def set_alias(self, owner: str, name: str, entry_id: str) -> str | None:
        """Point (owner, name) at an existing entry (``KeyError`` if there is none);
        return the entry it pointed at before."""
        # Mostly a job asking again for the file it asked for before: a read, and no write to queue for.
        if self._rows(_ALIAS_OF, (owner, name)) == [(entry_id,)]:
            return entry_id
        with self.transaction():
            before = self._rows(_ALIAS_OF, (owner, name))
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

    def add_lease(
        self, entry_id: str, kind: str, holder: Holder, expires: float, now: float, *, owner: str | None = None, claimed: int = 0
    ) -> int | None:
        """Record a lease; a read lease only on an existing entry not dropped (then also its last access).
        ``owner`` and ``claimed``: of an upload being written, its user and announced size."""
        with self.transaction():
            touched = "UPDATE entries SET last_access = ? WHERE id = ? AND dropped IS NULL"
            if kind == "read" and self._db.execute(touched, (now, entry_id)).rowcount == 0:
                return None
            cursor = self._db.execute(
                "INSERT INTO leases (entry_id, kind, pid, pid_start, expires, owner, claimed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (entry_id, kind, holder.pid, holder.start, expires, owner, claimed),
            )
            return cursor.lastrowid

    def claimed_elsewhere(self, now: float, holder: Holder, owner: str | None = None) -> int:
        """Bytes announced by uploads that other processes than ``holder`` are writing (of ``owner`` only, if given)."""
        rows = self._rows(
            "SELECT COALESCE(SUM(claimed), 0) FROM leases WHERE kind = 'write' AND expires > ?"
            " AND NOT (pid = ? AND pid_start IS ?) AND (? IS NULL OR owner = ?)",
            (now, holder.pid, holder.start, owner, owner),
        )
        claimed: int = rows[0][0]
        return claimed

    def drop_lease(self, lease_id: int) -> None:
        self._change("DELETE FROM leases WHERE id = ?", (lease_id,))

    def renew(self, holder: Holder, opener: int, now: float, lease_expires: float) -> None:
        """The holder's heartbeat: its leases stay valid, and it still has the cache open."""
        with self.transaction():
            self._db.execute(
                "UPDATE leases SET expires = ? WHERE pid = ? AND pid_start IS ?",
                (lease_expires, holder.pid, holder.start),
            )
            self._db.execute("UPDATE openers SET seen = ? WHERE id = ?", (now, opener))

    # --- files being staged (growing)

    def announce(
        self, entry_id: str, se: str, source_path: str, size: int | None, adler32: str | None,
        source_mtime: float | None, started: float,
    ) -> None:  # fmt: skip
        """List a staging in progress (again, if its writer learnt more about it)."""
        self._change(
            "INSERT OR REPLACE INTO growing (entry_id, se, source_path, size, adler32, source_mtime, started) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry_id, se, source_path, size, adler32, source_mtime, started),
        )

    def unannounce(self, entry_id: str) -> None:
        self._change("DELETE FROM growing WHERE entry_id = ?", (entry_id,))

    def growing(self, now: float, *, se: str | None = None, source_path: str | None = None,
                entry_id: str | None = None) -> list[GrowingRow]:  # fmt: skip
        """Stagings in progress matching every given field, newest first, each with the holder of
        its live write lease (an expired lease hides its row; the caller checks the holder lives)."""
        wanted = {"se": se, "source_path": source_path, "entry_id": entry_id}
        conditions = [f"g.{column} = :{column}" for column, value in wanted.items() if value is not None]
        rows = self._rows(
            "SELECT g.entry_id, g.se, g.source_path, g.size, g.adler32, g.source_mtime, g.started, l.pid, l.pid_start"
            " FROM growing g JOIN leases l ON l.entry_id = g.entry_id AND l.kind = 'write' AND l.expires > :now"
            f" WHERE {' AND '.join(conditions) or '1'} ORDER BY g.started DESC",
            {**wanted, "now": now},
        )
        return [(*row[:7], Holder(row[7], row[8])) for row in rows]

    def reap_leases(self, now: float, is_alive: Callable[[Holder], bool]) -> tuple[int, list[str]]:
        """Remove expired leases and those of dead processes; return how many, and
        the entry ids that dead processes were writing (their files may be left over)."""
        holders = {Holder(pid, start) for pid, start in self._rows("SELECT DISTINCT pid, pid_start FROM leases")}
        dead_writes: list[str] = []
        with self.transaction():
            removed = self._db.execute("DELETE FROM leases WHERE expires <= ?", (now,)).rowcount
            for holder in holders:
                if not is_alive(holder):
                    rows = self._db.execute(
                        "DELETE FROM leases WHERE pid = ? AND pid_start IS ? RETURNING entry_id, kind",
                        (holder.pid, holder.start),
                    ).fetchall()
                    removed += len(rows)
                    dead_writes += [entry_id for entry_id, kind in rows if kind == "write"]
            # A staging whose writer lost its lease will never end: readers must stop waiting for it.
            self._db.execute("DELETE FROM growing WHERE entry_id NOT IN (SELECT entry_id FROM leases WHERE kind = 'write')")
        return removed, dead_writes

    def leased(self, now: float, kind: str | None = None) -> set[str]:
        """Ids of entries (or files being written) under a live lease."""
        rows = self._rows(
            "SELECT DISTINCT entry_id FROM leases WHERE expires > ? AND (? IS NULL OR kind = ?)", (now, kind, kind)
        )
        return {row[0] for row in rows}

    # --- processes that have the cache open

    def add_opener(self, holder: Holder, now: float) -> int:
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO openers (pid, pid_start, opened, seen) VALUES (?, ?, ?, ?)",
                (holder.pid, holder.start, now, now),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def openers(self) -> list[Opener]:
        rows = self._rows("SELECT id, pid, pid_start, opened, seen FROM openers")
        return [Opener(row_id, Holder(pid, start), opened, seen) for row_id, pid, start, opened, seen in rows]

    def drop_openers(self, opener_ids: list[int]) -> None:
        with self.transaction():
            self._db.executemany("DELETE FROM openers WHERE id = ?", [(i,) for i in opener_ids])


def _wal_mode(db: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch ``db`` to WAL; SQLite answers "locked" at once, without its busy handler, while another
    process is creating the same index, so the switch is retried until the busy timeout."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
