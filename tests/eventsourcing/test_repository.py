"""Repository: load via snapshots, save with optimistic concurrency, outbox, upcasting."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from shipyard.core import ManualClock
from shipyard.eventsourcing import (
    Aggregate,
    AggregateNotFoundError,
    ConcurrencyError,
    EventStore,
    NewEvent,
    Repository,
    UnregisteredEventError,
    applies,
)
from shipyard.messaging import Event, Outbox, install_schema
from shipyard.resilience import Retry
from tests.eventsourcing.shop import Order, OrderCancelled, OrderPlaced, shop_registry


def orders(store: EventStore, **options: Any) -> Repository[Order]:
    return Repository(store, Order, registry=shop_registry(), **options)


async def test_saved_aggregate_loads_with_the_same_state_and_version(store: EventStore) -> None:
    repo = orders(store)
    order = Order("42")
    order.place("ada", 1500)
    order.ship("north")

    assert await repo.save(order) == 2
    loaded = await repo.load("42")

    assert (loaded.customer, loaded.total_cents, loaded.status, loaded.version) == (
        "ada",
        1500,
        "shipped",
        2,
    )
    assert loaded.pending_events == ()
    assert [e.stream_id for e in await store.read_stream("Order-42")] == ["Order-42"] * 2


async def test_loading_an_unknown_aggregate_says_which_stream(store: EventStore) -> None:
    with pytest.raises(AggregateNotFoundError, match="Order-nope"):
        await orders(store).load("nope")
    assert await orders(store).get("nope") is None


async def test_a_stale_save_raises_writes_nothing_and_keeps_events_pending(
    store: EventStore,
) -> None:
    repo = orders(store)
    order = Order("7")
    order.place("bob", 900)
    await repo.save(order)
    first, second = await repo.load("7"), await repo.load("7")
    first.ship("north")
    await repo.save(first)

    second.cancel("changed my mind")
    with pytest.raises(ConcurrencyError) as caught:
        await repo.save(second)

    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert len(second.pending_events) == 1
    assert [e.name for e in await store.read_stream("Order-7")] == ["OrderPlaced", "OrderShipped"]


async def test_a_retry_on_concurrency_error_reloads_and_runs_the_command_again(
    store: EventStore,
) -> None:
    repo = orders(store)
    order = Order("8")
    order.place("bob", 900)
    await repo.save(order)
    stale = await repo.load("8")
    order.ship("north")
    await repo.save(order)  # another writer moves the stream on
    copies = [stale]

    async def cancel() -> None:
        current = copies.pop() if copies else await repo.load("8")
        current.cancel("too slow")
        await repo.save(current)

    retry = Retry(
        max_attempts=3,
        base_delay=0.0,
        max_delay=0.0,
        retry_on=ConcurrencyError,
        clock=ManualClock(),
    )
    await retry.call(cancel)

    loaded = await repo.load("8")
    assert (loaded.status, loaded.version) == ("cancelled", 3)


async def test_snapshots_every_n_events_let_load_skip_the_early_events(store: EventStore) -> None:
    repo = orders(store, snapshot_every=3)
    order = Order("s")
    order.place("cy", 100)
    await repo.save(order)
    for i in range(6):
        order.cancel(f"note {i}")
        await repo.save(order)

    snapshot, later = await store.load("Order-s")

    assert snapshot is not None
    assert snapshot.version == 6
    assert [e.version for e in later] == [7]
    loaded = await repo.load("s")
    assert (loaded.version, loaded.customer, loaded.status) == (7, "cy", "cancelled")


async def test_a_snapshot_of_another_schema_is_ignored_and_events_replayed(
    store: EventStore,
) -> None:
    await _save_placed(store, "x", snapshot_every=1)

    class OrderV2(Order):
        category = "Order"
        snapshot_schema: ClassVar[int] = 2

    loaded = await Repository(store, OrderV2, registry=shop_registry(), snapshot_every=1).load("x")

    assert (loaded.version, loaded.customer) == (1, "dee")


async def _save_placed(store: EventStore, id: str, **options: Any) -> None:
    order = Order(id)
    order.place("dee", 300)
    await orders(store, **options).save(order)


async def test_saved_events_enter_the_outbox_in_the_same_transaction(store: EventStore) -> None:
    await install_schema(store.db)
    registry = shop_registry()
    repo = Repository(store, Order, registry=registry, outbox=Outbox(registry, clock=ManualClock()))
    order = Order("o")
    order.place("eve", 10)
    await repo.save(order)
    stale = Order("o")
    stale.place("eve", 10)
    with pytest.raises(ConcurrencyError):
        await repo.save(stale)

    async with store.db.transaction() as tx:
        rows = await tx.fetch("SELECT name, event_id FROM shipyard_outbox")

    assert rows == [("OrderPlaced", (await store.read_stream("Order-o"))[0].event_id)]


async def test_old_event_versions_are_upcast_on_read(store: EventStore) -> None:
    await store.append(
        "Order-old",
        [
            NewEvent(
                "e1",
                "OrderPlaced",
                b'{"name":"OrderPlaced","version":0,"data":'
                b'{"order_id":"old","buyer":"fay","total":5}}',
            )
        ],
        expected_version=0,
    )
    registry = shop_registry()

    @registry.upcaster("OrderPlaced", from_version=0)
    def rename_fields(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "order_id": payload["order_id"],
            "customer": payload["buyer"],
            "total_cents": payload["total"],
            "items": 1,
        }

    order = await Repository(store, Order, registry=registry).load("old")

    assert (order.customer, order.total_cents, order.status) == ("fay", 5, "placed")


async def test_an_unregistered_event_type_names_the_event_and_stream(store: EventStore) -> None:
    await store.append(
        "Order-u",
        [NewEvent("e1", "OrderTeleported", b'{"name":"OrderTeleported","version":1,"data":{}}')],
        expected_version=0,
    )

    with pytest.raises(UnregisteredEventError) as caught:
        await orders(store).load("u")

    assert "OrderTeleported" in str(caught.value)
    assert "Order-u" in str(caught.value)
    assert isinstance(caught.value, LookupError)


async def test_concurrent_saves_of_many_aggregates_all_land(store: EventStore) -> None:
    repo = orders(store, snapshot_every=2)

    async def place(i: int) -> None:
        order = Order(str(i))
        order.place(f"c{i}", i)
        await repo.save(order)
        order.ship("w")
        await repo.save(order)

    await asyncio.gather(*(place(i) for i in range(25)))

    for i in (0, 13, 24):
        loaded = await repo.load(str(i))
        assert (loaded.status, loaded.total_cents, loaded.version) == ("shipped", i, 2)


def test_the_apply_table_is_built_once_per_class_and_inherited() -> None:
    class Flagged(Event):
        flag: str

    class Base(Aggregate):
        flags: list[str]

        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.flags = []

        @applies(Flagged)
        def _flagged(self, event: Flagged) -> None:
            self.flags.append(event.flag)

    class Child(Base):
        @applies(OrderCancelled)
        def _cancelled(self, event: OrderCancelled) -> None:
            self.flags.append("cancelled")

    child = Child("c")
    child._raise(Flagged(flag="x"))
    child._raise(OrderCancelled(order_id="c", reason="r"))
    child.apply(OrderPlaced(order_id="c", customer="z", total_cents=1, items=1))  # no applier

    assert child.flags == ["x", "cancelled"]
    assert child.version == 3
    assert Child._appliers is not Base._appliers
    assert Flagged in Child._appliers
    assert Child.stream_id_for("c") == "Child-c"


async def test_load_many_rebuilds_several_aggregates_and_leaves_out_missing_ones(
    store: EventStore,
) -> None:
    repo = orders(store)
    for id in ("a", "b"):
        order = Order(id)
        order.place(f"buyer-{id}", 10)
        await repo.save(order)

    loaded = await repo.load_many(["a", "b", "missing"])

    assert {id: o.customer for id, o in loaded.items()} == {"a": "buyer-a", "b": "buyer-b"}


async def test_an_old_version_whose_fields_still_fit_is_upcast_too(store: EventStore) -> None:
    body = (
        b'{"name":"OrderPlaced","version":0,"data":'
        b'{"order_id":"v0","customer":"gus","total_cents":5,"items":1}}'
    )
    await store.append("Order-v0", [NewEvent("e1", "OrderPlaced", body)], expected_version=0)
    registry = shop_registry()

    @registry.upcaster("OrderPlaced", from_version=0)
    def cents_were_dollars(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "total_cents": payload["total_cents"] * 100}

    order = await Repository(store, Order, registry=registry).load("v0")

    assert order.total_cents == 500
