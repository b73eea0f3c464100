"""NATS going away: the outbox keeps the events, the relay backs off, everything drains."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from pathlib import Path

from shipyard.core import ManualClock
from shipyard.messaging import EventBus, Outbox, OutboxRelay, install_schema
from shipyard.messaging.nats import NatsTransport
from shipyard.storage import Transaction, open_database
from tests.conftest import require_server
from tests.messaging.conftest import OrderCreated, eventually, make_registry


class TcpProxy:
    """Forwards a local port to NATS; ``stop()`` is the network (or broker) going down."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()


async def test_events_added_while_nats_is_unreachable_are_published_when_it_returns(
    tmp_path: Path,
) -> None:
    require_server("NATS", 4222)
    stream = f"test_{uuid.uuid4().hex[:12]}"
    proxy = TcpProxy(4222)
    await proxy.start()
    via_proxy = NatsTransport(
        f"nats://127.0.0.1:{proxy.port}", stream=stream, publish_timeout=0.3, reconnect_wait=0.05
    )
    await via_proxy.connect()
    direct = NatsTransport("nats://127.0.0.1:4222", stream=stream)
    await direct.connect()

    registry = make_registry()
    orders = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    inventory = await open_database(f"sqlite:///{tmp_path / 'inventory.db'}")
    await install_schema(orders)
    async with inventory.transaction() as tx:
        await tx.execute("CREATE TABLE reserved (order_id TEXT NOT NULL)")
    outbox = Outbox(registry)
    bus = EventBus(direct, inventory, registry, clock=ManualClock(), fetch_wait=0.05)

    @bus.subscribe(OrderCreated, group="inventory")
    async def reserve(event: OrderCreated, tx: Transaction) -> None:
        await tx.execute("INSERT INTO reserved VALUES (?)", event.order_id)

    async def place(order_id: str) -> None:
        async with orders.transaction() as tx:
            await outbox.add(tx, OrderCreated(order_id=order_id))

    try:
        async with bus, OutboxRelay(orders, via_proxy, outbox=outbox, clock=ManualClock()) as relay:
            await place("before")
            await eventually(lambda: relay.published == 1)

            await proxy.stop()
            for n in range(3):
                await place(f"during-{n}")
            await eventually(lambda: relay.failures >= 2)
            async with orders.transaction() as tx:
                waiting = await tx.fetchone(
                    "SELECT COUNT(*) FROM shipyard_outbox WHERE sent_at IS NULL"
                )
            assert waiting == (3,)

            await proxy.start()
            await eventually(lambda: bus.handled == 4, within=20)
            assert relay.failures == 0
        async with inventory.transaction() as tx:
            rows = await tx.fetch("SELECT order_id FROM reserved ORDER BY order_id")
        assert [r[0] for r in rows] == ["before", "during-0", "during-1", "during-2"]
    finally:
        await direct.delete_stream()
        await direct.close()
        await via_proxy.close()
        with contextlib.suppress(Exception):
            await proxy.stop()
        await orders.close()
        await inventory.close()
