"""SQLite event store: the global order is simply the rowid order.

SQLite has one writer at a time (every transaction starts with ``BEGIN IMMEDIATE``), so a
position is assigned and committed before the next transaction can assign one: a reader
following ``position > checkpoint`` can never miss an event committed "out of order".
With a single writer, group commit is what lets concurrent commands share the fsync.

Every statement is a hop to the connection's worker thread, and on the append path those
hops cost more than SQLite itself, so an append is ONE step on that thread (an
:class:`_Append`), deferred to the commit: a whole save — BEGIN, the events, the outbox
rows and snapshot, COMMIT — is one round trip, and a batch of saves too (a lone save
without outbox or snapshot skips even the transaction object: ``SqliteDatabase.write``).
The events go in with one multi-row ``INSERT``: the ``UNIQUE (stream_id, version)``
constraint rejects a stale or duplicate version, and a trigger rejects a version that
skips ahead (expected version above the actual one). A rejected ``INSERT`` is undone as a
whole by SQLite (statement rollback) while the transaction stays usable, so the step
records the conflict, skips that commit's other writes and lets the rest of the batch
commit; the caller hears :class:`ConcurrencyError` once the transaction is over. The
stream's version is its highest event version.

Loads issued at the same time (many commands in flight) are answered by ONE query: with a
read in flight per task, the reader threads and the event loop would spend their time
handing the interpreter lock to each other instead of reading.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from shipyard.core import ConfigError
from shipyard.eventsourcing.errors import ConcurrencyError
from shipyard.eventsourcing.read_batching import ReadBatcher
from shipyard.eventsourcing.store import (
    EVENTS,
    SNAPSHOTS,
    Commit,
    NewEvent,
    Snapshot,
    SqlEventStore,
    StoredEvent,
    events_by_stream,
    load_in,
    split_load,
)
from shipyard.storage import Database, Transaction
from shipyard.storage.group_commit import DeferredOutcome, WriteAlone, WriteNow
from shipyard.storage.sqlite import SqliteTransaction, apply_write

_COLUMNS = "(stream_id, version, event_id, name, body, recorded_at)"
_ROWS_PER_INSERT = 5000  # 6 parameters each: under SQLite's 32,766-parameter limit
_VERSION_SQL = f"SELECT COALESCE(MAX(version), 0) FROM {EVENTS} WHERE stream_id = ?"
_EVENT_COLUMNS = "position, stream_id, version, event_id, name, body"
_READ_SQL = (
    f"SELECT {_EVENT_COLUMNS} FROM {EVENTS} WHERE stream_id = ? AND version >= ? ORDER BY version"
)
_MAX_READ_BATCH = 256  # streams per batched query (twice the parameters for loads)
_SNAPSHOT_SQL = (
    f"INSERT INTO {SNAPSHOTS} (stream_id, version, kind, state) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
    " kind = excluded.kind, state = excluded.state"
)
_UNFINISHED = RuntimeError("the append step did not finish")
# A write recorded for after the append: (sql, params, False), (sql, rows, True) for
# executemany, or (fn, args, None) for fn(conn, *args).
_Write = tuple[Any, Any, bool | None]


class _Append(DeferredOutcome[int]):
    """One append as a single step on the writer thread: the ``INSERT`` of its events,
    then — only if they went in — the writes its commit recorded (outbox, snapshot).

    ``value`` becomes the new version, or the :class:`ConcurrencyError` when the stream
    was not at ``expected`` (nothing of this append is then written).
    """

    __slots__ = ("expected", "inserts", "stream_id", "version", "writes")

    def __init__(
        self, stream_id: str, expected: int, version: int, inserts: list[tuple[str, list[Any]]]
    ) -> None:
        super().__init__()
        self.stream_id = stream_id
        self.expected = expected
        self.version = version
        self.inserts = inserts
        self.writes: list[_Write] = []

    @property
    def written(self) -> bool:
        """Whether the events went in (read after the step ran)."""
        return self.value == self.version

    def __call__(self, conn: sqlite3.Connection) -> None:
        # A group commit that rolled back replays its transactions: start from scratch.
        self.value = _UNFINISHED
        inserts = self.inserts
        try:
            # Only the first INSERT can conflict: once it is in, this transaction (the
            # only writer) owns the versions that follow.
            conn.execute(*inserts[0])
        except sqlite3.IntegrityError:
            actual = conn.execute(_VERSION_SQL, (self.stream_id,)).fetchone()[0]
            if actual != self.expected:
                self.value = ConcurrencyError(self.stream_id, self.expected, actual)
                return
            raise
        for sql, params in inserts[1:]:
            conn.execute(sql, params)
        for write in self.writes:
            apply_write(conn, write)
        self.value = self.version


def _checked(conn: sqlite3.Connection, append: _Append, fn: Callable[..., Any], *args: Any) -> Any:
    # Runs right after the append's step (same trip): a refused append writes nothing more.
    if not append.written:
        raise append.value  # type: ignore[misc]  # an exception when not written
    return fn(conn, *args)


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> None:
    conn.execute(sql, params)


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    conn.executemany(sql, rows)


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def _fetchone(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
    return row


def _if_written(append: _Append, callback: Callable[[], None]) -> None:
    if append.written:
        callback()


class _AfterAppend:
    """The transaction as a commit's ``extra`` sees it: what it writes runs only if the
    append went in. Deferred writes join the append's step (still one trip); a statement
    it awaits runs right after the append in the same trip, and raises the append's
    :class:`ConcurrencyError` instead when the append was refused."""

    __slots__ = ("_append", "_tx")

    def __init__(self, tx: SqliteTransaction, append: _Append) -> None:
        self._tx = tx
        self._append = append

    def defer(self, sql: str, *params: Any) -> None:
        """Queue a write that runs only if the append goes in."""
        self._append.writes.append((sql, params, False))

    def defer_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """:meth:`defer` once per parameter row."""
        self._append.writes.append((sql, list(rows), True))

    def defer_call(self, fn: Callable[..., object], *args: Any) -> None:
        """:meth:`defer` for ``fn(conn, *args)``."""
        self._append.writes.append((fn, args, None))

    async def execute(self, sql: str, *params: Any) -> None:
        """Run one statement (after the append)."""
        await self._tx.call(_checked, self._append, _execute, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per row (after the append)."""
        await self._tx.call(_checked, self._append, _executemany, sql, list(rows))

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run a query (after the append) and return every row."""
        rows: list[tuple[Any, ...]] = await self._tx.call(
            _checked, self._append, _fetch, sql, params
        )
        return rows

    async def fetchone(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        """Run a query (after the append) and return its first row, or ``None``."""
        row: tuple[Any, ...] | None = await self._tx.call(
            _checked, self._append, _fetchone, sql, params
        )
        return row

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed, if the append went in."""
        self._tx.after_commit(partial(_if_written, self._append, callback))


class SqliteEventStore(SqlEventStore):
    """Event store in a service's SQLite database (see :class:`EventStore`)."""

    _read_all_sql = (
        f"SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
        " WHERE position > ? ORDER BY position LIMIT ?"
    )
    _count_after_sql = f"SELECT count(*) FROM {EVENTS} WHERE position > ?"

    def __init__(self, db: Database, **options: Any) -> None:
        # A database that runs a step as a write transaction of its own (one trip, no
        # transaction object): how a lone save is written.
        self._write_step: Callable[[_Append], Awaitable[None]] | None = getattr(db, "write", None)
        # ... and one that may run it right away on the event loop (``write_now``).
        self._write_here: Callable[[_Append], bool] | None = getattr(db, "write_now", None)
        super().__init__(db, **options)
        self._insert_sql: dict[int, str] = {}
        self._batch_sql: dict[tuple[str, int], str] = {}
        # One read in flight: the reads that queue meanwhile share the next query.
        self._reads: ReadBatcher[tuple[str, int], list[StoredEvent]] = ReadBatcher(
            self._read_one, self._read_many, max_batch=_MAX_READ_BATCH
        )
        self._loads: ReadBatcher[str, tuple[Snapshot | None, list[StoredEvent]]] = ReadBatcher(
            self._load_one, self._load_many, max_batch=_MAX_READ_BATCH
        )

    def _insert(self, rows: int) -> str:
        sql = self._insert_sql.get(rows)
        if sql is None:
            values = ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)
            sql = self._insert_sql[rows] = f"INSERT INTO {EVENTS} {_COLUMNS} VALUES {values}"
        return sql

    def _append_step(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> _Append | None:
        """The step appending ``events`` (``None`` when there are none)."""
        if expected_version < 0:
            raise ConfigError("expected_version", expected_version, "must be >= 0")
        if not events:
            return None
        now = self._clock.now()
        params: list[Any] = []
        version = expected_version
        for event in events:
            version += 1
            params += (stream_id, version, event.event_id, event.name, event.body, now)
        inserts = []
        for first in range(0, len(events), _ROWS_PER_INSERT):
            chunk = params[first * 6 : (first + _ROWS_PER_INSERT) * 6]
            inserts.append((self._insert(len(chunk) // 6), chunk))
        return _Append(stream_id, expected_version, version, inserts)

    def _alone_writer(self) -> WriteAlone[Commit, int] | None:
        return None if self._write_step is None else self._write_alone

    def _now_writer(self) -> WriteNow[Commit, int] | None:
        return None if self._write_here is None else self._write_now

    def _write_now(self, commit: Commit) -> int | None:
        # A lone append committed on the loop when the database can do that without
        # waiting; ``None`` sends it down the usual path.
        if commit.extra is not None or not commit.events:
            return None
        assert self._write_here is not None
        append = self._append_step(commit.stream_id, commit.events, commit.expected_version)
        assert append is not None  # events are not empty
        if not self._write_here(append):
            return None
        if not append.written:
            raise append.value  # type: ignore[misc]  # the ConcurrencyError
        if self._listeners:
            self._notify()
        return append.version

    def _write_alone(self, commit: Commit) -> Awaitable[int] | None:
        # Extra writes (snapshot, outbox) run against a transaction: batch path.
        if commit.extra is not None or not commit.events:
            return None
        return self._append_alone(commit)

    async def _append_alone(self, commit: Commit) -> int:
        """A lone append as its own one-trip write transaction."""
        assert self._write_step is not None
        append = self._append_step(commit.stream_id, commit.events, commit.expected_version)
        assert append is not None  # events are not empty
        await self._write_step(append)
        if not append.written:
            raise append.value  # type: ignore[misc]  # the ConcurrencyError
        if self._listeners:
            self._notify()
        return append.version

    async def _write_batch(
        self, tx: Transaction, commits: Sequence[Commit]
    ) -> list[int | Exception | DeferredOutcome[int]]:
        # Everything is deferred to the COMMIT: the batch is one trip to the writer thread.
        if not isinstance(tx, SqliteTransaction):
            return await super()._write_batch(tx, commits)
        outcomes: list[int | Exception | DeferredOutcome[int]] = []
        appends: list[_Append] = []
        for commit in commits:
            append = self._append_step(commit.stream_id, commit.events, commit.expected_version)
            if append is None:
                outcomes.append(commit.expected_version)
                if commit.extra is not None:
                    await commit.extra(tx)
                continue
            tx.defer_call(append)
            if commit.extra is not None:
                try:
                    await commit.extra(_AfterAppend(tx, append))
                except ConcurrencyError as error:
                    if error is not append.value:
                        raise
            outcomes.append(append)
            appends.append(append)
        if self._listeners and appends:
            tx.after_commit(partial(self._notify_if_written, appends))
        return outcomes

    def _notify_if_written(self, appends: list[_Append]) -> None:
        if any(append.written for append in appends):
            self._notify()

    async def append_in(
        self, tx: Transaction, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """Append in the caller's ``tx`` (one trip; raises :class:`ConcurrencyError` at once)."""
        append = self._append_step(stream_id, events, expected_version)
        if append is None:
            return expected_version
        if isinstance(tx, SqliteTransaction):
            await tx.call(append)
        else:
            await self._append_by_statements(tx, append)
        if not append.written:
            raise append.value  # type: ignore[misc]  # the ConcurrencyError
        if self._listeners:
            tx.after_commit(self._notify)
        return append.version

    async def _append_by_statements(self, tx: Transaction, append: _Append) -> None:
        # The same step for a transaction that cannot run one on the connection's thread.
        try:
            await tx.execute(append.inserts[0][0], *append.inserts[0][1])
        except Exception:
            row = await tx.fetchone(_VERSION_SQL, append.stream_id)
            actual = 0 if row is None else int(row[0])
            if actual != append.expected:
                append.value = ConcurrencyError(append.stream_id, append.expected, actual)
                return
            raise
        for sql, params in append.inserts[1:]:
            await tx.execute(sql, *params)
        append.value = append.version

    async def save_snapshot_in(self, tx: Transaction, snapshot: Snapshot) -> None:
        """Upsert the stream's snapshot in ``tx`` (with its next statement or commit)."""
        values = (snapshot.stream_id, snapshot.version, snapshot.kind, snapshot.state)
        defer = getattr(tx, "defer", None)
        if defer is not None:
            defer(_SNAPSHOT_SQL, *values)
        else:
            await tx.execute(_SNAPSHOT_SQL, *values)

    # -- reading (concurrent reads share a query) ---------------------------------------

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """Events of ``stream_id`` from ``from_version`` on, in version order."""
        return await self._reads.read((stream_id, from_version))

    async def load(self, stream_id: str) -> tuple[Snapshot | None, list[StoredEvent]]:
        """Latest snapshot of ``stream_id`` and the events after it, in one statement."""
        return await self._loads.read(stream_id)

    def _many(self, kind: str, count: int) -> str:
        sql = self._batch_sql.get((kind, count))
        if sql is None:
            marks = ",".join("?" * count)
            if kind == "read":
                sql = (
                    f"SELECT {_EVENT_COLUMNS} FROM {EVENTS} WHERE stream_id IN ({marks})"
                    " ORDER BY stream_id, version"
                )
            else:  # snapshots (rows without a position) sort first in their stream
                sql = (
                    "SELECT NULL, stream_id, version, kind, NULL, state"
                    f" FROM {SNAPSHOTS} WHERE stream_id IN ({marks}) UNION ALL"
                    " SELECT e.position, e.stream_id, e.version, e.event_id, e.name, e.body"
                    f" FROM {EVENTS} e WHERE e.stream_id IN ({marks}) AND e.version >"
                    f" COALESCE((SELECT s.version FROM {SNAPSHOTS} s"
                    " WHERE s.stream_id = e.stream_id), 0) ORDER BY 2, 3"
                )
            self._batch_sql[(kind, count)] = sql
        return sql

    async def _read_one(self, wanted: tuple[str, int]) -> list[StoredEvent]:
        async with self._db.transaction(readonly=True) as tx:
            rows = await tx.fetch(_READ_SQL, *wanted)
        return [StoredEvent(*row) for row in rows]

    async def _read_many(self, wanted: Sequence[tuple[str, int]]) -> list[list[StoredEvent]]:
        streams = list(dict.fromkeys(stream_id for stream_id, _ in wanted))
        async with self._db.transaction(readonly=True) as tx:
            rows = await tx.fetch(self._many("read", len(streams)), *streams)
        found = events_by_stream(rows)
        return [
            [event for event in found.get(stream_id, ()) if event.version >= from_version]
            for stream_id, from_version in wanted
        ]

    async def _load_one(self, stream_id: str) -> tuple[Snapshot | None, list[StoredEvent]]:
        async with self._db.transaction(readonly=True) as tx:
            return await load_in(tx, stream_id)

    async def _load_many(
        self, streams: Sequence[str]
    ) -> list[tuple[Snapshot | None, list[StoredEvent]]]:
        unique = list(dict.fromkeys(streams))
        async with self._db.transaction(readonly=True) as tx:
            rows = await tx.fetch(self._many("load", len(unique)), *unique, *unique)
        found: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            stream = found.get(row[1])
            if stream is None:
                stream = found[row[1]] = []
            stream.append(row)
        return [split_load(found.get(stream_id, ())) for stream_id in streams]

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
