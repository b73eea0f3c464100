"""A service process that stops dead at a chosen moment, for the kill -9 tests.

``python -m tests.messaging.crashing_service relay DIR`` writes five events to the outbox,
publishes them and then hangs BEFORE marking them sent (printing ``PUBLISHED``).
``python -m tests.messaging.crashing_service consumer DIR`` consumes with one event per
transaction and hangs inside the handler of ``o-3`` BEFORE committing (printing
``HANGING``). The test kills the process with SIGKILL at that point.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from shipyard.messaging import (
    EventBus,
    Outbox,
    OutboxRelay,
    SqliteTransport,
    WireMessage,
    install_schema,
    open_transport,
)
from shipyard.storage import Transaction, open_database
from tests.messaging.conftest import OrderCreated, make_registry

ORDER_IDS = [f"o-{n}" for n in range(1, 6)]


class HangAfterPublish(SqliteTransport):
    async def publish(self, messages: Sequence[WireMessage]) -> None:
        await super().publish(messages)
        print("PUBLISHED", flush=True)
        await asyncio.sleep(3600)


async def relay(directory: Path) -> None:
    db = await open_database(f"sqlite:///{directory / 'orders.db'}")
    await install_schema(db)
    outbox = Outbox(make_registry())
    async with db.transaction() as tx:
        await outbox.add(tx, *(OrderCreated(order_id=o, ordering_key=o) for o in ORDER_IDS))
    transport = HangAfterPublish(f"sqlite:///{directory / 'bus.db'}")
    await transport.connect()
    await OutboxRelay(db, transport).drain()


async def consumer(directory: Path) -> None:
    transport = await open_transport(f"sqlite:///{directory / 'bus.db'}")
    db = await open_database(f"sqlite:///{directory / 'inventory.db'}")
    bus = EventBus(transport, db, make_registry(), batch_size=1)

    @bus.subscribe(OrderCreated, group="inventory")
    async def reserve(event: OrderCreated, tx: Transaction) -> None:
        await tx.execute("INSERT INTO reserved (order_id) VALUES (?)", event.order_id)
        if event.order_id == "o-3":
            print("HANGING", flush=True)
            await asyncio.sleep(3600)

    async with bus:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    role, directory = sys.argv[1], Path(sys.argv[2])
    asyncio.run(relay(directory) if role == "relay" else consumer(directory))
