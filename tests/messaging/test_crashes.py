"""Processes killed with SIGKILL at the worst moment lose nothing and apply effects once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipyard.core import ManualClock
from shipyard.messaging import EventBus, Outbox, OutboxRelay, install_schema, open_transport
from shipyard.storage import Database, Transaction, open_database
from tests.messaging.conftest import OrderCreated, make_registry
from tests.messaging.crashing_service import ORDER_IDS

ROOT = Path(__file__).resolve().parents[2]


StartService = Callable[[str, Path], "subprocess.Popen[str]"]


@pytest.fixture
def start_service() -> Iterator[StartService]:
    started: list[subprocess.Popen[str]] = []

    def start(role: str, directory: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.messaging.crashing_service", role, str(directory)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def run_until(process: subprocess.Popen[str], marker: str) -> None:
    """Read the child's output until ``marker``, then SIGKILL it there."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == marker:
            process.kill()  # SIGKILL: no finally blocks, no flush, no goodbye
            process.wait()
            return
    pytest.fail(f"the child exited (status {process.wait()}) before printing {marker}")


async def consume_everything(directory: Path) -> Database:
    """Run a healthy inventory consumer over the shared bus until the log is drained."""
    transport = await open_transport(f"sqlite:///{directory / 'bus.db'}")
    db = await open_database(f"sqlite:///{directory / 'inventory.db'}")
    bus = EventBus(transport, db, make_registry(), clock=ManualClock(), fetch_wait=0.05)

    @bus.subscribe(OrderCreated, group="inventory")
    async def reserve(event: OrderCreated, tx: Transaction) -> None:
        await tx.execute("INSERT INTO reserved (order_id) VALUES (?)", event.order_id)

    async def acknowledged() -> int:
        async with transport._db.transaction() as tx:  # type: ignore[attr-defined]
            row = await tx.fetchone(
                "SELECT (SELECT MAX(seq) FROM shipyard_bus_log) - position"
                " FROM shipyard_bus_groups WHERE group_name = 'inventory'"
            )
        return -1 if row is None else int(row[0])

    async with bus:
        for _ in range(2000):
            if await acknowledged() == 0:
                break
            await asyncio.sleep(0.005)
        else:
            pytest.fail("the consumer never caught up with the log")
    await transport.close()
    return db


async def prepare_inventory(directory: Path) -> None:
    db = await open_database(f"sqlite:///{directory / 'inventory.db'}")
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE reserved (order_id TEXT NOT NULL)")
    await install_schema(db)
    await db.close()


async def reserved(db: Database) -> list[str]:
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT order_id FROM reserved ORDER BY order_id")
    await db.close()
    return [row[0] for row in rows]


async def test_a_relay_killed_between_publish_and_mark_republishes_and_effects_apply_once(
    tmp_path: Path, start_service: StartService
) -> None:
    await prepare_inventory(tmp_path)
    run_until(start_service("relay", tmp_path), "PUBLISHED")

    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    transport = await open_transport(f"sqlite:///{tmp_path / 'bus.db'}")
    assert await OutboxRelay(db, transport).drain() == 5, "nothing was marked sent: resend all"
    async with transport._db.transaction() as tx:  # type: ignore[attr-defined]
        assert await tx.fetchone("SELECT COUNT(*) FROM shipyard_bus_log") == (10,)
    await transport.close()
    await db.close()

    assert await reserved(await consume_everything(tmp_path)) == ORDER_IDS


async def test_a_consumer_killed_mid_handler_gets_the_event_again_and_applies_it_once(
    tmp_path: Path, start_service: StartService
) -> None:
    await prepare_inventory(tmp_path)
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    await install_schema(db)
    async with db.transaction() as tx:
        await Outbox(make_registry()).add(tx, *(OrderCreated(order_id=o) for o in ORDER_IDS))
    transport = await open_transport(f"sqlite:///{tmp_path / 'bus.db'}")
    await OutboxRelay(db, transport).drain()
    await transport.close()
    await db.close()

    run_until(start_service("consumer", tmp_path), "HANGING")
    # o-1 and o-2 committed before the kill; o-3 was mid-transaction.
    inventory = await open_database(f"sqlite:///{tmp_path / 'inventory.db'}")
    assert await reserved(inventory) == ["o-1", "o-2"]

    assert await reserved(await consume_everything(tmp_path)) == ORDER_IDS
