"""The compensation harness proves the example order saga under every step failure and
every crash point — in process, and with real processes killed by SIGKILL."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.saga import SagaRecord, SagaState, Step, StepContext
from shipyard.saga.testing import RunPlan, SagaHarness
from shipyard.storage import Database, open_database
from tests.conftest import scratch_postgres
from tests.saga.order import (
    BALANCE,
    STOCK,
    OrderData,
    install_shop,
    order_saga,
    shop_state,
)

ROOT = Path(__file__).resolve().parents[2]


async def reset_shop(shop: Database) -> None:
    async with shop.transaction() as tx:
        for table in ("orders", "stock", "reservations", "accounts", "charges"):
            await tx.execute(f"DELETE FROM {table}")
    await install_shop(shop)


def shop_invariants(open_shop: Callable[[], Database]) -> list[Callable[[SagaRecord], object]]:
    async def stock_and_money_are_conserved(record: SagaRecord) -> None:
        state = await shop_state(open_shop(), record.saga_id)
        assert state["stock"] + state["held"] == STOCK, state  # type: ignore[operator]
        assert state["balance"] + state["charged"] == BALANCE, state  # type: ignore[operator]

    async def order_ends_confirmed_or_cancelled(record: SagaRecord) -> None:
        state = await shop_state(open_shop(), record.saga_id)
        if record.state is SagaState.COMPLETED:
            assert (state["status"], state["held"], state["charged"]) == ("CONFIRMED", 2, 300)
        elif record.failed_step == "create_order":
            assert state["status"] is None  # the order was never created
        else:
            assert (state["status"], state["held"], state["charged"]) == ("CANCELLED", 0, 0)

    return [stock_and_money_are_conserved, order_ends_confirmed_or_cancelled]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_order_saga_survives_every_failure_and_crash_point(
    backend: str, shop: Database, tmp_path: Path
) -> None:
    async def run(url: str) -> None:
        async def prepare(plan: RunPlan) -> Database:
            await reset_shop(shop)
            return await open_database(url)

        harness = SagaHarness(
            order_saga(shop),
            data=lambda saga_id: OrderData(order_id=saga_id),
            prepare=prepare,
            invariants=shop_invariants(lambda: shop),
        )
        report = await harness.run()
        report.raise_for_failures()
        labels = [r.plan.label for r in report.results]
        assert "charge_payment fails, crash after commit 7" in labels
        # A crash after every commit but the last: happy path 5 commits; with each
        # compensation failing once, create/reserve/charge/confirm failing take 2/5/8/11.
        assert len(report.crash_runs) == 4 + 1 + 4 + 7 + 10

    if backend == "sqlite":
        await run(f"sqlite:///{tmp_path / 'saga.db'}")
    else:
        async with scratch_postgres() as url:
            await run(url)


async def test_the_harness_catches_a_compensation_that_does_not_undo(
    shop: Database, tmp_path: Path
) -> None:
    good = order_saga(shop)

    async def refund_nothing(ctx: StepContext[OrderData]) -> None:
        return None  # the bug: money is kept

    steps = [
        Step(s.name, s.action, compensation=refund_nothing, pivot=s.pivot)
        if s.name == "charge_payment"
        else s
        for s in good.order
    ]
    buggy = good.replace_steps(steps)

    async def prepare(plan: RunPlan) -> Database:
        await reset_shop(shop)
        return await open_database(f"sqlite:///{tmp_path / 'saga.db'}")

    harness = SagaHarness(
        buggy,
        data=lambda saga_id: OrderData(order_id=saga_id),
        prepare=prepare,
        invariants=shop_invariants(lambda: shop),
    )
    report = await harness.run(crashes=False)
    assert [r.plan.label for r in report.failures] == ["confirm_order fails"]
    with pytest.raises(AssertionError, match=r"order_ends_confirmed_or_cancelled.*300"):
        report.raise_for_failures()


async def test_the_harness_catches_a_saga_that_does_not_end_as_planned(
    shop: Database, tmp_path: Path
) -> None:
    async def prepare(plan: RunPlan) -> Database:
        await reset_shop(shop)
        async with shop.transaction() as tx:
            await tx.execute("UPDATE stock SET available = 0")  # reserve_inventory always fails
        return await open_database(f"sqlite:///{tmp_path / 'saga.db'}")

    harness = SagaHarness(
        order_saga(shop), data=lambda i: OrderData(order_id=i), prepare=prepare, invariants=[]
    )
    report = await harness.run(crashes=False)
    assert report.failures[0].plan.label == "happy path"
    assert "expected COMPLETED" in (report.failures[0].problem or "")


async def test_the_order_saga_survives_real_processes_killed_at_every_commit(
    tmp_path: Path,
) -> None:
    directories: dict[str, Path] = {}

    async def prepare(plan: RunPlan) -> Database:
        directory = tmp_path / plan.saga_id
        directory.mkdir()
        directories[plan.saga_id] = directory
        shop = await open_database(f"sqlite:///{directory / 'shop.db'}")
        await install_shop(shop)
        await shop.close()
        return await open_database(f"sqlite:///{directory / 'saga.db'}")

    async def spawn(plan: RunPlan, phase: str) -> tuple[int, str]:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.saga.order_child",
            phase,
            str(directories[plan.saga_id]),
            cwd=ROOT,
            env={**os.environ, **plan.to_env()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await child.communicate()
        return await child.wait(), output.decode()

    async def conserved(record: SagaRecord) -> None:
        shop = await open_database(f"sqlite:///{directories[record.saga_id] / 'shop.db'}")
        try:
            for invariant in shop_invariants(lambda: shop):
                await invariant(record)  # type: ignore[misc]
        finally:
            await shop.close()

    harness = SagaHarness(
        order_saga_for_shape(),
        data=lambda saga_id: OrderData(order_id=saga_id),
        prepare=prepare,
        invariants=[conserved],
        compensation_failures=0,
    )
    report = await harness.run(spawn=spawn, concurrency=8)
    report.raise_for_failures()
    killed = report.crash_runs
    # happy path 5 commits, create/reserve/charge/confirm failing 2/4/6/8: one kill each
    # after every commit but the last.
    assert len(killed) == 4 + 1 + 3 + 5 + 7
    assert all(r.record is not None and r.record.state.finished for r in killed)


def order_saga_for_shape() -> object:
    """The order saga's definition for the parent (its steps run only in the children)."""
    return order_saga(_NoShop())  # type: ignore[arg-type]


class _NoShop:
    url = "no-shop"

    def transaction(self) -> object:
        raise AssertionError("the parent process must not run saga steps")
