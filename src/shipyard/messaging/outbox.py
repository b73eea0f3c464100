"""Transactional outbox: events are stored with the business change, then relayed.

``await outbox.add(tx, event)`` inserts the encoded event in the caller's transaction, so
the event exists exactly when the change it describes was committed. :class:`OutboxRelay`
publishes unsent rows in order and marks them sent. A crash between publishing and marking
republishes those rows (at-least-once; consumers deduplicate in their inbox). While the
transport is down rows simply accumulate and drain when it returns.
"""

from __future__ import annotations

import asyncio

from shipyard.core import SYSTEM_CLOCK, BackgroundRunner, Clock, get_logger, validation
from shipyard.messaging.events import Event, EventRegistry, WireMessage
from shipyard.messaging.schema import OUTBOX, install_schema
from shipyard.messaging.transport import Transport
from shipyard.resilience.backoff import Backoff
from shipyard.storage import Database, Transaction

_log = get_logger("shipyard.messaging.outbox")
_INSERT = (
    f"INSERT INTO {OUTBOX} (event_id, name, ordering_key, body, created_at) VALUES (?, ?, ?, ?, ?)"
)


class Outbox:
    """Writes events into the outbox table inside the caller's transaction."""

    def __init__(self, registry: EventRegistry, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.registry = registry
        self._clock = clock
        self._wakers: set[asyncio.Event] = set()

    async def add(self, tx: Transaction, *events: Event) -> None:
        """Validate and store ``events`` in ``tx``; relays wake once ``tx`` commits.

        Raises :class:`~shipyard.messaging.EventValidationError` (naming the field) before
        anything is written when an event does not match its type. On SQLite the row is
        written with ``tx``'s next statement or its commit (one round trip fewer), so a
        database error storing it (a duplicate event id) is raised there.
        """
        await self.add_encoded(tx, [self.registry.encode(event) for event in events])

    async def add_encoded(self, tx: Transaction, messages: list[WireMessage]) -> None:
        """:meth:`add` for events already encoded (and so validated) by ``registry``:
        an event-sourced save has encoded them for the event store."""
        now = self._clock.now()
        rows = [(m.event_id, m.name, m.ordering_key, m.body, now) for m in messages]
        # Nobody reads the INSERT's result, so where the transaction can defer it (SQLite)
        # it rides with the next statement or the COMMIT instead of costing a round trip.
        defer_many = getattr(tx, "defer_many", None)
        if defer_many is not None:
            defer_many(_INSERT, rows)
        elif len(rows) == 1:
            await tx.execute(_INSERT, *rows[0])
        else:
            await tx.executemany(_INSERT, rows)
        if self._wakers:
            tx.after_commit(self._wake)

    def _wake(self) -> None:
        for waker in self._wakers:
            waker.set()


class OutboxRelay(BackgroundRunner):
    """Publishes the outbox of ``db`` to ``transport``, in order, at least once.

    Pass the service's ``outbox`` so the relay wakes as soon as a transaction that added
    events commits; otherwise (and for rows written by other processes) it polls every
    ``poll_interval`` seconds. Once woken it lingers ``linger`` seconds so the commits of a
    burst go out as one batch (``0`` publishes each commit at once, at a higher cost per
    event). Publishing failures back off exponentially from ``retry_base_delay`` up to
    ``retry_max_delay`` and are logged.
    """

    task_name = "shipyard-outbox-relay"

    def __init__(
        self,
        db: Database,
        transport: Transport,
        *,
        outbox: Outbox | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        linger: float = 0.002,
        retry_base_delay: float = 0.1,
        retry_max_delay: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self._transport = transport
        self._batch_size = validation.at_least("batch_size", batch_size, 1)
        self._poll = validation.positive("poll_interval", poll_interval)
        self._linger = validation.non_negative("linger", linger)
        self._backoff = Backoff.checked(
            "retry_base_delay", retry_base_delay, "retry_max_delay", retry_max_delay
        )
        self._clock = clock
        self._wake = asyncio.Event()
        self._outbox = outbox
        self.published = 0
        """Rows published since start (republished rows count again)."""
        self.failures = 0
        """Consecutive failed attempts to publish (0 while healthy)."""

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows and mark them sent; returns how many."""
        # Read-only: on SQLite it reads beside the writer, so producers do not queue behind it.
        async with self._db.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                f"SELECT seq, name, event_id, ordering_key, body FROM {OUTBOX}"
                " WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                self._batch_size,
            )
        if not rows:
            return 0
        await self._transport.publish(
            [WireMessage(name, event_id, key, bytes(body)) for _, name, event_id, key, body in rows]
        )
        # A crash right here republishes these rows on restart: at-least-once, by design.
        placeholders = ",".join("?" * len(rows))
        sql = f"UPDATE {OUTBOX} SET sent_at = ? WHERE seq IN ({placeholders})"
        async with self._db.transaction() as tx:
            defer = getattr(tx, "defer", None)
            if defer is not None:
                defer(sql, self._clock.now(), *[row[0] for row in rows])
            else:
                await tx.execute(sql, self._clock.now(), *[row[0] for row in rows])
        self.published += len(rows)
        return len(rows)

    async def drain(self) -> int:
        """Relay until no unsent rows are left; returns how many were published."""
        total = 0
        while count := await self.relay_once():
            total += count
        return total

    async def run(self) -> None:
        """Relay forever (until cancelled): wake on commit, poll as a fallback, back off.

        Installing the schema is retried like a failed publish: a database that is not
        reachable yet must not end the relay silently.
        """
        installed = False
        if self._outbox is not None:
            self._outbox._wakers.add(self._wake)
        try:
            while True:
                self._wake.clear()
                try:
                    if not installed:
                        await install_schema(self._db)
                        installed = True
                    count = await self.relay_once()
                except Exception as error:
                    self.failures += 1
                    delay = self._backoff.delay(self.failures)
                    _log.warning(
                        "outbox relay cannot publish; events stay in the outbox",
                        transport=self._transport.url,
                        error=repr(error),
                        failures=self.failures,
                        retry_in=round(delay, 3),
                    )
                    await self._clock.sleep(delay)
                    continue
                if self.failures:
                    _log.info("outbox relay recovered", failures=self.failures)
                    self.failures = 0
                if count >= self._batch_size:
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                except TimeoutError:
                    continue
                # Every batch costs a read, a publish round trip and a write whatever its
                # size; a moment's wait turns a burst of small commits into one batch.
                if self._linger:
                    await asyncio.sleep(self._linger)
        finally:
            if self._outbox is not None:
                self._outbox._wakers.discard(self._wake)
