"""SQLite event store: the global order is simply the rowid order.

SQLite has one writer at a time (every transaction starts with ``BEGIN IMMEDIATE``), so a
position is assigned and committed before the next transaction can assign one: a reader
following ``position > checkpoint`` can never miss an event committed "out of order".
With a single writer, group commit is what lets concurrent commands share the fsync.

Every statement is a hop to the connection's worker thread, and on the append path those
hops cost more than SQLite itself, so an append is ONE multi-row ``INSERT``: the
``UNIQUE (stream_id, version)`` constraint rejects a stale or duplicate version, and a
trigger rejects a version that skips ahead (expected version above the actual one). A
rejected ``INSERT`` is undone as a whole by SQLite (statement rollback) while the
transaction stays usable, so a conflict inside a group-commit batch writes nothing and
does not disturb the other appends. The stream's version is its highest event version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipyard.core import ConfigError
from shipyard.eventsourcing.errors import ConcurrencyError
from shipyard.eventsourcing.store import EVENTS, SNAPSHOTS, NewEvent, SqlEventStore
from shipyard.storage import Database, Transaction

_COLUMNS = "(stream_id, version, event_id, name, body, recorded_at)"
_ROWS_PER_INSERT = 5000  # 6 parameters each: under SQLite's 32,766-parameter limit
_VERSION_SQL = f"SELECT COALESCE(MAX(version), 0) FROM {EVENTS} WHERE stream_id = ?"


class SqliteEventStore(SqlEventStore):
    """Event store in a service's SQLite database (see :class:`EventStore`)."""

    _read_all_sql = (
        f"SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
        " WHERE position > ? ORDER BY position LIMIT ?"
    )
    _count_after_sql = f"SELECT count(*) FROM {EVENTS} WHERE position > ?"

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, **options)
        self._insert_sql: dict[int, str] = {}

    def _insert(self, rows: int) -> str:
        sql = self._insert_sql.get(rows)
        if sql is None:
            values = ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)
            sql = self._insert_sql[rows] = f"INSERT INTO {EVENTS} {_COLUMNS} VALUES {values}"
        return sql

    async def append_in(
        self, tx: Transaction, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """One ``INSERT`` of every event; the constraints decide the version check."""
        if expected_version < 0:
            raise ConfigError("expected_version", expected_version, "must be >= 0")
        if not events:
            return expected_version
        now = self._clock.now()
        params: list[Any] = []
        version = expected_version
        for event in events:
            version += 1
            params += (stream_id, version, event.event_id, event.name, event.body, now)
        try:
            # Only the first INSERT can conflict: once it is in, this transaction (the
            # only writer) owns the versions that follow.
            for first in range(0, len(events), _ROWS_PER_INSERT):
                chunk = params[first * 6 : (first + _ROWS_PER_INSERT) * 6]
                await tx.execute(self._insert(len(chunk) // 6), *chunk)
        except Exception:
            row = await tx.fetchone(_VERSION_SQL, stream_id)
            actual = 0 if row is None else int(row[0])
            if actual != expected_version:
                raise ConcurrencyError(stream_id, expected_version, actual) from None
            raise
        if self._listeners:
            tx.after_commit(self._notify)
        return version

    async def stream_version(self, stream_id: str) -> int:
        """Current version of ``stream_id`` (0 if it does not exist)."""
        async with self._db.transaction(readonly=True) as tx:
            row = await tx.fetchone(_VERSION_SQL, stream_id)
        return 0 if row is None else int(row[0])

    def _schema(self) -> list[str]:
        return [
            # INTEGER PRIMARY KEY is the rowid: the cheapest monotonic position SQLite has.
            f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
                position INTEGER PRIMARY KEY,
                stream_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                event_id TEXT NOT NULL,
                name TEXT NOT NULL,
                body BLOB NOT NULL,
                recorded_at REAL NOT NULL,
                UNIQUE (stream_id, version)
            )""",
            # Version N may only follow version N-1 of the same stream: an append whose
            # expected version is ahead of the stream fails instead of leaving a gap.
            f"""CREATE TRIGGER IF NOT EXISTS {EVENTS}_no_gaps BEFORE INSERT ON {EVENTS}
            WHEN NEW.version > 1 AND NOT EXISTS (
                SELECT 1 FROM {EVENTS} WHERE stream_id = NEW.stream_id
                AND version = NEW.version - 1
            )
            BEGIN SELECT RAISE(ABORT, 'shipyard: stream version gap'); END""",
            f"""CREATE TABLE IF NOT EXISTS {SNAPSHOTS} (
                stream_id TEXT PRIMARY KEY,
                version INTEGER NOT NULL,
                kind TEXT NOT NULL,
                state BLOB NOT NULL
            )""",
        ]
