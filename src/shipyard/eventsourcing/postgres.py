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

from typing import Any

from shipyard.eventsourcing.store import EVENTS, SNAPSHOTS, STREAMS, SqlEventStore, StoredEvent
from shipyard.storage import Database, Transaction

_AFTER = (
    f"(tx_id, position) > (COALESCE((SELECT tx_id FROM {EVENTS} WHERE position = ?), '0'::xid8), ?)"
)
_FINAL = "tx_id < pg_snapshot_xmin(pg_current_snapshot())"


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
