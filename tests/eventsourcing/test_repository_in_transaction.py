"""Repository inside an open transaction: an event-bus handler loads and saves an aggregate
so that its inbox row, the new events, the snapshot and the outbox rows commit together."""

from __future__ import annotations

from typing import Any

import pytest

from shipyard.core import ManualClock
from shipyard.eventsourcing import ConcurrencyError, EventStore, Repository
from shipyard.messaging import Delivery, EventBus, MemoryTransport, Outbox, install_schema
from shipyard.storage import Transaction
from tests.eventsourcing.shop import Order, OrderPlaced, shop_registry


async def count(store: EventStore, table: str) -> int:
    async with store.db.transaction(readonly=True) as tx:
        row = await tx.fetchone(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


class Setup:
    def __init__(self, store: EventStore, **options: Any) -> None:
        self.store = store
        self.registry = shop_registry()
        self.outbox = Outbox(self.registry, clock=ManualClock())
        self.orders = Repository(
            store, Order, registry=self.registry, outbox=self.outbox, **options
        )
        self.bus = EventBus(MemoryTransport(), store.db, self.registry, clock=ManualClock())
        self.fail_after_save = False

        @self.bus.subscribe(OrderPlaced, group="shipping")
        async def ship(event: OrderPlaced, tx: Transaction) -> None:
            order = await self.orders.load(event.order_id, tx=tx)
            order.ship("north")
            await self.orders.save(order, tx=tx)
            if self.fail_after_save:
                raise RuntimeError("the warehouse is closed")

    async def place(self, order_id: str) -> Delivery:
        await install_schema(self.store.db)
        order = Order(order_id)
        order.place("ann", 300)
        await self.orders.save(order)
        placed = (await self.store.read_stream(order.stream_id))[0]
        message = self.registry.encode(self.registry.decode(placed.body))
        return Delivery(message, position=1)


async def test_a_handler_loads_and_saves_in_its_own_transaction(store: EventStore) -> None:
    setup = Setup(store)
    delivery = await setup.place("o-1")
    await setup.bus.handle_batch("shipping", [delivery])
    order = await setup.orders.load("o-1")
    assert (order.status, order.version) == ("shipped", 2)
    assert await count(store, "shipyard_inbox") == 1
    async with store.db.transaction(readonly=True) as tx:
        names = [row[0] for row in await tx.fetch("SELECT name FROM shipyard_outbox ORDER BY seq")]
    assert names == ["OrderPlaced", "OrderShipped"]


async def test_a_redelivered_event_does_not_save_the_aggregate_twice(store: EventStore) -> None:
    setup = Setup(store)
    delivery = await setup.place("o-1")
    await setup.bus.handle_batch("shipping", [delivery])
    await setup.bus.handle_batch("shipping", [delivery])
    assert (await setup.orders.load("o-1")).version == 2


async def test_a_handler_failing_after_save_rolls_back_its_events_and_outbox_rows(
    store: EventStore,
) -> None:
    setup = Setup(store)
    delivery = await setup.place("o-1")
    setup.fail_after_save = True
    await setup.bus.handle_batch("shipping", [delivery])  # retried, then dead-lettered
    order = await setup.orders.load("o-1")
    assert (order.status, order.version) == ("placed", 1)
    assert await count(store, "shipyard_outbox") == 1  # only OrderPlaced
    assert await count(store, "shipyard_dead_letters") == 1


async def test_a_save_in_a_transaction_snapshots_and_loads_from_it(store: EventStore) -> None:
    setup = Setup(store, snapshot_every=2)
    delivery = await setup.place("o-1")
    await setup.bus.handle_batch("shipping", [delivery])
    async with store.db.transaction() as tx:
        loaded = await setup.orders.load("o-1", tx=tx)
    assert (loaded.status, loaded.version) == ("shipped", 2)
    assert await count(store, "es_snapshots") == 1


async def test_a_stale_save_in_a_transaction_raises_concurrency_error(store: EventStore) -> None:
    setup = Setup(store)
    await setup.place("o-1")
    async with store.db.transaction() as tx:
        stale = await setup.orders.load("o-1", tx=tx)
    fresh = await setup.orders.load("o-1")
    fresh.ship("south")
    await setup.orders.save(fresh)
    stale.ship("north")
    with pytest.raises(ConcurrencyError):
        async with store.db.transaction() as tx:
            await setup.orders.save(stale, tx=tx)
    assert [e.name for e in await store.read_stream("Order-o-1")] == ["OrderPlaced", "OrderShipped"]


async def test_get_in_a_transaction_answers_none_for_a_missing_aggregate(
    store: EventStore,
) -> None:
    setup = Setup(store)
    async with store.db.transaction(readonly=True) as tx:
        assert await setup.orders.get("nobody", tx=tx) is None
