"""Projections: read models kept up to date from the global event order.

A :class:`Projection` owns one read-model table and has a handler per event type::

    class OrderHistory(Projection):
        name = "order_history"

        def schema(self, table: str) -> list[str]:
            return [f"CREATE TABLE {table} (order_id TEXT PRIMARY KEY, customer TEXT)"]

        @handles(OrderPlaced)
        async def placed(self, event: OrderPlaced, tx: Transaction, table: str) -> None:
            await tx.execute(f"INSERT INTO {table} VALUES (?, ?)", event.order_id, event.customer)

Readers query the VIEW named after the projection (``SELECT ... FROM order_history``); the
view points at the current physical table (``order_history_g1``), which is what lets a
rebuild fill a fresh table while the old one keeps serving, then swap the view in one
transaction.

Every batch of handler calls commits in the SAME transaction as the projection's new
checkpoint, so a restart neither skips nor double-applies an event. A handler that raises
stops its projection at that event (the events before it are kept, the failure and its
position are stored in the status); the other projections carry on. Fix the handler, then
``runner.resume(name)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from shipyard.core import SYSTEM_CLOCK, BackgroundRunner, Clock, ConfigError, get_logger, validation
from shipyard.eventsourcing.errors import EventSourcingError, ProjectionNotFoundError
from shipyard.eventsourcing.repository import decoder_for
from shipyard.eventsourcing.store import EventStore, StoredEvent
from shipyard.messaging import Event, EventRegistry
from shipyard.storage import Row, Transaction

PROJECTIONS = "es_projections"
_log = get_logger("shipyard.eventsourcing.projection")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,50}$")
_MAX_ERROR_CHARS = 4000

ProjectionHandler = Callable[[Any, Any, Transaction, str], Awaitable[None]]
F = TypeVar("F", bound=ProjectionHandler)
_MARK = "__shipyard_handles__"


def handles(event_type: type[Event]) -> Callable[[F], F]:
    """Mark a projection method as the handler of ``event_type``:
    ``async def handler(self, event, tx, table) -> None``."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, event_type)
        return fn

    return mark


class Projection:
    """A read model fed by events; subclass with a ``name``, :meth:`schema` and handlers."""

    name: ClassVar[str]
    _handlers: ClassVar[dict[str, ProjectionHandler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, ProjectionHandler] = {}
        for klass in reversed(cls.__mro__):
            for member in vars(klass).values():
                event_type = getattr(member, _MARK, None)
                if event_type is not None:
                    found[event_type.event_name] = member
        cls._handlers = found  # keyed by name: events nobody handles are never decoded

    def schema(self, table: str) -> list[str]:
        """DDL creating the physical table ``table`` (and its indexes)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define schema(table)")


ProjectionState = Literal["running", "failed"]


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """Where a projection is: checkpoint, state, the failure that stopped it, lag."""

    name: str
    position: int
    generation: int
    state: ProjectionState
    error: str | None
    failed_position: int | None
    events_behind: int


class _Failed(Exception):
    def __init__(self, done: int, stored: StoredEvent, error: Exception) -> None:
        self.done = done
        self.stored = stored
        self.error = error


class _Buffered:
    """Write-behind view of a transaction for the batch fast path.

    Consecutive ``execute`` calls with the same SQL are sent as ONE ``executemany`` (one
    round trip to the database instead of one per event); anything else — a different
    statement, a read, the end of the batch — flushes first, so statements still run in
    handler order and reads see every earlier write. Because a failing statement then
    surfaces at flush time rather than in its handler, a failed batch is re-run one event
    at a time to find the event to stop at.
    """

    __slots__ = ("_rows", "_sql", "_tx")

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self._sql: str | None = None
        self._rows: list[Sequence[Any]] = []

    async def execute(self, sql: str, *params: Any) -> None:
        if sql != self._sql:
            await self.flush()
            self._sql = sql
        self._rows.append(params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.flush()
        await self._tx.executemany(sql, rows)

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        await self.flush()
        return await self._tx.fetch(sql, *params)

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        await self.flush()
        return await self._tx.fetchone(sql, *params)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._tx.after_commit(callback)

    async def flush(self) -> None:
        rows, sql = self._rows, self._sql
        if not rows or sql is None:
            return
        self._rows = []
        if len(rows) == 1:
            await self._tx.execute(sql, *rows[0])
        else:
            await self._tx.executemany(sql, rows)


def physical_table(name: str, generation: int) -> str:
    """The table behind projection ``name``'s view in ``generation``."""
    return f"{name}_g{generation}"


class ProjectionRunner(BackgroundRunner):
    """Runs projections over ``store``: catch up from their checkpoint, then follow live.

    Live appends in this process wake the runner at once; appends from other processes are
    picked up every ``poll_interval`` seconds. ``batch_size`` events commit per transaction.
    """

    task_name = "shipyard-projections"

    def __init__(
        self,
        store: EventStore,
        registry: EventRegistry,
        projections: Sequence[Projection],
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._db = store.db
        self._registry = registry
        self._decode = decoder_for(registry).decode
        self._batch = validation.at_least("batch_size", batch_size, 1)
        self._poll = validation.positive("poll_interval", poll_interval)
        self._clock = clock
        self._projections: dict[str, Projection] = {}
        for projection in projections:
            name = getattr(projection, "name", None)
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(
                    "projection.name", name, "must be lower_snake_case, 1-51 characters"
                )
            if name in self._projections:
                raise ConfigError("projections", name, "names must be unique")
            self._projections[name] = projection
        self._lock = " FOR UPDATE" if self._db.dialect == "postgresql" else ""
        self._wake = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None

    def projection(self, name: str) -> Projection:
        """The registered projection called ``name``."""
        try:
            return self._projections[name]
        except KeyError:
            raise ProjectionNotFoundError(name, list(self._projections)) from None

    async def install(self) -> None:
        """Create the checkpoint table, and each projection's table and view if missing."""
        await self._store.install()
        async with self._db.transaction() as tx:
            await tx.execute(
                f"""CREATE TABLE IF NOT EXISTS {PROJECTIONS} (
                    name TEXT PRIMARY KEY,
                    generation INTEGER NOT NULL,
                    position BIGINT NOT NULL,
                    state TEXT NOT NULL,
                    error TEXT,
                    failed_position BIGINT,
                    updated_at DOUBLE PRECISION NOT NULL
                )"""
            )
            for name, projection in self._projections.items():
                row = await tx.fetchone(
                    f"SELECT generation FROM {PROJECTIONS} WHERE name = ?", name
                )
                if row is not None:
                    continue
                await tx.execute(
                    f"INSERT INTO {PROJECTIONS} (name, generation, position, state, updated_at)"
                    " VALUES (?, 1, 0, 'running', ?)",
                    name,
                    self._clock.now(),
                )
                table = physical_table(name, 1)
                for statement in projection.schema(table):
                    await tx.execute(statement)
                await tx.execute(f"CREATE VIEW {name} AS SELECT * FROM {table}")

    # -- processing --------------------------------------------------------------------

    async def _apply(
        self, projection: Projection, events: list[StoredEvent], tx: Transaction, table: str
    ) -> None:
        handlers = projection._handlers
        decode = self._decode
        for done, stored in enumerate(events):
            handler = handlers.get(stored.name)
            if handler is None:
                continue
            try:
                await handler(projection, decode(stored), tx, table)
            except Exception as error:
                raise _Failed(done, stored, error) from error

    async def step(self, name: str) -> int:
        """Apply one batch to projection ``name``; returns how many events it consumed."""
        projection = self.projection(name)
        try:
            return await self._step(name, projection, buffered=True)
        except Exception:
            # Find the exact event that fails (or succeed, if the failure was transient).
            return await self._step(name, projection, buffered=False)

    async def _step(self, name: str, projection: Projection, *, buffered: bool) -> int:
        position = 0
        events: list[StoredEvent] = []
        try:
            async with self._db.transaction() as tx:
                row = await tx.fetchone(
                    f"SELECT generation, position, state FROM {PROJECTIONS} WHERE name = ?"
                    + self._lock,
                    name,
                )
                if row is None:
                    raise EventSourcingError(
                        f"projection {name!r} is not installed; call runner.install() first"
                    )
                generation, position, state = row
                if state != "running":
                    return 0
                events = await self._store.read_all_in(tx, position, self._batch)
                if not events:
                    return 0
                table = physical_table(name, generation)
                if buffered:
                    writer = _Buffered(tx)
                    await self._apply(projection, events, writer, table)
                    await writer.flush()
                else:
                    await self._apply(projection, events, tx, table)
                await tx.execute(
                    f"UPDATE {PROJECTIONS} SET position = ?, updated_at = ? WHERE name = ?",
                    events[-1].position,
                    self._clock.now(),
                    name,
                )
            return len(events)
        except _Failed as failed:
            if buffered:
                raise
            await self._stop_at(name, projection, position, events, failed)
            return failed.done

    async def _stop_at(
        self,
        name: str,
        projection: Projection,
        position: int,
        events: list[StoredEvent],
        failed: _Failed,
    ) -> None:
        error = "".join(traceback.format_exception(failed.error)).strip()[-_MAX_ERROR_CHARS:]
        _log.error(
            "projection stopped: its handler failed",
            projection=name,
            event_name=failed.stored.name,
            stream=failed.stored.stream_id,
            position=failed.stored.position,
            error=repr(failed.error),
        )
        kept = events[: failed.done]
        try:
            # Keep the events before the failing one: the projection stops exactly there.
            async with self._db.transaction() as tx:
                row = await tx.fetchone(
                    f"SELECT generation FROM {PROJECTIONS} WHERE name = ?" + self._lock, name
                )
                generation = 1 if row is None else row[0]
                if kept:
                    await self._apply(projection, kept, tx, physical_table(name, generation))
                    position = kept[-1].position
                await self._mark_failed(tx, name, position, error, failed.stored.position)
        except _Failed:  # the earlier events fail now too (non-deterministic handler)
            async with self._db.transaction() as tx:
                await self._mark_failed(tx, name, None, error, failed.stored.position)

    async def _mark_failed(
        self, tx: Transaction, name: str, position: int | None, error: str, at: int
    ) -> None:
        await tx.execute(
            f"UPDATE {PROJECTIONS} SET position = COALESCE(?, position), state = 'failed',"
            " error = ?, failed_position = ?, updated_at = ? WHERE name = ?",
            position,
            error,
            at,
            self._clock.now(),
            name,
        )

    async def run_once(self) -> int:
        """One batch for every running projection; returns the events consumed in total."""
        total = 0
        for name in self._projections:
            total += await self.step(name)
        return total

    async def catch_up(self) -> int:
        """Apply batches until every running projection has reached the end of the store."""
        total = 0
        while count := await self.run_once():
            total += count
        return total

    async def resume(self, name: str) -> None:
        """Clear a failure: the projection retries the event that stopped it."""
        self.projection(name)
        async with self._db.transaction() as tx:
            await tx.execute(
                f"UPDATE {PROJECTIONS} SET state = 'running', error = NULL,"
                " failed_position = NULL, updated_at = ? WHERE name = ?",
                self._clock.now(),
                name,
            )
        self._wake.set()

    async def status(self, name: str) -> ProjectionStatus:
        """Checkpoint, state, failure and lag of projection ``name``."""
        self.projection(name)
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT generation, position, state, error, failed_position FROM {PROJECTIONS}"
                " WHERE name = ?",
                name,
            )
        if row is None:
            raise EventSourcingError(f"projection {name!r} is not installed; run install()")
        generation, position, state, error, failed_at = row
        behind = await self._store.count_after(position)
        return ProjectionStatus(name, position, generation, state, error, failed_at, behind)

    # -- rebuilding --------------------------------------------------------------------

    async def rebuild(
        self, name: str, *, on_progress: Callable[[int], Awaitable[None]] | None = None
    ) -> int:
        """Rebuild ``name`` from the first event into a fresh table, then swap it in.

        The old table keeps serving reads (through the view) until the swap, which catches
        up the last events, repoints the view and drops the old table in ONE transaction.
        ``on_progress(position)`` runs after each batch. Returns the events replayed.
        """
        projection = self.projection(name)
        async with self._db.transaction() as tx:
            row = await tx.fetchone(f"SELECT generation FROM {PROJECTIONS} WHERE name = ?", name)
        if row is None:
            raise EventSourcingError(f"projection {name!r} is not installed; run install()")
        old = int(row[0])
        table = physical_table(name, old + 1)
        async with self._db.transaction() as tx:
            await tx.execute(f"DROP TABLE IF EXISTS {table}")  # a rebuild that died half-way
            for statement in projection.schema(table):
                await tx.execute(statement)
        position = replayed = 0
        while True:
            async with self._db.transaction() as tx:
                events = await self._store.read_all_in(tx, position, self._batch)
                if not events:
                    break
                await self._apply_or_raise(projection, events, tx, table)
            position = events[-1].position
            replayed += len(events)
            if on_progress is not None:
                await on_progress(position)
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT generation FROM {PROJECTIONS} WHERE name = ?" + self._lock, name
            )
            if row is None or int(row[0]) != old:
                raise EventSourcingError(
                    f"projection {name!r} was rebuilt by someone else meanwhile; run it again"
                )
            while events := await self._store.read_all_in(tx, position, self._batch):
                await self._apply_or_raise(projection, events, tx, table)
                position = events[-1].position
                replayed += len(events)
            await tx.execute(f"DROP VIEW IF EXISTS {name}")
            await tx.execute(f"CREATE VIEW {name} AS SELECT * FROM {table}")
            await tx.execute(
                f"UPDATE {PROJECTIONS} SET generation = ?, position = ?, state = 'running',"
                " error = NULL, failed_position = NULL, updated_at = ? WHERE name = ?",
                old + 1,
                position,
                self._clock.now(),
                name,
            )
            await tx.execute(f"DROP TABLE IF EXISTS {physical_table(name, old)}")
        self._wake.set()
        return replayed

    async def _apply_or_raise(
        self, projection: Projection, events: list[StoredEvent], tx: Transaction, table: str
    ) -> None:
        try:
            await self._apply(projection, events, tx, table)
        except _Failed as failed:
            raise EventSourcingError(
                f"rebuild of {projection.name!r} failed at {failed.stored.name} (stream "
                f"{failed.stored.stream_id!r}, position {failed.stored.position}): "
                f"{failed.error!r}; the old read model keeps serving — fix the handler and "
                "run the rebuild again"
            ) from failed.error

    # -- running live ------------------------------------------------------------------

    async def run(self) -> None:
        """Catch up, then follow new appends until cancelled."""
        await self.install()
        self._unsubscribe = self._store.on_append(self._wake.set)
        try:
            while True:
                self._wake.clear()
                try:
                    await self.catch_up()
                except Exception as error:  # database trouble: log, wait, try again
                    _log.warning("projection runner cannot read the store", error=repr(error))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
