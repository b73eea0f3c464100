"""Projections: catch-up, restart-safe checkpoints, failure isolation, rebuild, live follow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shipyard.core import ManualClock
from shipyard.eventsourcing import (
    EventSourcingError,
    EventStore,
    Projection,
    ProjectionRunner,
    Repository,
    handles,
)
from shipyard.storage import Transaction
from tests.eventsourcing.conftest import settle
from tests.eventsourcing.read_models import (
    AccountingTotals,
    CustomerOrderHistory,
    WarehouseFulfilment,
)
from tests.eventsourcing.shop import Order, OrderPlaced, OrderShipped, shop_registry


def runner(store: EventStore, *projections: Projection, **options: Any) -> ProjectionRunner:
    chosen = projections or (CustomerOrderHistory(), WarehouseFulfilment(), AccountingTotals())
    return ProjectionRunner(store, shop_registry(), chosen, clock=ManualClock(), **options)


async def place_orders(store: EventStore, count: int, *, ship_every: int = 2) -> None:
    repo = Repository(store, Order, registry=shop_registry())
    for i in range(count):
        order = Order(f"o{i}")
        order.place(f"customer-{i % 3}", 100 * (i + 1))
        if i % ship_every == 0:
            order.ship("north" if i % 4 == 0 else "south")
        await repo.save(order)
    await settle(store)


async def query(store: EventStore, sql: str) -> list[tuple[Any, ...]]:
    async with store.db.transaction() as tx:
        return await tx.fetch(sql)


async def test_three_read_models_catch_up_from_one_stream(store: EventStore) -> None:
    await place_orders(store, 8)
    projections = runner(store)
    await projections.install()

    assert await projections.catch_up() == 3 * 12

    assert await query(
        store,
        "SELECT order_id, status FROM customer_orders"
        " WHERE customer = 'customer-1' ORDER BY order_id",
    ) == [("o1", "placed"), ("o4", "shipped"), ("o7", "placed")]
    assert await query(
        store, "SELECT warehouse, shipped FROM warehouse_fulfilment ORDER BY warehouse"
    ) == [
        ("north", 2),
        ("south", 2),
    ]
    assert await query(store, "SELECT cents, orders FROM accounting_totals") == [(3600, 8)]
    status = await projections.status("accounting_totals")
    assert (status.state, status.events_behind, status.error) == ("running", 0, None)


async def test_a_restart_resumes_at_the_checkpoint_without_skipping_or_double_applying(
    store: EventStore,
) -> None:
    await place_orders(store, 10, ship_every=100)
    first = runner(store, AccountingTotals(), batch_size=4)
    await first.install()
    await first.step("accounting_totals")  # 4 events applied, then the process "dies"

    await place_orders_more(store)
    second = runner(store, AccountingTotals(), batch_size=4)
    await second.install()  # idempotent: the table and checkpoint stay
    await second.catch_up()

    assert await query(store, "SELECT cents, orders FROM accounting_totals") == [(5500 + 7, 11)]


async def place_orders_more(store: EventStore) -> None:
    order = Order("late")
    order.place("z", 7)
    await Repository(store, Order, registry=shop_registry()).save(order)
    await settle(store)


class BrokenFulfilment(WarehouseFulfilment):
    """Fails on the south warehouse until ``fixed``."""

    fixed = False

    @handles(OrderShipped)
    async def shipped(self, event: OrderShipped, tx: Transaction, table: str) -> None:
        if event.warehouse == "south" and not self.fixed:
            raise RuntimeError("south warehouse is not mapped")
        await super().shipped(event, tx, table)


async def test_a_failing_handler_stops_only_its_projection_at_that_event(store: EventStore) -> None:
    await place_orders(store, 4)  # o0 ships north, o2 ships south
    broken = BrokenFulfilment()
    projections = runner(store, CustomerOrderHistory(), broken, AccountingTotals())
    await projections.install()

    await projections.catch_up()

    status = await projections.status("warehouse_fulfilment")
    assert status.state == "failed"
    assert status.error is not None
    assert "south warehouse is not mapped" in status.error
    failing = [e for e in await store.read_all() if e.name == "OrderShipped"][1]
    assert status.failed_position == failing.position
    assert await query(store, "SELECT warehouse, shipped FROM warehouse_fulfilment") == [
        ("north", 1)
    ]
    assert (await projections.status("customer_orders")).events_behind == 0
    assert await query(store, "SELECT orders FROM accounting_totals") == [(4,)]

    broken.fixed = True
    await projections.resume("warehouse_fulfilment")
    await projections.catch_up()

    assert await query(
        store, "SELECT warehouse, shipped FROM warehouse_fulfilment ORDER BY warehouse"
    ) == [("north", 1), ("south", 1)]
    assert (await projections.status("warehouse_fulfilment")).state == "running"


class AccountingInDollars(AccountingTotals):
    """A new version of the accounting model: whole dollars instead of cents."""

    @handles(OrderPlaced)
    async def placed(self, event: OrderPlaced, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"INSERT INTO {table} VALUES ('revenue', ?, 1) ON CONFLICT (ledger) DO UPDATE"
            f" SET cents = {table}.cents + excluded.cents, orders = {table}.orders + 1",
            event.total_cents // 100,
        )


async def test_rebuild_fills_a_fresh_table_while_the_old_one_serves_then_swaps(
    store: EventStore,
) -> None:
    await place_orders(store, 6, ship_every=100)
    old = runner(store, AccountingTotals())
    await old.install()
    await old.catch_up()
    new = runner(store, AccountingInDollars(), batch_size=2)
    seen_during_rebuild: list[Any] = []

    async def read_while_rebuilding(position: int) -> None:
        seen_during_rebuild.extend(await query(store, "SELECT cents FROM accounting_totals"))

    replayed = await new.rebuild("accounting_totals", on_progress=read_while_rebuilding)

    assert replayed == 7  # 6 placed + 1 shipped
    assert seen_during_rebuild == [(2100,)] * 4  # every read mid-rebuild: the old model
    assert await query(store, "SELECT cents, orders FROM accounting_totals") == [(21, 6)]
    assert (await new.status("accounting_totals")).generation == 2

    await place_orders_more(store)
    await new.catch_up()  # the live checkpoint moved with the swap: no double counting
    assert await query(store, "SELECT cents, orders FROM accounting_totals") == [(21, 7)]


async def test_a_failed_rebuild_leaves_the_old_model_serving(store: EventStore) -> None:
    await place_orders(store, 4)
    projections = runner(store, WarehouseFulfilment())
    await projections.install()
    await projections.catch_up()

    with pytest.raises(EventSourcingError, match="old read model keeps serving"):
        await runner(store, BrokenFulfilment()).rebuild("warehouse_fulfilment")

    assert await query(store, "SELECT count(*) FROM warehouse_fulfilment") == [(2,)]


async def test_live_appends_reach_the_read_model_promptly(store: EventStore) -> None:
    projections = ProjectionRunner(store, shop_registry(), [AccountingTotals()], poll_interval=30.0)
    await projections.install()
    async with projections:
        await place_orders(store, 1)
        for _ in range(2000):  # woken by the append, not by the 30 s poll
            if await query(store, "SELECT orders FROM accounting_totals") == [(1,)]:
                break
            await asyncio.sleep(0.01)

    assert await query(store, "SELECT orders FROM accounting_totals") == [(1,)]


class StrictTotals(Projection):
    """Its table refuses totals above 250 cents: the SQL statement fails, not the handler."""

    name = "strict_totals"

    def schema(self, table: str) -> list[str]:
        return [
            f"CREATE TABLE {table} (order_id TEXT PRIMARY KEY, cents BIGINT CHECK (cents <= 250))"
        ]

    @handles(OrderPlaced)
    async def placed(self, event: OrderPlaced, tx: Transaction, table: str) -> None:
        await tx.execute(f"INSERT INTO {table} VALUES (?, ?)", event.order_id, event.total_cents)


async def test_a_failing_statement_stops_the_projection_at_its_own_event(store: EventStore) -> None:
    await place_orders(store, 4, ship_every=100)  # totals 100, 200, 300, 400
    projections = runner(store, StrictTotals())
    await projections.install()

    await projections.catch_up()

    status = await projections.status("strict_totals")
    third = [e for e in await store.read_all() if e.name == "OrderPlaced"][2]
    assert (status.state, status.failed_position) == ("failed", third.position)
    assert await query(store, "SELECT order_id FROM strict_totals ORDER BY order_id") == [
        ("o0",),
        ("o1",),
    ]
