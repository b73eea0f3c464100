"""The saga log port and its SQL implementation shared by the SQLite and PostgreSQL stores.

Writes take the caller's transaction, so a saga's transition commits together with the
outbox row of the command it sends (and, for a participant in the same database, with
its business change). Reads open their own transaction. Statements are written once with
``?`` placeholders; the backends differ only in their DDL (``sqlite.py``, ``postgres.py``).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Protocol

from shipyard.saga.definition import StepShape
from shipyard.saga.errors import LeaseLostError, SagaNotFound
from shipyard.saga.record import UNFINISHED, SagaRecord, SagaState, Transition, TransitionKind
from shipyard.storage import Database, Row, Transaction

SAGAS = "shipyard_sagas"
TIMELINE = "shipyard_saga_timeline"
DEFINITIONS = "shipyard_saga_definitions"

_COLUMNS = (
    "saga_id, name, version, fingerprint, state, position, attempt, awaiting, data, error,"
    " failed_step, created_at, updated_at, transitions, deadline, owner, lease_until"
)
_INSERT = (
    f"INSERT INTO {SAGAS} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Only the lease holder may write a saga's row: a writer whose lease was taken over
# updates nothing, and learns so (LeaseLostError) before it appends to the timeline.
_SET = (
    f"UPDATE {SAGAS} SET state = ?, position = ?, attempt = ?, awaiting = ?, data = ?,"
    " error = ?, failed_step = ?, updated_at = ?, transitions = ?, deadline = ?,"
    " lease_until = ? WHERE saga_id = ? AND owner IS NOT DISTINCT FROM ?"
)
_UNFINISHED = "state IN (?, ?)"
# Columns added after the first release; ``install`` adds them to older tables.
_ADDED = (("deadline", "number"), ("owner", "TEXT"), ("lease_until", "number"))
_INSERT_TIMELINE = (
    f"INSERT INTO {TIMELINE} (saga_id, seq, kind, step, attempt, error, at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class SagaLog(Protocol):
    """Durable saga records and timelines in a service's database."""

    @property
    def db(self) -> Database:
        """The database the log lives in (its transactions carry the outbox writes too)."""

    async def install(self) -> None:
        """Create the log's tables if they do not exist (idempotent)."""

    async def create(
        self, tx: Transaction, record: SagaRecord, transitions: Sequence[Transition]
    ) -> None:
        """Insert a new saga and its first timeline entries in ``tx``."""

    async def save(
        self, tx: Transaction, record: SagaRecord, transitions: Sequence[Transition]
    ) -> None:
        """Update the saga's row and append timeline entries in ``tx``."""

    async def save_many(
        self, tx: Transaction, items: Sequence[tuple[SagaRecord, Sequence[Transition]]]
    ) -> None:
        """:meth:`save` for many sagas at once (group commit)."""

    async def create_many(
        self, tx: Transaction, items: Sequence[tuple[SagaRecord, Sequence[Transition]]]
    ) -> dict[str, SagaRecord]:
        """:meth:`create` for many sagas at once, skipping ids already in the log;
        returns the existing records of those, by id."""

    async def load(self, tx: Transaction, saga_id: str) -> SagaRecord:
        """The saga's record read in ``tx``; raises :class:`SagaNotFound`."""

    async def get(self, saga_id: str) -> SagaRecord:
        """The saga's record; raises :class:`SagaNotFound`."""

    async def timeline(self, saga_id: str) -> builtins.list[Transition]:
        """Every transition of the saga, oldest first; raises :class:`SagaNotFound`."""

    async def list(
        self, *, state: SagaState | None = None, name: str | None = None, limit: int = 100
    ) -> builtins.list[SagaRecord]:
        """Sagas, newest first, optionally of one state and/or name."""

    async def unfinished(self) -> builtins.list[SagaRecord]:
        """Every saga still running or compensating, oldest first (recovery resumes them)."""

    async def record_definition(
        self, name: str, version: int, fingerprint: str, shape: Sequence[StepShape]
    ) -> None:
        """Remember a definition's shape (for diagrams and the CLI); idempotent."""

    async def definition(
        self, name: str, version: int | None = None
    ) -> tuple[int, builtins.list[StepShape]]:
        """A recorded definition's version and shape (latest version when omitted)."""

    async def claim(self, saga_id: str, owner: str, until: float, now: float) -> SagaRecord | None:
        """Take the lease of an unfinished saga that is unowned, already ``owner``'s, or
        whose lease expired by ``now`` (one conditional update); ``None`` when another
        orchestrator holds it or the saga finished."""

    async def claim_awaiting(
        self,
        tx: Transaction,
        saga_id: str,
        owner: str,
        until: float,
        *,
        state: SagaState,
        position: int,
        attempt: int,
    ) -> SagaRecord | None:
        """In ``tx``, take the lease of a saga that still awaits the reply to exactly this
        command (state, position, attempt), whoever holds it: no orchestrator drives a
        saga while it waits. ``None`` when the saga has moved on."""

    async def claimable(self, owner: str, now: float) -> builtins.list[SagaRecord]:
        """Unfinished sagas that ``owner`` may take over: unowned, or held by another
        orchestrator whose lease expired by ``now``; oldest first."""

    async def renew(self, owner: str, until: float) -> None:
        """Extend every lease ``owner`` holds on an unfinished saga to ``until``."""

    async def release(self, owner: str) -> None:
        """Give up every lease ``owner`` holds, so other orchestrators resume at once."""


class SqlSagaLog:
    """The saga log over the :class:`~shipyard.storage.Database` port."""

    DDL: ClassVar[tuple[str, ...]] = ()
    """CREATE statements for the backend (set by each backend's subclass)."""
    NUMBER: ClassVar[str] = "REAL"
    """The backend's floating-point column type."""
    COLUMNS_QUERY: ClassVar[str] = ""
    """Lists the saga table's column names (one per row)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        """The database the log lives in."""
        return self._db

    async def install(self) -> None:
        """Create the tables and indexes if missing."""
        async with self._db.transaction() as tx:
            for statement in self.DDL:
                await tx.execute(statement)
            present = {row[0] for row in await tx.fetch(self.COLUMNS_QUERY)}
            for column, kind in _ADDED:
                if column not in present:
                    kind = self.NUMBER if kind == "number" else kind
                    await tx.execute(f"ALTER TABLE {SAGAS} ADD COLUMN {column} {kind}")

    async def create(
        self, tx: Transaction, record: SagaRecord, transitions: Sequence[Transition]
    ) -> None:
        """Insert the saga row and its first transitions."""
        await tx.execute(_INSERT, *_insert_params(record))
        await self._append(tx, transitions)

    async def save(
        self, tx: Transaction, record: SagaRecord, transitions: Sequence[Transition]
    ) -> None:
        """Update the row and append the transitions; raises :class:`LeaseLostError` when
        ``record.owner`` no longer holds the saga."""
        updated = await tx.fetch(f"{_SET} RETURNING saga_id", *_update_params(record))
        if not updated:
            raise LeaseLostError([record.saga_id], record.owner)
        await self._append(tx, transitions)

    async def save_many(
        self, tx: Transaction, items: Sequence[tuple[SagaRecord, Sequence[Transition]]]
    ) -> None:
        """Update many rows and append all their transitions: two statements in all."""
        if len(items) == 1:
            await self.save(tx, *items[0])
            return
        await tx.executemany(_SET, [_update_params(record) for record, _ in items])
        # executemany reports no row counts: read back who holds each row now.
        ids = [record.saga_id for record, _ in items]
        marks = ",".join("?" * len(ids))
        rows = await tx.fetch(
            f"SELECT saga_id, owner FROM {SAGAS} WHERE saga_id IN ({marks})", *ids
        )
        owners = {row[0]: row[1] for row in rows}
        lost = [
            r.saga_id for r, _ in items if r.saga_id not in owners or owners[r.saga_id] != r.owner
        ]
        if lost:
            raise LeaseLostError(lost, items[0][0].owner)
        await self._append(tx, [t for _, transitions in items for t in transitions])

    async def create_many(
        self, tx: Transaction, items: Sequence[tuple[SagaRecord, Sequence[Transition]]]
    ) -> dict[str, SagaRecord]:
        """Three statements for the whole batch: find taken ids, insert rows, timelines."""
        ids = [record.saga_id for record, _ in items]
        marks = ",".join("?" * len(ids))
        rows = await tx.fetch(f"SELECT {_COLUMNS} FROM {SAGAS} WHERE saga_id IN ({marks})", *ids)
        existing = {row[0]: _record(row) for row in rows}
        fresh = [(r, t) for r, t in items if r.saga_id not in existing]
        if fresh:
            await tx.executemany(_INSERT, [_insert_params(r) for r, _ in fresh])
            await self._append(tx, [t for _, transitions in fresh for t in transitions])
        return existing

    async def _append(self, tx: Transaction, transitions: Sequence[Transition]) -> None:
        rows = [
            (t.saga_id, t.seq, t.kind.value, t.step, t.attempt, t.error, t.at) for t in transitions
        ]
        if len(rows) == 1:
            await tx.execute(_INSERT_TIMELINE, *rows[0])
        elif rows:
            await tx.executemany(_INSERT_TIMELINE, rows)

    async def load(self, tx: Transaction, saga_id: str) -> SagaRecord:
        """The saga's row read in ``tx``."""
        row = await tx.fetchone(f"SELECT {_COLUMNS} FROM {SAGAS} WHERE saga_id = ?", saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        return _record(row)

    async def get(self, saga_id: str) -> SagaRecord:
        """The saga's row."""
        async with self._db.transaction() as tx:
            return await self.load(tx, saga_id)

    async def timeline(self, saga_id: str) -> builtins.list[Transition]:
        """The saga's transitions in order."""
        async with self._db.transaction() as tx:
            await self.load(tx, saga_id)
            rows = await tx.fetch(
                f"SELECT saga_id, seq, kind, step, attempt, error, at FROM {TIMELINE}"
                " WHERE saga_id = ? ORDER BY seq",
                saga_id,
            )
        return [
            Transition(r[0], int(r[1]), TransitionKind(r[2]), r[3], int(r[4]), r[5], float(r[6]))
            for r in rows
        ]

    async def list(
        self, *, state: SagaState | None = None, name: str | None = None, limit: int = 100
    ) -> builtins.list[SagaRecord]:
        """Newest first, filtered by state and/or name."""
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            where.append("state = ?")
            params.append(SagaState(state).value)
        if name is not None:
            where.append("name = ?")
            params.append(name)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM {SAGAS}{clause} ORDER BY created_at DESC, saga_id LIMIT ?",
                *params,
                limit,
            )
        return [_record(row) for row in rows]

    async def unfinished(self) -> builtins.list[SagaRecord]:
        """Running and compensating sagas, oldest first."""
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM {SAGAS} WHERE {_UNFINISHED} ORDER BY created_at, saga_id",
                *(s.value for s in UNFINISHED),
            )
        return [_record(row) for row in rows]

    async def claim(self, saga_id: str, owner: str, until: float, now: float) -> SagaRecord | None:
        """One conditional UPDATE: of two orchestrators claiming at once, one wins."""
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"UPDATE {SAGAS} SET owner = ?, lease_until = ? WHERE saga_id = ?"
                f" AND {_UNFINISHED} AND (owner IS NULL OR owner = ? OR lease_until IS NULL"
                f" OR lease_until <= ?) RETURNING {_COLUMNS}",
                owner,
                until,
                saga_id,
                *(s.value for s in UNFINISHED),
                owner,
                now,
            )
        return _record(rows[0]) if rows else None

    async def claim_awaiting(
        self,
        tx: Transaction,
        saga_id: str,
        owner: str,
        until: float,
        *,
        state: SagaState,
        position: int,
        attempt: int,
    ) -> SagaRecord | None:
        """Conditional on the saga still waiting for this very reply."""
        rows = await tx.fetch(
            f"UPDATE {SAGAS} SET owner = ?, lease_until = ? WHERE saga_id = ? AND awaiting = 1"
            f" AND state = ? AND position = ? AND attempt = ? RETURNING {_COLUMNS}",
            owner,
            until,
            saga_id,
            SagaState(state).value,
            position,
            attempt,
        )
        return _record(rows[0]) if rows else None

    async def claimable(self, owner: str, now: float) -> builtins.list[SagaRecord]:
        """Unowned or expired unfinished sagas, oldest first."""
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM {SAGAS} WHERE {_UNFINISHED} AND (owner IS NULL OR"
                " (owner <> ? AND (lease_until IS NULL OR lease_until <= ?)))"
                " ORDER BY created_at, saga_id",
                *(s.value for s in UNFINISHED),
                owner,
                now,
            )
        return [_record(row) for row in rows]

    async def renew(self, owner: str, until: float) -> None:
        """One UPDATE for all of ``owner``'s unfinished sagas."""
        async with self._db.transaction() as tx:
            await tx.execute(
                f"UPDATE {SAGAS} SET lease_until = ? WHERE owner = ? AND {_UNFINISHED}",
                until,
                owner,
                *(s.value for s in UNFINISHED),
            )

    async def release(self, owner: str) -> None:
        """Clear ``owner`` from its unfinished sagas."""
        async with self._db.transaction() as tx:
            await tx.execute(
                f"UPDATE {SAGAS} SET owner = NULL, lease_until = NULL"
                f" WHERE owner = ? AND {_UNFINISHED}",
                owner,
                *(s.value for s in UNFINISHED),
            )

    async def record_definition(
        self, name: str, version: int, fingerprint: str, shape: Sequence[StepShape]
    ) -> None:
        """Store the shape once per name + version."""
        text = json.dumps([asdict(s) for s in shape])
        async with self._db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {DEFINITIONS} (name, version, fingerprint, shape)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name, version) DO NOTHING",
                name,
                version,
                fingerprint,
                text,
            )

    async def definition(
        self, name: str, version: int | None = None
    ) -> tuple[int, builtins.list[StepShape]]:
        """The recorded shape; raises ``LookupError`` naming the saga when unknown."""
        async with self._db.transaction() as tx:
            if version is None:
                row = await tx.fetchone(
                    f"SELECT version, shape FROM {DEFINITIONS} WHERE name = ?"
                    " ORDER BY version DESC LIMIT 1",
                    name,
                )
            else:
                row = await tx.fetchone(
                    f"SELECT version, shape FROM {DEFINITIONS} WHERE name = ? AND version = ?",
                    name,
                    version,
                )
        if row is None:
            from shipyard.saga.errors import UnknownSagaError

            raise UnknownSagaError(name, version, await self._definition_names())
        return int(row[0]), [StepShape(**item) for item in json.loads(row[1])]

    async def _definition_names(self) -> builtins.list[str]:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(f"SELECT DISTINCT name FROM {DEFINITIONS} ORDER BY name")
        return [row[0] for row in rows]


def _insert_params(record: SagaRecord) -> tuple[Any, ...]:
    return (
        record.saga_id,
        record.name,
        record.version,
        record.fingerprint,
        record.state.value,
        record.position,
        record.attempt,
        int(record.awaiting),
        record.data,
        record.error,
        record.failed_step,
        record.created_at,
        record.updated_at,
        record.transitions,
        record.deadline,
        record.owner,
        record.lease_until,
    )


def _update_params(record: SagaRecord) -> tuple[Any, ...]:
    return (
        record.state.value,
        record.position,
        record.attempt,
        int(record.awaiting),
        record.data,
        record.error,
        record.failed_step,
        record.updated_at,
        record.transitions,
        record.deadline,
        record.lease_until,
        record.saga_id,
        record.owner,
    )


def _record(row: Row) -> SagaRecord:
    return SagaRecord(
        saga_id=row[0],
        name=row[1],
        version=int(row[2]),
        fingerprint=row[3],
        state=SagaState(row[4]),
        position=int(row[5]),
        attempt=int(row[6]),
        awaiting=bool(row[7]),
        data=bytes(row[8]),
        error=row[9],
        failed_step=row[10],
        created_at=float(row[11]),
        updated_at=float(row[12]),
        transitions=int(row[13]),
        deadline=None if row[14] is None else float(row[14]),
        owner=row[15],
        lease_until=None if row[16] is None else float(row[16]),
    )


def ddl(blob: str, number: str) -> tuple[str, ...]:
    """The log's tables with the backend's binary and floating-point types."""
    return (
        f"""CREATE TABLE IF NOT EXISTS {SAGAS} (
            saga_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL,
            position INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            awaiting INTEGER NOT NULL,
            data {blob} NOT NULL,
            error TEXT,
            failed_step TEXT,
            created_at {number} NOT NULL,
            updated_at {number} NOT NULL,
            transitions INTEGER NOT NULL,
            deadline {number},
            owner TEXT,
            lease_until {number}
        )""",
        # Recovery and `saga list --state` scan by state; finished sagas dominate over time.
        f"CREATE INDEX IF NOT EXISTS {SAGAS}_state ON {SAGAS} (state, created_at)",
        f"""CREATE TABLE IF NOT EXISTS {TIMELINE} (
            saga_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            step TEXT,
            attempt INTEGER NOT NULL,
            error TEXT,
            at {number} NOT NULL,
            PRIMARY KEY (saga_id, seq)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {DEFINITIONS} (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            shape TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )""",
    )


def saga_log_for(db: Database) -> SqlSagaLog:
    """The saga log store for ``db``'s dialect (call ``install()`` before first use)."""
    if db.dialect == "postgresql":
        from shipyard.saga.postgres import PostgresSagaLog

        return PostgresSagaLog(db)
    from shipyard.saga.sqlite import SqliteSagaLog

    return SqliteSagaLog(db)
