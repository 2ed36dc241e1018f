"""The sqlite backend: the embedded default, one file, WAL, durable.

`LocalStore` keeps the working state in memory; this module makes it durable.

Schema
- `log`    every event since the compacted revision, by (revision, seq): a
           watcher resumes from any revision newer than the compacted one,
           across restarts;
- `kv`     the keys as they stood at the compacted revision; compaction folds
           the log rows it drops into it. A change is therefore written once
           (to the log), not twice; start-up loads `kv` and replays the log;
- `leases` granted leases (id, ttl). Renewals are never written;
- `meta`   the current and the compacted revision.

Durability: `journal_mode=WAL` with `synchronous=FULL`, so a write is fsynced
before its caller is answered; a `kill -9` (or a power cut) loses nothing that
was acknowledged. Group commit in `LocalStore` amortises the fsync over every
transaction queued while the previous batch was being written.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crossway.core.clock import Clock
from crossway.store.local import LocalStore
from crossway.store.persist import (
    Changes,
    Compacted,
    LeaseGranted,
    LeaseRevoked,
    LoadedState,
    Record,
)
from crossway.store.types import Event, EventType, KeyValue, prefix_end

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, type INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL, lease INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL);
"""

PUT, DELETE = 0, 1
MEMORY_EVENTS = 50_000


class SQLitePersister:
    """Blocking; used from `LocalStore`'s single worker thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def load(self) -> LoadedState:
        db = self._db
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        kvs = {
            k: KeyValue(k, bytes(v), c, m, ver, lease)
            for k, v, c, m, ver, lease in db.execute(
                "SELECT key, value, create_revision, mod_revision, version, lease FROM kv"
            )
        }
        for row in db.execute(
            "SELECT revision, type, key, value, create_revision, version, lease FROM log "
            "ORDER BY revision, seq"
        ):
            event = _event(*row)
            if event.type is EventType.PUT:
                kvs[event.kv.key] = event.kv
            else:
                kvs.pop(event.kv.key, None)
        leases = [LeaseGranted(i, t) for i, t in db.execute("SELECT id, ttl FROM leases")]
        return LoadedState(
            revision=meta.get("revision", 0),
            compacted=meta.get("compacted", 0),
            kvs=list(kvs.values()),
            leases=leases,
        )

    def write(self, records: list[Record]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            log_rows: list[tuple[object, ...]] = []
            revision = 0
            for record in records:
                if isinstance(record, Changes):
                    log_rows.extend(_log_rows(record))
                    revision = record.revision
                else:
                    self._flush_log(log_rows)
                    self._write_other(record)
            self._flush_log(log_rows)
            if revision:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _flush_log(self, rows: list[tuple[object, ...]]) -> None:
        if rows:
            self._db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            rows.clear()

    def _write_other(self, record: Record) -> None:
        db = self._db
        if isinstance(record, LeaseGranted):
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (record.id, record.ttl))
        elif isinstance(record, LeaseRevoked):
            db.execute("DELETE FROM leases WHERE id = ?", (record.id,))
        elif isinstance(record, Compacted):
            self._fold(record.revision)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted', ?)", (record.revision,))

    def _fold(self, revision: int) -> None:
        """Move the log up to `revision` into `kv`: the last change of each key wins."""
        db = self._db
        last: dict[str, tuple[object, ...]] = {}
        for row in db.execute(
            "SELECT revision, type, key, value, create_revision, version, lease FROM log "
            "WHERE revision <= ? ORDER BY revision, seq",
            (revision,),
        ):
            last[row[2]] = row
        upserts = [
            (key, value, create, rev, version, lease)
            for key, (rev, kind, _, value, create, version, lease) in last.items()
            if kind == PUT
        ]
        deletes = [(key,) for key, row in last.items() if row[1] == DELETE]
        db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)", upserts)
        db.executemany("DELETE FROM kv WHERE key = ?", deletes)
        db.execute("DELETE FROM log WHERE revision <= ?", (revision,))

    def events_between(self, prefix: str, after: int, upto: int) -> list[Event]:
        sql = (
            "SELECT revision, type, key, value, create_revision, version, lease FROM log "
            "WHERE revision > ? AND revision <= ?"
        )
        args: list[object] = [after, upto]
        end = prefix_end(prefix)
        if prefix:
            sql += " AND key >= ?"
            args.append(prefix)
        if prefix and end is not None:
            sql += " AND key < ?"
            args.append(end)
        sql += " ORDER BY revision, seq"
        return [_event(*row) for row in self._db.execute(sql, args)]

    def close(self) -> None:
        self._db.close()


def _log_rows(record: Changes) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    revision = record.revision
    for seq, event in enumerate(record.events):
        kv = event.kv
        kind = PUT if event.type is EventType.PUT else DELETE
        rows.append(
            (revision, seq, kind, kv.key, kv.value, kv.create_revision, kv.version, kv.lease)
        )
    return rows


def _event(
    revision: int, kind: int, key: str, value: bytes, create: int, version: int, lease: int
) -> Event:
    kv = KeyValue(key, bytes(value), create, revision, version, lease)
    return Event(EventType.PUT if kind == PUT else EventType.DELETE, kv)


async def open_sqlite_store(
    path: str | Path,
    *,
    clock: Clock | None = None,
    retain_revisions: int = 100_000,
) -> LocalStore:
    """Open (creating if needed) the store in the sqlite file at `path`.

    Raises `sqlite3.DatabaseError` (wrapped by the caller into a clear message)
    when the file is not a Crossway database or cannot be opened."""
    persister = SQLitePersister(Path(path))
    try:
        state = persister.load()
    except BaseException:
        persister.close()
        raise
    return LocalStore(
        name="sqlite",
        clock=clock,
        persister=persister,
        state=state,
        memory_events=MEMORY_EVENTS,
        retain_revisions=retain_revisions,
    )
