"""The same shop on the distributed profile: a PostgreSQL database per service, NATS
JetStream for events, Redis for the gateway's counters and cache — both order flows reach
the same end states and stock and money are conserved."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from examples.shop.distributed import distributed_settings, drop_distributed, prepare_distributed
from examples.shop.supervisor import Supervisor, free_port

from tests.conftest import require_server
from tests.shop.driver import ShopDriver, assert_conserved
from tests.shop.test_end_to_end import MIXED, outcome, place_and_settle

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Supervisor]:
    require_server("PostgreSQL", 5432)
    require_server("NATS", 4222)
    require_server("Redis", 6379)
    var = tmp_path_factory.mktemp("distributed") / "var"
    registry_port = free_port()
    # A unique prefix: the databases and the JetStream stream are this run's own.
    settings = distributed_settings(
        var, f"consul://127.0.0.1:{registry_port}", prefix=f"shop_{uuid.uuid4().hex[:8]}"
    )
    await prepare_distributed(settings)
    supervisor = Supervisor(
        var,
        registry_port=registry_port,
        gateway_port=0,
        base_port=None,
        settings=settings,
        start_timeout=60.0,
    )
    try:
        await supervisor.start()
        yield supervisor
    finally:
        await supervisor.stop()
        await drop_distributed(settings)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def driver(shop: Supervisor) -> AsyncIterator[ShopDriver]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield ShopDriver(shop, http)


async def test_both_flows_reach_the_same_end_states_on_postgres_and_jetstream(
    driver: ShopDriver,
) -> None:
    before = await driver.stock()
    orchestrated = await place_and_settle(driver, MIXED, "orchestrated")
    choreographed = await place_and_settle(driver, MIXED, "choreographed")
    assert [outcome(p) for p in orchestrated] == [
        ("CONFIRMED", None),
        ("CONFIRMED", None),
        ("CANCELLED", "declined"),
        ("CANCELLED", "out of stock"),
        ("CONFIRMED", None),
    ]
    assert [outcome(p) for p in choreographed] == [outcome(p) for p in orchestrated]
    after, ledger = await driver.stock(), await driver.ledger()
    assert_conserved(orchestrated + choreographed, before, after, ledger)


async def test_every_inventory_instance_consumes_from_jetstream(shop: Supervisor) -> None:
    assert [i.consumer for i in shop.instances("inventory")] == [True, True]
