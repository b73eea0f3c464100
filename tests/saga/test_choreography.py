"""Choreographed steps publish the next event (or a failure) in their own transaction, and
the tracker reconstructs each business transaction from the events by correlation id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.core import ManualClock
from shipyard.messaging import Event, EventBus, EventRegistry, MemoryTransport, Outbox, OutboxRelay
from shipyard.saga import (
    ChoreographyTracker,
    FlowNotFound,
    FlowState,
    Participant,
    StepRejected,
)
from shipyard.storage import Database, Transaction, open_database


class OrderPlaced(Event):
    order_id: str
    quantity: int


class StockReserved(Event):
    order_id: str


class StockRejected(Event):
    order_id: str
    reason: str


class PaymentCompleted(Event):
    order_id: str


class OrderCancelled(Event):
    order_id: str


FLOW_EVENTS = (OrderPlaced, StockReserved, StockRejected, PaymentCompleted, OrderCancelled)


class Shop:
    """Three services (orders, inventory, payments) and a tracker, choreographed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.registry = EventRegistry()
        for event_type in FLOW_EVENTS:
            self.registry.register(event_type)
        self.transport = MemoryTransport()
        self.clock = ManualClock()
        self.dbs: dict[str, Database] = {}
        self.outboxes: dict[str, Outbox] = {}
        self.buses: list[EventBus] = []
        self.relays: list[OutboxRelay] = []

    async def service(self, name: str) -> tuple[Database, Outbox, EventBus]:
        db = await open_database(f"sqlite:///{self.tmp_path / (name + '.db')}")
        outbox = Outbox(self.registry)
        bus = EventBus(self.transport, db, self.registry, clock=self.clock, fetch_wait=0.02)
        self.dbs[name], self.outboxes[name] = db, outbox
        self.buses.append(bus)
        self.relays.append(OutboxRelay(db, self.transport, outbox=outbox, poll_interval=0.02))
        return db, outbox, bus

    async def start(self) -> None:
        for bus in self.buses:
            await bus.start()
        for relay in self.relays:
            relay.start()

    async def stop(self) -> None:
        for relay in self.relays:
            await relay.stop()
        for bus in self.buses:
            await bus.stop()
        for db in self.dbs.values():
            await db.close()


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[tuple[Shop, ChoreographyTracker]]:
    shop = Shop(tmp_path)
    orders_db, orders_outbox, orders_bus = await shop.service("orders")
    inventory_db, inventory_outbox, inventory_bus = await shop.service("inventory")
    _, payments_outbox, payments_bus = await shop.service("payments")
    tracker_db, _, tracker_bus = await shop.service("tracker")
    async with inventory_db.transaction() as tx:
        await tx.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER)")
        await tx.execute("INSERT INTO stock VALUES ('widget', 5)")
    async with orders_db.transaction() as tx:
        await tx.execute("CREATE TABLE orders (order_id TEXT PRIMARY KEY, status TEXT)")

    async def reserve(event: OrderPlaced, tx: Transaction) -> Event:
        await tx.execute(
            "UPDATE stock SET available = available - ? WHERE sku = 'widget'", event.quantity
        )
        row = await tx.fetchone("SELECT available FROM stock WHERE sku = 'widget'")
        if row is None or row[0] < 0:
            raise StepRejected("not enough widgets")
        return StockReserved(order_id=event.order_id)

    async def charge(event: StockReserved, tx: Transaction) -> Event:
        return PaymentCompleted(order_id=event.order_id)

    async def cancel(event: StockRejected, tx: Transaction) -> Event:
        await tx.execute(
            "UPDATE orders SET status = 'CANCELLED' WHERE order_id = ?", event.order_id
        )
        return OrderCancelled(order_id=event.order_id)

    Participant(inventory_bus, inventory_outbox, group="inventory").on(
        OrderPlaced,
        reserve,
        failure=lambda event, error: StockRejected(order_id=event.order_id, reason=str(error)),
    )
    Participant(payments_bus, payments_outbox, group="payments").on(StockReserved, charge)
    Participant(orders_bus, orders_outbox, group="orders").on(StockRejected, cancel)
    tracker = ChoreographyTracker(
        tracker_db,
        flow="order",
        completes=[PaymentCompleted],
        fails=[StockRejected],
        compensated=[OrderCancelled],
        clock=shop.clock,
    )
    await tracker.install()
    tracker.attach(tracker_bus, FLOW_EVENTS)
    await shop.start()
    yield shop, tracker
    await shop.stop()


async def place(shop: Shop, order_id: str, quantity: int) -> None:
    async with shop.dbs["orders"].transaction() as tx:
        await tx.execute("INSERT INTO orders VALUES (?, 'PENDING')", order_id)
        await shop.outboxes["orders"].add(
            tx, OrderPlaced(order_id=order_id, quantity=quantity, correlation_id=order_id)
        )


async def settled(tracker: ChoreographyTracker, order_id: str, state: FlowState) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            flow = await tracker.get(order_id)
        except FlowNotFound:
            flow = None
        if flow is not None and flow.state is state:
            return [e.name for e in flow.events]
        assert loop.time() < deadline, f"flow {order_id} never became {state}: {flow}"
        await asyncio.sleep(0.01)


async def test_the_tracker_follows_a_successful_flow_through_every_service(
    shop: tuple[Shop, ChoreographyTracker],
) -> None:
    services, tracker = shop
    await place(services, "o-1", 2)
    timeline = await settled(tracker, "o-1", FlowState.COMPLETED)
    assert timeline == ["OrderPlaced", "StockReserved", "PaymentCompleted"]
    flow = await tracker.get("o-1")
    placed, reserved, _ = flow.events
    assert reserved.causation_id == placed.event_id


async def test_a_rejected_step_undoes_its_writes_and_triggers_compensation(
    shop: tuple[Shop, ChoreographyTracker],
) -> None:
    services, tracker = shop
    await place(services, "o-2", 50)
    timeline = await settled(tracker, "o-2", FlowState.COMPENSATED)
    assert timeline == ["OrderPlaced", "StockRejected", "OrderCancelled"]
    async with services.dbs["inventory"].transaction() as tx:
        assert await tx.fetchone("SELECT available FROM stock") == (5,)
    async with services.dbs["orders"].transaction() as tx:
        assert await tx.fetchone("SELECT status FROM orders WHERE order_id = 'o-2'") == (
            "CANCELLED",
        )
    assert ("o-2", FlowState.COMPENSATED) in await tracker.flows(state=FlowState.COMPENSATED)


async def test_a_flow_with_no_news_for_a_while_is_listed_as_stalled(tmp_path: Path) -> None:
    clock = ManualClock()
    db = await open_database(f"sqlite:///{tmp_path / 'tracker.db'}")
    tracker = ChoreographyTracker(db, flow="order", completes=[PaymentCompleted], clock=clock)
    await tracker.install()
    async with db.transaction() as tx:
        await tracker.record(OrderPlaced(order_id="o-3", quantity=1, correlation_id="o-3"), tx)
    assert await tracker.stalled(older_than=60) == []
    clock.advance(61)
    assert await tracker.stalled(older_than=60) == ["o-3"]
    with pytest.raises(FlowNotFound, match="'o-4'"):
        await tracker.get("o-4")
    await db.close()
