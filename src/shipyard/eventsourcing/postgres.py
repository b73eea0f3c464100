"""PostgreSQL event store: concurrent appenders, and a global order no reader can skip.

Why not ``ORDER BY position``: positions come from a sequence when a row is INSERTED, but
transactions COMMIT in any order. A reader that saw position 7 (committed) while 6 was
still in flight would checkpoint 7 and skip 6 forever. Stores that fix this with an
exclusive table lock around every append (the ``eventsourcing`` library) serialise all
writers.

What we do instead (the ``xid8`` / snapshot-xmin technique): each row records the id of
the transaction that wrote it (``tx_id xid8``). ``pg_snapshot_xmin(pg_current_snapshot())``
is the oldest transaction still in flight; every row with ``tx_id`` below it is final
(committed, or rolled back and gone), and no future transaction can get an id below it.
Readers only return rows below that high-water mark and order them by
``(tx_id, position)``, not by position alone — ordering by position among final rows can
still skip (an OLDER transaction may hold a LOWER position and commit last). Because new
rows only ever appear after the mark, the order of everything a reader has seen never
changes, so "events after my checkpoint" is always complete. Appenders take no shared lock:
one stream's appenders meet on that stream's ``es_streams`` row, nothing else.

The checkpoint stays a single ``position``: ``read_all`` looks up its row's ``tx_id`` to
continue from ``(tx_id, position)``. Positions are therefore unique and increase within a
transaction, but not necessarily across transactions; use them as cursors, not counters.
A very long write transaction anywhere in the cluster holds the mark back (readers wait,
they never skip).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from shipyard.core import ConfigError
from shipyard.eventsourcing.errors import ConcurrencyError
from shipyard.eventsourcing.store import (
    EVENTS,
    SNAPSHOTS,
    STREAMS,
    Commit,
    NewEvent,
    SqlEventStore,
    StoredEvent,
)
from shipyard.storage import Database, Transaction
from shipyard.storage.group_commit import WriteAlone

_AFTER = (
    f"(tx_id, position) > (COALESCE((SELECT tx_id FROM {EVENTS} WHERE position = ?), '0'::xid8), ?)"
)
_FINAL = "tx_id < pg_snapshot_xmin(pg_current_snapshot())"
_VERSION_SQL = f"SELECT version FROM {STREAMS} WHERE stream_id = ?"

# An append is ONE statement (one round trip): move the stream's version with a
# compare-and-set, then insert the events only if it moved; the answer is how many went
# in (0: the stream was not at the expected version, nothing written). Creating a stream
# inserts its row; ON CONFLICT DO NOTHING makes a second creator find no row to move.
_ADD_EVENTS = f"""added AS (
    INSERT INTO {EVENTS} (stream_id, version, event_id, name, body, recorded_at)
    SELECT ?, ?::bigint + e.ord, e.event_id, e.name, e.body, ?
    FROM unnest(?::text[], ?::text[], ?::bytea[]) WITH ORDINALITY AS e(event_id, name, body, ord)
    WHERE EXISTS (SELECT FROM moved) ORDER BY e.ord RETURNING 1
)
SELECT count(*) FROM added"""
_CREATE = f"""WITH moved AS (
    INSERT INTO {STREAMS} (stream_id, version) VALUES (?, ?)
    ON CONFLICT (stream_id) DO NOTHING RETURNING version
), {_ADD_EVENTS}"""
_MOVE = f"""WITH moved AS (
    UPDATE {STREAMS} SET version = ? WHERE stream_id = ? AND version = ? RETURNING version
), {_ADD_EVENTS}"""


class PostgresEventStore(SqlEventStore):
    """Event store in a service's PostgreSQL database (see :class:`EventStore`).

    ``group_commit`` (default 4) transactions may append at once, each batching the appends
    that queue behind it.
    """

    _read_all_sql = (
        f"SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
        f" WHERE {_AFTER} AND {_FINAL} ORDER BY tx_id, position LIMIT ?"
    )
    _count_after_sql = f"SELECT count(*) FROM {EVENTS} WHERE {_AFTER} AND {_FINAL}"

    def __init__(self, db: Database, **options: Any) -> None:
        options.setdefault("group_commit", 4)
        super().__init__(db, **options)

    def _append_statement(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> tuple[Any, ...]:
        """The append's statement and its parameters."""
        if expected_version < 0:
            raise ConfigError("expected_version", expected_version, "must be >= 0")
        added = (
            stream_id,
            expected_version,
            self._clock.now(),
            [event.event_id for event in events],
            [event.name for event in events],
            [event.body for event in events],
        )
        new_version = expected_version + len(events)
        if expected_version == 0:
            return (_CREATE, stream_id, new_version, *added)
        return (_MOVE, new_version, stream_id, expected_version, *added)

    async def append_in(
        self, tx: Transaction, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """Compare-and-set the stream version and insert ``events``, in one statement."""
        statement = self._append_statement(stream_id, events, expected_version)
        if not events:
            return expected_version
        row = await tx.fetchone(*statement)
        if row is None or not row[0]:
            row = await tx.fetchone(_VERSION_SQL, stream_id)
            raise ConcurrencyError(stream_id, expected_version, 0 if row is None else row[0])
        if self._listeners:
            tx.after_commit(self._notify)
        return expected_version + len(events)

    def _alone_writer(self) -> WriteAlone[Commit, int] | None:
        return None if self._statement is None else self._write_alone

    def _write_alone(self, commit: Commit) -> Awaitable[int] | None:
        # Extra writes (snapshot, outbox) need the transaction.
        if commit.extra is not None or not commit.events:
            return None
        return self._append_alone(commit)

    async def _append_alone(self, commit: Commit) -> int:
        """A lone append as ONE statement, a transaction by itself (one round trip)."""
        assert self._statement is not None
        statement = self._append_statement(commit.stream_id, commit.events, commit.expected_version)
        rows = await self._statement(*statement)
        if not rows[0][0]:
            actual = await self.stream_version(commit.stream_id)
            raise ConcurrencyError(commit.stream_id, commit.expected_version, actual)
        if self._listeners:
            self._notify()
        return commit.expected_version + len(commit.events)

    async def read_all_in(
        self, tx: Transaction, after_position: int, limit: int
    ) -> list[StoredEvent]:
        """Global-order read inside ``tx`` (see the module docstring)."""
        rows = await tx.fetch(self._read_all_sql, after_position, after_position, limit)
        return [StoredEvent(*row) for row in rows]

    async def count_after(self, after_position: int) -> int:
        """Readable events following ``after_position`` in the global order."""
        async with self._db.transaction(readonly=True) as tx:
            row = await tx.fetchone(self._count_after_sql, after_position, after_position)
        return 0 if row is None else int(row[0])

    def _schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {STREAMS} (
                stream_id TEXT PRIMARY KEY,
                version BIGINT NOT NULL
            )""",
            f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
                position BIGSERIAL PRIMARY KEY,
                tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                event_id TEXT NOT NULL,
                name TEXT NOT NULL,
                body BYTEA NOT NULL,
                recorded_at DOUBLE PRECISION NOT NULL,
                UNIQUE (stream_id, version)
            )""",
            f"CREATE INDEX IF NOT EXISTS {EVENTS}_global ON {EVENTS} (tx_id, position)",
            f"""CREATE TABLE IF NOT EXISTS {SNAPSHOTS} (
                stream_id TEXT PRIMARY KEY,
                version BIGINT NOT NULL,
                kind TEXT NOT NULL,
                state BYTEA NOT NULL
            )""",
        ]
