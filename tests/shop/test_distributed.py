"""The same shop on the distributed profile: a PostgreSQL database per service, NATS
JetStream for events, Redis for the gateway's counters and cache — both order flows reach
the same end states and stock and money are conserved."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from examples.shop.distributed import distributed_settings, drop_distributed, prepare_distributed
from examples.shop.supervisor import Supervisor, free_port

from tests.conftest import require_server
from tests.shop.driver import Placed, ShopDriver, assert_conserved
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


async def test_the_whole_shop_stays_within_its_postgres_connection_budget(
    shop: Supervisor, driver: ShopDriver
) -> None:
    # Traffic first (a burst of concurrent orders), so pools have grown where they would.
    burst = MIXED * 4
    answers = await asyncio.gather(*(driver.place(u, lines) for u, lines in burst))
    assert [status for status, _ in answers] == [202] * len(burst), answers
    placed = [
        Placed(answer["order_id"], user_id, lines, answer["total_cents"])
        for (user_id, lines), (_, answer) in zip(burst, answers, strict=True)
    ]
    assert await driver.settle(placed, within=60) == []
    template = shop.settings.database
    prefix = template.rsplit("/", 1)[1].replace("{service}", "")
    admin = await asyncpg.connect(template.rsplit("/", 1)[0] + "/postgres")
    try:
        rows = await admin.fetch(
            "SELECT datname, count(*) FROM pg_stat_activity WHERE datname LIKE $1 GROUP BY datname",
            prefix + "%",
        )
    finally:
        await admin.close()
    per_database = {str(r[0])[len(prefix) :]: int(r[1]) for r in rows}
    # The bulkhead pools (examples/shop/pools.py) bound every database: 4 api +
    # 2 background (+ 1 analytics for orders) per process, 2 + 1 per inbox; and each
    # process's readiness check keeps one connection of its own.
    assert per_database["orders"] <= 7 + 1
    assert per_database["inventory"] <= 2 * (6 + 1)  # two instances
    assert per_database["orders_inbox"] <= 3
    assert sum(per_database.values()) <= 73 + 10
