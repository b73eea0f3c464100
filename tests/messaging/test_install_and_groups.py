"""Installing the messaging tables concurrently, and consumer-group names checked up front."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.core import ConfigError
from shipyard.messaging import EventBus, MemoryTransport, check_group_name, install_schema
from shipyard.storage import open_database
from tests.conftest import scratch_postgres
from tests.messaging.conftest import OrderCreated, TransportKit, eventually, make_registry

TABLES = ("shipyard_outbox", "shipyard_inbox", "shipyard_dead_letters")


async def test_concurrent_installs_on_postgresql_all_succeed() -> None:
    async with scratch_postgres() as url:
        # Separate pools, like separate service instances starting at the same moment.
        dbs = [await open_database(url) for _ in range(8)]
        try:
            await asyncio.gather(*(install_schema(db) for db in dbs))
            await asyncio.gather(*(install_schema(db) for db in dbs))  # and again: no-op
            async with dbs[0].transaction(readonly=True) as tx:
                rows = await tx.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_name LIKE ?",
                    "shipyard_%",
                )
        finally:
            for db in dbs:
                await db.close()
    assert sorted(row[0] for row in rows) == sorted(TABLES)


async def test_concurrent_installs_on_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    dbs = [await open_database(url) for _ in range(4)]
    try:
        await asyncio.gather(*(install_schema(db) for db in dbs))
        async with dbs[0].transaction(readonly=True) as tx:
            rows = await tx.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    finally:
        for db in dbs:
            await db.close()
    assert set(TABLES) <= {row[0] for row in rows}


@pytest.mark.parametrize(
    "group", ["orders.user-cache", "a*", "b>", "with space", "slash/name", "", "x" * 129]
)
async def test_subscribe_rejects_a_group_name_some_transport_would_refuse(
    group: str, tmp_path: Path
) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'consumer.db'}")
    try:
        bus = EventBus(MemoryTransport(), db, make_registry())

        async def handle(event: OrderCreated, tx: object) -> None:
            pass

        with pytest.raises(ConfigError) as raised:
            bus.subscribe(OrderCreated, group=group, handler=handle)
    finally:
        await db.close()
    assert raised.value.field == "group"
    assert "letters, digits, '-' and '_'" in str(raised.value)


@pytest.mark.parametrize("group", ["orders-user-cache", "inventory", "tracker_order", "A1"])
def test_portable_group_names_are_accepted(group: str) -> None:
    assert check_group_name(group) == group


async def test_a_portable_group_name_consumes_on_every_transport(kit: TransportKit) -> None:
    seen: list[str] = []

    async def handle(event: OrderCreated, tx: object) -> None:
        seen.append(event.order_id)

    bus = await kit.bus()
    bus.subscribe(OrderCreated, group="orders-user-cache", handler=handle)
    await bus.start()
    await bus.publish(OrderCreated(order_id="1"))
    await eventually(lambda: bool(seen))
    assert seen == ["1"]
