"""Load + chaos: a few hundred concurrent orders while payments and an inventory instance
are killed with SIGKILL and restarted. Afterwards every order is CONFIRMED or CANCELLED,
none is lost, stock and money are conserved and no order was charged twice."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from examples.shop.supervisor import Supervisor

from tests.shop.driver import Placed, ShopDriver, assert_conserved

pytestmark = pytest.mark.asyncio(loop_scope="module")

RUN_SECONDS = 30.0
WORKERS = 8
USERS = ("u-1", "u-2", "u-3", "u-4", "u-5", "declined-1")


async def customer(driver: ShopDriver, rng: random.Random, until: float) -> list[Placed]:
    """One simulated customer: places orders back to back until ``until``."""
    placed = []
    while time.monotonic() < until:
        user = rng.choice(USERS)
        lines = [
            {"product_id": f"p-{rng.randint(1, 12):03d}", "quantity": rng.randint(1, 3)}
            for _ in range(rng.randint(1, 2))
        ]
        flow = rng.choice(("orchestrated", "choreographed"))
        status, answer = await driver.place(user, lines, flow=flow)
        assert status == 202, answer
        placed.append(Placed(answer["order_id"], user, lines, answer["total_cents"]))
        # A customer's think time: a few hundred orders in all, not a flood.
        await asyncio.sleep(rng.uniform(0.3, 0.8))
    return placed


async def chaos(shop: Supervisor, began: float) -> list[str]:
    """Kill payments and the consuming inventory instance a third into the run, restart
    them a few seconds later; returns what happened, for the failure message."""
    await asyncio.sleep(max(0.0, began + RUN_SECONDS / 3 - time.monotonic()))
    await shop.kill("payments-1")
    await shop.kill("inventory-1")
    await asyncio.sleep(5.0)
    await shop.restart("payments-1")
    await shop.restart("inventory-1")
    return ["killed payments-1, inventory-1", "restarted both"]


async def test_orders_under_load_survive_killed_instances_with_stock_and_money_conserved(
    shop: Supervisor, driver: ShopDriver
) -> None:
    before = await driver.stock()
    began = time.monotonic()
    until = began + RUN_SECONDS
    results = await asyncio.gather(
        chaos(shop, began),
        *(customer(driver, random.Random(seed), until) for seed in range(WORKERS)),
    )
    placed = [order for batch in results[1:] for order in batch]  # type: ignore[union-attr]
    assert len(placed) >= 150, f"only {len(placed)} orders placed"
    assert shop.instance("payments-1").restarts == 1
    stuck = await driver.settle(placed, within=120)
    assert stuck == [], f"{len(stuck)} orders never finished, e.g. {stuck[:3]}"
    after, ledger = await driver.stock(), await driver.ledger()
    assert_conserved(placed, before, after, ledger)
    statuses = {p.status for p in placed}
    assert statuses == {"CONFIRMED", "CANCELLED"}
    print(f"{len(placed)} orders: {sum(p.status == 'CONFIRMED' for p in placed)} confirmed")
