"""The outbox stores events with the business change; the relay publishes them at least once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from shipyard import ConfigError
from shipyard.core import ManualClock
from shipyard.messaging import (
    EventBus,
    EventValidationError,
    MemoryTransport,
    Outbox,
    OutboxRelay,
    StartFrom,
    TransportError,
    WireMessage,
    install_schema,
)
from shipyard.storage import Database, Transaction, open_database
from tests.conftest import scratch_postgres
from tests.messaging.conftest import OrderCreated, eventually, make_registry


class FlakyTransport(MemoryTransport):
    """A memory transport that can be switched off, like a broker going down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.attempts = 0

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        self.attempts += 1
        if self.down:
            raise TransportError("broker unreachable")
        await super().publish(messages)


async def published(transport: MemoryTransport, start: StartFrom = "beginning") -> list[str]:
    subscription = await transport.subscribe("probe", start_from=start)
    deliveries = await subscription.fetch(1000, 0.01)
    await subscription.close()
    return [d.message.event_id for d in deliveries]


async def test_an_event_is_published_only_if_its_transaction_commits(db: Database) -> None:
    outbox = Outbox(make_registry())
    transport = MemoryTransport()
    kept, dropped = OrderCreated(order_id="kept"), OrderCreated(order_id="dropped")
    async with db.transaction() as tx:
        await outbox.add(tx, kept)

    async def add_then_fail() -> None:
        async with db.transaction() as tx:
            await outbox.add(tx, dropped)
            raise RuntimeError("business rule failed")

    with pytest.raises(RuntimeError):
        await add_then_fail()
    assert await OutboxRelay(db, transport).drain() == 1
    assert await published(transport) == [kept.id]


async def test_the_relay_publishes_in_order_and_marks_rows_sent(db: Database) -> None:
    outbox = Outbox(make_registry())
    transport = MemoryTransport()
    events = [OrderCreated(order_id=f"o-{n}") for n in range(12)]
    async with db.transaction() as tx:
        await outbox.add(tx, *events[:5])
    async with db.transaction() as tx:
        for event in events[5:]:
            await outbox.add(tx, event)
    relay = OutboxRelay(db, transport, batch_size=5)
    assert await relay.drain() == 12
    assert await relay.drain() == 0, "sent rows are not published again"
    assert await published(transport) == [e.id for e in events]


async def test_an_invalid_event_is_rejected_before_anything_is_written(db: Database) -> None:
    outbox = Outbox(make_registry())
    async with db.transaction() as tx:
        with pytest.raises(EventValidationError) as info:
            await outbox.add(
                tx, OrderCreated(order_id="ok"), OrderCreated(order_id="x", quantity=-1)
            )
        assert await tx.fetch("SELECT * FROM shipyard_outbox") == []
    assert info.value.field == "quantity"


async def test_the_relay_wakes_on_commit_without_waiting_for_its_poll(db: Database) -> None:
    outbox = Outbox(make_registry())
    transport = MemoryTransport()
    # A one-hour poll: only the commit notification can explain a prompt publish.
    async with OutboxRelay(db, transport, outbox=outbox, poll_interval=3600) as relay:
        await eventually(lambda: relay.failures == 0 and outbox._wakers != set())
        async with db.transaction() as tx:
            await outbox.add(tx, OrderCreated(order_id="o-1"))
        await eventually(lambda: relay.published == 1)


async def test_rows_accumulate_while_the_transport_is_down_and_drain_on_return(
    db: Database,
) -> None:
    outbox = Outbox(make_registry())
    transport = FlakyTransport()
    transport.down = True
    clock = ManualClock()
    events = [OrderCreated(order_id=f"o-{n}") for n in range(3)]
    async with OutboxRelay(db, transport, outbox=outbox, clock=clock, retry_max_delay=8) as relay:
        for event in events:
            async with db.transaction() as tx:
                await outbox.add(tx, event)
        await eventually(lambda: transport.attempts >= 6)
        assert relay.published == 0
        async with db.transaction() as tx:
            unsent = await tx.fetch("SELECT COUNT(*) FROM shipyard_outbox WHERE sent_at IS NULL")
        assert unsent == [(3,)]
        transport.down = False
        await eventually(lambda: relay.published == 3)
    assert await published(transport) == [e.id for e in events]
    # Backoff grows (equal jitter: each delay lies in [ceiling/2, ceiling]) and is capped.
    assert clock.slept[0] <= 0.1 < clock.slept[4]
    assert max(clock.slept) <= 8


class NotUpYet:
    """A database whose first ``failures`` transactions fail, as while it starts."""

    def __init__(self, db: Database, failures: int) -> None:
        self._db = db
        self.failures = failures

    def transaction(self, **options: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database is starting up")
        return self._db.transaction(**options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def test_relay_retries_installing_its_schema_instead_of_ending(db: Database) -> None:
    clock = ManualClock()
    outbox = Outbox(make_registry())
    transport = MemoryTransport()
    event = OrderCreated(order_id="o-1")
    async with db.transaction() as tx:
        await outbox.add(tx, event)
    flaky = NotUpYet(db, failures=2)
    async with OutboxRelay(flaky, transport, outbox=outbox, clock=clock) as relay:  # type: ignore[arg-type]
        await eventually(lambda: relay.published == 1)
    assert flaky.failures == 0
    assert relay.failures == 0
    assert len(clock.slept) >= 2
    assert await published(transport) == [event.id]


async def test_relay_settings_are_validated_at_construction(db: Database) -> None:
    with pytest.raises(ConfigError) as info:
        OutboxRelay(db, MemoryTransport(), batch_size=0)
    assert info.value.field == "batch_size"
    with pytest.raises(ConfigError) as info:
        OutboxRelay(db, MemoryTransport(), retry_base_delay=5, retry_max_delay=1)
    assert info.value.field == "retry_max_delay"


async def test_outbox_and_inbox_work_on_postgresql() -> None:
    async with scratch_postgres() as url:
        db = await open_database(url)
        try:
            await install_schema(db)
            async with db.transaction() as tx:
                await tx.execute("CREATE TABLE reserved (order_id TEXT PRIMARY KEY)")
            registry = make_registry()
            outbox = Outbox(registry)
            transport = MemoryTransport()
            bus = EventBus(transport, db, registry, clock=ManualClock(), fetch_wait=0.05)

            @bus.subscribe(OrderCreated, group="inventory")
            async def reserve(event: OrderCreated, tx: Transaction) -> None:
                await tx.execute("INSERT INTO reserved VALUES (?)", event.order_id)

            event = OrderCreated(order_id="o-1")
            async with db.transaction() as tx:
                await outbox.add(tx, event)
            relay = OutboxRelay(db, transport)
            await relay.drain()
            await transport.publish([outbox.registry.encode(event)])  # a duplicate
            async with bus:
                # Both deliveries acknowledged: the duplicate was seen, and skipped.
                await eventually(lambda: transport._positions.get("inventory") == 2)
            assert bus.handled == 1
            async with db.transaction() as tx:
                assert await tx.fetch("SELECT order_id FROM reserved") == [("o-1",)]
                inbox = await tx.fetch("SELECT group_name, event_id FROM shipyard_inbox")
            assert inbox == [("inventory", event.id)]
        finally:
            await db.close()
