"""What the event stores' fast paths must keep: a save is one trip to the database yet a
stale one writes none of its rows (events, outbox, snapshot), and loads that arrive
together (answered by one query) each get their own aggregate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.core import ManualClock
from shipyard.eventsourcing import (
    AggregateNotFoundError,
    ConcurrencyError,
    Repository,
    SqlEventStore,
    open_event_store,
)
from shipyard.messaging import Outbox, install_schema
from shipyard.storage import PooledDatabase, open_database
from tests.conftest import scratch_postgres
from tests.eventsourcing.shop import Order, shop_registry


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        opened = await open_database(f"sqlite:///{tmp_path / 'events.db'}")
        try:
            yield opened
        finally:
            await opened.close()
        return
    async with scratch_postgres() as url:
        opened = await open_database(url)
        try:
            yield opened
        finally:
            await opened.close()


async def grouped_store(db: PooledDatabase) -> SqlEventStore:
    # Several transactions in flight, each taking the saves queued behind it.
    return await open_event_store(db, clock=ManualClock(), group_commit=2)


async def test_a_stale_save_in_a_shared_transaction_writes_none_of_its_rows(
    db: PooledDatabase,
) -> None:
    store = await grouped_store(db)
    await install_schema(db)
    registry = shop_registry()
    repo = Repository(
        store,
        Order,
        registry=registry,
        outbox=Outbox(registry, clock=ManualClock()),
        snapshot_every=1,
    )
    first = Order("taken")
    first.place("ann", 5)
    await repo.save(first)

    stale = Order("taken")  # thinks the stream is new
    stale.place("bob", 7)
    fresh = [Order(f"o-{n}") for n in range(12)]
    for n, order in enumerate(fresh):
        order.place(f"c{n}", n)
    results = await asyncio.gather(
        *(repo.save(order) for order in [*fresh[:6], stale, *fresh[6:]]),
        return_exceptions=True,
    )

    assert [type(r) for r in results].count(ConcurrencyError) == 1
    assert isinstance(results[6], ConcurrencyError)
    async with db.transaction() as tx:
        outbox = await tx.fetch("SELECT event_id FROM shipyard_outbox")
    expected = {
        e.event_id
        for o in ["taken", *(f"o-{n}" for n in range(12))]
        for e in await store.read_stream(f"Order-{o}")
    }
    assert {row[0] for row in outbox} == expected  # none of the stale save's
    loaded = await repo.load("taken")
    assert (loaded.customer, loaded.total_cents, loaded.version) == ("ann", 5, 1)


async def test_loads_arriving_together_each_get_their_own_aggregate(db: PooledDatabase) -> None:
    store = await grouped_store(db)
    repo = Repository(store, Order, registry=shop_registry(), snapshot_every=3)
    for n in range(16):
        order = Order(f"o-{n}")
        order.place(f"c{n}", 100 + n)
        if n % 2:
            order.ship("w")
        await repo.save(order)

    loaded = await asyncio.gather(
        *(repo.load(f"o-{n}") for n in range(16)), repo.load("missing"), return_exceptions=True
    )

    assert isinstance(loaded[-1], AggregateNotFoundError)
    for n, order in enumerate(loaded[:-1]):
        assert isinstance(order, Order)
        expected = ("shipped" if n % 2 else "placed", f"c{n}", 100 + n, 1 + n % 2)
        assert (order.status, order.customer, order.total_cents, order.version) == expected


async def test_a_lone_sqlite_save_commits_on_the_loop_and_concurrent_ones_share_commits(
    tmp_path: Path,
) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'events.db'}")
    written_here: list[bool] = []
    write_now = db.write_now  # type: ignore[attr-defined]

    def recording(fn: object, **options: object) -> bool:
        done: bool = write_now(fn, **options)
        written_here.append(done)
        return done

    db.write_now = recording  # type: ignore[attr-defined]
    try:
        store = await open_event_store(db, clock=ManualClock())
        repo = Repository(store, Order, registry=shop_registry())
        order = Order("lone")
        order.place("ann", 5)
        assert await repo.save(order) == 1
        assert written_here == [True]

        stale = Order("lone")  # thinks the stream is new
        stale.place("bob", 7)
        with pytest.raises(ConcurrencyError):
            await repo.save(stale)
        assert written_here == [True, True]  # refused on the loop, nothing written
        assert [e.version for e in await store.read_stream("Order-lone")] == [1]
        assert (await repo.load("lone")).customer == "ann"

        orders = [Order(f"o-{n}") for n in range(20)]
        for n, each in enumerate(orders):
            each.place(f"c{n}", n)
        before = store._committer.transactions
        await asyncio.gather(*(repo.save(each) for each in orders))
        assert written_here == [True, True]  # company: none of them on the loop
        assert store._committer.transactions - before < 20  # they shared commits
        assert [(await repo.load(f"o-{n}")).customer for n in range(20)] == [
            f"c{n}" for n in range(20)
        ]
    finally:
        await db.close()
