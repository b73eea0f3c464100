"""Orchestrated saga throughput and latency: a 4-step order saga with in-process
participants, durable saga log on SQLite and on PostgreSQL, against the same flow written
naively (no persistence, no recovery) in the same run as the ceiling.

Targets (issue 7): >= 500 completed sagas/s on SQLite; durable >= 25% of the naive
ceiling; p99 saga latency reported. ``BENCH_SAGAS`` sets sagas per run (default 4,000),
``BENCH_CONCURRENCY`` how many run at once (default 64).

Run: ``python bench/saga.py`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

# Runnable as a plain script: make ``shipyard`` importable from a source checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shipyard.saga import Orchestrator, SagaDefinition, SagaState, Step, StepContext
from shipyard.storage import open_database

SAGAS = int(os.environ.get("BENCH_SAGAS", "4000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


class Order(msgspec.Struct):
    order_id: str
    quantity: int = 1
    amount: int = 300
    reservation: str | None = None
    charge: str | None = None


class Participants:
    """In-process inventory and payments: a counter each, idempotent by key."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}
        self.reserved: set[str] = set()
        self.charged: set[str] = set()

    async def create(self, ctx: StepContext[Order]) -> None:
        self.orders[ctx.data.order_id] = "PENDING"

    async def cancel(self, ctx: StepContext[Order]) -> None:
        self.orders[ctx.data.order_id] = "CANCELLED"

    async def reserve(self, ctx: StepContext[Order]) -> Order:
        self.reserved.add(ctx.idempotency_key)
        return msgspec.structs.replace(ctx.data, reservation=ctx.idempotency_key)

    async def release(self, ctx: StepContext[Order]) -> None:
        self.reserved.discard(f"{ctx.saga_id}:reserve_inventory")

    async def charge(self, ctx: StepContext[Order]) -> Order:
        self.charged.add(ctx.idempotency_key)
        return msgspec.structs.replace(ctx.data, charge=ctx.idempotency_key)

    async def refund(self, ctx: StepContext[Order]) -> None:
        self.charged.discard(f"{ctx.saga_id}:charge_payment")

    async def confirm(self, ctx: StepContext[Order]) -> None:
        self.orders[ctx.data.order_id] = "CONFIRMED"


def order_saga(p: Participants) -> SagaDefinition[Order]:
    return SagaDefinition(
        "order",
        [
            Step("create_order", p.create, compensation=p.cancel),
            Step("reserve_inventory", p.reserve, compensation=p.release),
            Step("charge_payment", p.charge, compensation=p.refund),
            Step("confirm_order", p.confirm, pivot=True),
        ],
        data_type=Order,
    )


async def naive_saga(p: Participants, order: Order, saga_id: str) -> None:
    """The same flow as plain code: try the steps, undo in reverse on failure."""
    data = order
    done: list[Callable[[StepContext[Order]], Awaitable[None]]] = []
    steps = [
        ("create_order", p.create, p.cancel),
        ("reserve_inventory", p.reserve, p.release),
        ("charge_payment", p.charge, p.refund),
    ]
    try:
        for name, action, undo in steps:
            result = await action(StepContext(saga_id, "order", name, 1, data))
            data = result or data
            done.append(undo)
        await p.confirm(StepContext(saga_id, "order", "confirm_order", 1, data))
    except Exception:
        for undo in reversed(done):
            await undo(StepContext(saga_id, "order", "undo", 1, data, compensating=True))
        raise


Runner = Callable[[int], Awaitable[None]]


async def measure(run_one: Runner, sagas: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < sagas:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await run_one(index)
            latencies.append(time.perf_counter() - started)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return sagas / (time.perf_counter() - start), sorted(latencies)


def p99(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000


async def durable(url: str, sagas: int) -> tuple[float, list[float]]:
    db = await open_database(url)
    participants = Participants()
    orch = Orchestrator(db)
    orch.register(order_saga(participants))
    await orch.install()
    prefix = uuid.uuid4().hex[:8]

    async def run_one(index: int) -> None:
        record = await orch.execute("order", Order(f"o-{index}"), saga_id=f"{prefix}-{index}")
        if record.state is not SagaState.COMPLETED:
            raise RuntimeError(f"saga {record.saga_id} ended {record.state}")

    await measure(run_one, min(200, sagas))  # warm-up: connections, statement caches
    result = await measure(run_one, sagas)
    await db.close()
    return result


async def naive(sagas: int) -> tuple[float, list[float]]:
    participants = Participants()

    async def run_one(index: int) -> None:
        await naive_saga(participants, Order(f"o-{index}"), f"naive-{index}")

    await measure(run_one, min(200, sagas))
    return await measure(run_one, sagas)


async def postgres(sagas: int) -> tuple[float, list[float]] | None:
    try:
        import asyncpg

        admin = await asyncpg.connect(PG_ADMIN, timeout=2)
    except Exception as error:
        print(f"PostgreSQL not reachable at {PG_ADMIN}: {error!r}")
        return None
    name = f"bench_saga_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        return await durable(f"postgresql://postgres@127.0.0.1:5432/{name}", sagas)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def run() -> None:
    print(f"{SAGAS} completed 4-step sagas per run, {CONCURRENCY} at a time")
    print(f"{'flow':<36}{'sagas/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'of naive':>10}")
    ceiling, naive_latencies = await naive(SAGAS)
    rows: list[tuple[str, float, list[float]]] = [
        ("naive (no persistence, ceiling)", ceiling, naive_latencies)
    ]
    with tempfile.TemporaryDirectory() as directory:
        rate, latencies = await durable(f"sqlite:///{Path(directory) / 'orders.db'}", SAGAS)
        rows.append(("durable, SQLite saga log", rate, latencies))
    pg = await postgres(SAGAS)
    if pg is not None:
        rows.append(("durable, PostgreSQL saga log", *pg))
    for name, rate, lat in rows:
        p50 = lat[len(lat) // 2] * 1000
        print(f"{name:<36}{rate:>10.0f}{p50:>9.2f}{p99(lat):>9.2f}{rate / ceiling:>9.1%}")
    sqlite_rate = rows[1][1]
    print(
        f"target: SQLite >= 500 sagas/s -> {'met' if sqlite_rate >= 500 else 'MISSED'}; "
        f"durable >= 25% of naive -> {'met' if sqlite_rate >= 0.25 * ceiling else 'MISSED'}"
    )


def main() -> None:
    """Run the saga benchmark."""
    asyncio.run(run())


if __name__ == "__main__":
    main()
