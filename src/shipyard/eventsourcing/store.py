"""The ``EventStore`` port: append with optimistic concurrency, per-stream and global reads.

Events are stored as the messaging envelope (``{"name", "version", "data"}`` bytes from
:meth:`~shipyard.messaging.EventRegistry.encode`), so the same bytes feed the outbox and
upcasting on read goes through the registry. The PostgreSQL store keeps a stream's current
version in a small ``es_streams`` row that each append moves with a compare-and-set
(``UPDATE ... WHERE version = expected``): a stale writer matches no row and writes
nothing, and the row lock orders concurrent appenders of ONE stream only. The SQLite store
checks versions with constraints instead (see ``sqlite.py``).

The SQL shared by both dialects is here (the reads, snapshots, group commit); ``sqlite.py``
and ``postgres.py`` add the schema, the append and the global-order read, which is where
the two differ. A load is one statement (the snapshot row first, then the events after
it), so it costs one round trip and sees one consistent state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.eventsourcing.errors import ConcurrencyError
from shipyard.storage import Database, GroupCommitter, Row, Transaction
from shipyard.storage.group_commit import DeferredOutcome, WriteAlone, WriteNow

EVENTS = "es_events"
STREAMS = "es_streams"
SNAPSHOTS = "es_snapshots"


class NewEvent(msgspec.Struct, frozen=True, gc=False):
    """An encoded event about to be appended (see ``EventRegistry.encode``)."""

    event_id: str
    name: str
    body: bytes


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: its global ``position``, stream, version within it and envelope."""

    position: int
    stream_id: str
    version: int
    event_id: str
    name: str
    body: bytes


class Snapshot(msgspec.Struct, frozen=True, gc=False):
    """Aggregate state at ``version``; ``kind`` says which class (and schema) wrote it."""

    stream_id: str
    version: int
    kind: str
    state: bytes


@dataclass(slots=True, frozen=True)
class Commit:
    """One append: ``events`` to ``stream_id`` at ``expected_version``, plus ``extra`` writes
    (snapshot, outbox) that must commit or roll back together with the events."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int
    extra: Callable[[Transaction], Awaitable[None]] | None = None


class EventStore(Protocol):
    """Append-only streams with optimistic concurrency and a gap-free global order."""

    @property
    def db(self) -> Database:
        """The database the events live in (read models may share it)."""

    async def install(self) -> None:
        """Create the tables if they do not exist (idempotent)."""

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """Append ``events`` if the stream is at ``expected_version``; returns the new version.

        Raises :class:`ConcurrencyError` (writing nothing) when it is not. Concurrent calls
        may share one transaction (group commit); each keeps its own outcome.
        """

    async def commit(self, commit: Commit) -> int:
        """Append like :meth:`append`, also running ``commit.extra(tx)`` in the same transaction."""

    async def append_in(
        self, tx: Transaction, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """:meth:`append` inside the caller's transaction ``tx``."""

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """Events of one stream with ``version >= from_version``, in version order."""

    async def read_streams(self, stream_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        """Every event of each of ``stream_ids`` (in one query); absent streams are left out."""

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Up to ``limit`` events following ``after_position`` in the global order."""

    async def read_all_in(
        self, tx: Transaction, after_position: int, limit: int
    ) -> list[StoredEvent]:
        """:meth:`read_all` inside the caller's transaction ``tx``."""

    async def count_after(self, after_position: int) -> int:
        """How many readable events follow ``after_position`` in the global order."""

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it has no events)."""

    async def load(self, stream_id: str) -> tuple[Snapshot | None, list[StoredEvent]]:
        """The stream's latest snapshot and the events after it, read in one transaction."""

    async def save_snapshot_in(self, tx: Transaction, snapshot: Snapshot) -> None:
        """Store ``snapshot`` in ``tx``, replacing the stream's previous one."""

    def on_append(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after each commit that appended events; returns an unsubscribe."""


def events_by_stream(rows: Iterable[Sequence[Any]]) -> dict[str, list[StoredEvent]]:
    """Event rows (position, stream_id, version, event_id, name, body) grouped by stream,
    each list in the rows' order."""
    found: dict[str, list[StoredEvent]] = {}
    for row in rows:
        event = StoredEvent(*row)
        stream = found.get(event.stream_id)
        if stream is None:
            stream = found[event.stream_id] = []
        stream.append(event)
    return found


class SqlEventStore:
    """SQL shared by the SQLite and PostgreSQL stores; subclasses supply schema + global reads.

    ``group_commit`` is how many transactions may append concurrently; ``max_batch`` caps how
    many waiting appends one transaction takes.
    """

    _read_all_sql: str
    _count_after_sql: str

    def __init__(
        self,
        db: Database,
        *,
        group_commit: int = 1,
        max_batch: int = 256,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._clock = clock
        self._listeners: tuple[Callable[[], None], ...] = ()
        # A database that runs one statement as a transaction of its own (PostgreSQL's
        # ``statement``) saves two round trips on each one-statement read or append.
        self._statement: Callable[..., Awaitable[list[Row]]] | None = getattr(db, "statement", None)
        # Appends that queue up behind a running transaction share the next one.
        self._committer: GroupCommitter[Commit, int] = GroupCommitter(
            db,
            self._write_batch,
            transactions=group_commit,
            max_batch=max_batch,
            alone=self._alone_writer(),
            now=self._now_writer(),
        )

    def _alone_writer(self) -> WriteAlone[Commit, int] | None:
        """How a lone append is written without a transaction, if the dialect can."""
        return None

    def _now_writer(self) -> WriteNow[Commit, int] | None:
        """How a lone append with no company is written synchronously, if the database can."""
        return None

    async def _query(self, sql: str, *params: Any) -> list[Row]:
        """One read statement: on its own where the database can, else in a read-only
        transaction."""
        if self._statement is not None:
            return await self._statement(sql, *params)
        async with self._db.transaction(readonly=True) as tx:
            return await tx.fetch(sql, *params)

    @property
    def db(self) -> Database:
        """The database holding the events."""
        return self._db

    @property
    def transactions(self) -> int:
        """Append transactions committed so far (fewer than appends when group commit
        batched)."""
        return self._committer.transactions

    def _schema(self) -> list[str]:
        raise NotImplementedError

    async def install(self) -> None:
        """Create the event, stream and snapshot tables if they do not exist."""
        async with self._db.transaction() as tx:
            for statement in self._schema():
                await tx.execute(statement)

    # -- writing -----------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """Append ``events`` at ``expected_version`` (see :class:`EventStore`)."""
        return await self._committer.submit(Commit(stream_id, events, expected_version))

    async def commit(self, commit: Commit) -> int:
        """Append ``commit`` plus its extra writes in one transaction (maybe shared)."""
        return await self._committer.submit(commit)

    async def _write_batch(
        self, tx: Transaction, commits: Sequence[Commit]
    ) -> list[int | Exception | DeferredOutcome[int]]:
        # The version check runs before anything is written, so a stale append is answered
        # with ConcurrencyError and simply leaves the batch. One lock order for every batch,
        # so two PostgreSQL batches never deadlock on rows of the same streams; sorted() is
        # stable, so one stream's appends keep arrival order.
        outcomes: list[int | Exception | DeferredOutcome[int]] = [0] * len(commits)
        for i in sorted(range(len(commits)), key=lambda i: commits[i].stream_id):
            commit = commits[i]
            try:
                outcomes[i] = await self.append_in(
                    tx, commit.stream_id, commit.events, commit.expected_version
                )
            except ConcurrencyError as error:
                outcomes[i] = error
                continue
            if commit.extra is not None:
                await commit.extra(tx)
        return outcomes

    async def append_in(
        self, tx: Transaction, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> int:
        """Append ``events`` in ``tx`` (the dialect's statements, see the subclasses)."""
        raise NotImplementedError

    async def save_snapshot_in(self, tx: Transaction, snapshot: Snapshot) -> None:
        """Upsert the stream's snapshot in ``tx``."""
        await tx.execute(
            f"INSERT INTO {SNAPSHOTS} (stream_id, version, kind, state) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
            " kind = excluded.kind, state = excluded.state",
            snapshot.stream_id,
            snapshot.version,
            snapshot.kind,
            snapshot.state,
        )

    def on_append(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every commit that appended events (in this process)."""
        self._listeners = (*self._listeners, callback)

        def unsubscribe() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not callback)

        return unsubscribe

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    # -- reading -----------------------------------------------------------------------

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """Events of ``stream_id`` from ``from_version`` on, in version order."""
        rows = await self._query(
            f"SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
            " WHERE stream_id = ? AND version >= ? ORDER BY version",
            stream_id,
            from_version,
        )
        return [StoredEvent(*row) for row in rows]

    async def read_streams(self, stream_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        """Events of several streams in one round trip, each list in version order."""
        if not stream_ids:
            return {}
        marks = ",".join("?" * len(stream_ids))
        rows = await self._query(
            f"SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
            f" WHERE stream_id IN ({marks}) ORDER BY stream_id, version",
            *stream_ids,
        )
        return events_by_stream(rows)

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Up to ``limit`` events after ``after_position`` in the global order."""
        async with self._db.transaction(readonly=True) as tx:
            return await self.read_all_in(tx, after_position, limit)

    async def read_all_in(
        self, tx: Transaction, after_position: int, limit: int
    ) -> list[StoredEvent]:
        """Global-order read inside ``tx`` (the dialect's query, see the subclasses)."""
        rows = await tx.fetch(self._read_all_sql, after_position, limit)
        return [StoredEvent(*row) for row in rows]

    async def count_after(self, after_position: int) -> int:
        """Readable events following ``after_position`` (a lag measure)."""
        async with self._db.transaction(readonly=True) as tx:
            row = await tx.fetchone(self._count_after_sql, after_position)
        return 0 if row is None else int(row[0])

    async def stream_version(self, stream_id: str) -> int:
        """Current version of ``stream_id`` (0 if it does not exist)."""
        rows = await self._query(f"SELECT version FROM {STREAMS} WHERE stream_id = ?", stream_id)
        return int(rows[0][0]) if rows else 0

    async def load(self, stream_id: str) -> tuple[Snapshot | None, list[StoredEvent]]:
        """Latest snapshot of ``stream_id`` and the events after it, in one statement."""
        return split_load(await self._query(_LOAD_SQL, stream_id, stream_id, stream_id))


# The snapshot (a row without a position) and the events after it; ordering by version
# puts the snapshot first, since every event returned has a higher version.
_LOAD_SQL = (
    f"SELECT NULL, stream_id, version, kind, NULL, state FROM {SNAPSHOTS} WHERE stream_id = ?"
    " UNION ALL"
    f" SELECT position, stream_id, version, event_id, name, body FROM {EVENTS}"
    " WHERE stream_id = ? AND version >"
    f" COALESCE((SELECT version FROM {SNAPSHOTS} WHERE stream_id = ?), 0)"
    " ORDER BY 3"
)


async def load_in(tx: Transaction, stream_id: str) -> tuple[Snapshot | None, list[StoredEvent]]:
    """The stream's latest snapshot and the events after it, read in ``tx`` (one query)."""
    return split_load(await tx.fetch(_LOAD_SQL, stream_id, stream_id, stream_id))


def split_load(rows: Sequence[Row]) -> tuple[Snapshot | None, list[StoredEvent]]:
    """One stream's rows of a load query: the snapshot row (no position) first, if any."""
    snapshot = None
    start = 0
    if rows and rows[0][0] is None:
        first = rows[0]
        snapshot = Snapshot(first[1], first[2], first[3], bytes(first[5]))
        start = 1
    return snapshot, [StoredEvent(*row) for row in rows[start:]]


async def open_event_store(db: Database, **options: Any) -> SqlEventStore:
    """The event store for ``db``'s dialect, with its tables installed."""
    store: SqlEventStore
    if db.dialect == "sqlite":
        from shipyard.eventsourcing.sqlite import SqliteEventStore

        store = SqliteEventStore(db, **options)
    else:
        from shipyard.eventsourcing.postgres import PostgresEventStore

        store = PostgresEventStore(db, **options)
    await store.install()
    return store
