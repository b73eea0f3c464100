"""Bulkheaded pools: a saturated pool waits or rejects on its own, the others keep going."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shipyard import ConfigError
from shipyard.core import ManualClock
from shipyard.resilience import BulkheadFullError
from shipyard.storage import (
    DEFAULT_POOLS,
    PooledDatabase,
    PoolExhaustedError,
    PoolSettings,
    UnknownPoolError,
    open_database,
)
from shipyard.storage.pools import Pools, pool_settings
from tests.conftest import PG_ADMIN, require_server


async def until(condition: Any) -> None:
    """Let other tasks run until ``condition()`` holds (bounded, so a bug fails the test)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_named_pools_start_from_the_literature_defaults() -> None:
    settings = pool_settings({"api": {}, "analytics": {"size": 3}, "reports": {"size": 2}})
    assert settings["api"] == PoolSettings(size=20, max_wait=5.0)
    assert settings["analytics"].size == 3
    assert settings["analytics"].max_wait == 30.0
    assert settings["reports"] == PoolSettings(size=2, max_wait=5.0)
    assert DEFAULT_POOLS["background"] == PoolSettings(size=10, max_wait=60.0)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"reports": {"max_wait": 1}}, "pools.reports.size"),
        ({"api": {"sise": 1}}, "pools.api.sise"),
        ({"api": {"size": 0}}, "pools.api.size"),
        ({"api": {"max_wait": -1}}, "pools.api.max_wait"),
        ({}, "pools"),
    ],
)
async def test_bad_pool_config_is_rejected_naming_the_setting(
    config: Any, field: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        await open_database(f"sqlite:///{tmp_path / 'x.db'}", pools=config)
    assert info.value.field == field


async def test_an_unknown_pool_is_an_error_listing_the_configured_ones(
    database_url: str,
) -> None:
    db = await open_database(database_url, pools={"api": {}, "analytics": {}})
    try:
        with pytest.raises(UnknownPoolError, match=r"'reports'.*api, analytics"):
            async with db.transaction(pool="reports"):
                pass
        with pytest.raises(KeyError):
            db.pool("reports")
    finally:
        await db.close()


async def test_an_exhausted_pool_raises_an_error_naming_it_after_its_max_wait(
    database_url: str,
) -> None:
    clock = ManualClock()
    pools = {"api": {}, "analytics": {"size": 1, "max_wait": 30, "max_queue": 1}}
    db = await open_database(database_url, pools=pools, clock=clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with db.transaction(pool="analytics", readonly=True) as tx:
            await tx.fetchone("SELECT 1")
            await release.wait()

    async def one_more() -> None:
        async with db.transaction(pool="analytics"):
            pass

    holder = asyncio.create_task(hold())
    await until(lambda: db.pool_metrics()["analytics"].in_use == 1)
    waiter = asyncio.create_task(one_more())
    await until(lambda: db.pool_metrics()["analytics"].waiting == 1)

    # The queue (one place) is taken: a third caller is turned away at once.
    with pytest.raises(PoolExhaustedError, match=r"'analytics'.*queue is full"):
        await one_more()
    clock.advance(29)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    clock.advance(1)
    with pytest.raises(PoolExhaustedError, match=r"'analytics'.*max_wait=30s") as info:
        await waiter
    assert isinstance(info.value, BulkheadFullError)
    assert isinstance(info.value, TimeoutError)
    assert info.value.pool == "analytics"
    # The api pool was never involved (readonly: on SQLite the holder is not the writer).
    async with db.transaction(pool="api", readonly=True) as tx:
        assert await tx.fetchone("SELECT 1") == (1,)

    metrics = db.pool_metrics()["analytics"]
    assert (metrics.size, metrics.in_use, metrics.waiting, metrics.rejected) == (1, 1, 0, 2)
    release.set()
    await holder
    assert db.pool_metrics()["analytics"].in_use == 0
    await db.close()


async def test_a_pool_view_runs_its_transactions_in_that_pool(database_url: str) -> None:
    db = await open_database(database_url, pools={"api": {}, "background": {"size": 2}})
    background = db.pool("background")
    assert background.url == db.url
    assert background.dialect == db.dialect
    async with background.transaction() as tx:
        await tx.fetchone("SELECT 1")
        in_use = {name: m.in_use for name, m in db.pool_metrics().items()}
    assert in_use == {"api": 0, "background": 1}
    await background.close()  # the view does not own the pool: the database still works
    async with db.transaction() as tx:
        assert await tx.fetchone("SELECT 2") == (2,)
    await db.close()


async def test_a_readonly_transaction_refuses_to_write(database_url: str) -> None:
    db = await open_database(database_url)
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    with pytest.raises((sqlite3.OperationalError, asyncpg.ReadOnlySQLTransactionError)):
        async with db.transaction(readonly=True) as tx:
            await tx.execute("INSERT INTO items (id) VALUES (1)")
    async with db.transaction(readonly=True) as tx:
        assert await tx.fetch("SELECT id FROM items") == []
    await db.close()


@pytest.fixture
async def gated_sqlite(tmp_path: Path) -> AsyncIterator[tuple[PooledDatabase, threading.Event]]:
    """A SQLite database whose ``gate()`` SQL function blocks until the event is set."""
    gate = threading.Event()

    def install_gate(conn: sqlite3.Connection) -> None:
        conn.create_function("gate", 0, lambda: int(gate.wait(10)))

    db = await open_database(
        f"sqlite:///{tmp_path / 'reports.db'}",
        pools={"api": {"size": 2}, "analytics": {"size": 2, "max_queue": 5}},
        on_connect=install_gate,
    )
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        await tx.execute("INSERT INTO orders (id, total) VALUES (1, 10)")
    yield db, gate
    gate.set()
    await db.close()


async def test_sqlite_reports_saturating_analytics_do_not_block_api_reads_or_writes(
    gated_sqlite: tuple[PooledDatabase, threading.Event],
) -> None:
    db, gate = gated_sqlite

    async def report() -> list[Any]:
        async with db.transaction(pool="analytics", readonly=True) as tx:
            return await tx.fetch("SELECT gate(), sum(total) FROM orders")

    reports = [asyncio.create_task(report()) for _ in range(3)]
    await until(lambda: db.pool_metrics()["analytics"].waiting == 1)

    for order_id in range(2, 6):
        async with db.transaction(pool="api") as tx:
            await tx.execute("INSERT INTO orders (id, total) VALUES (?, ?)", order_id, 1)
        async with db.transaction(pool="api", readonly=True) as tx:
            assert await tx.fetchone("SELECT count(*) FROM orders") == (order_id,)

    assert not any(task.done() for task in reports)
    analytics = db.pool_metrics()["analytics"]
    assert (analytics.in_use, analytics.waiting) == (2, 1)
    gate.set()
    results = await asyncio.gather(*reports)
    # Each report saw the snapshot it started with or a later one, never a torn one.
    assert all(rows[0][1] in range(10, 15) for rows in results)


async def test_postgres_reports_saturating_analytics_do_not_block_api_queries() -> None:
    require_server("PostgreSQL", 5432)
    db = await open_database(
        PG_ADMIN, pools={"api": {"size": 2}, "analytics": {"size": 2, "max_queue": 5}}
    )
    # The test holds an advisory lock the reports need: they stay busy until it lets go.
    blocker = await asyncpg.connect(PG_ADMIN)
    key = 0x5EED_0001
    await blocker.execute("SELECT pg_advisory_lock($1)", key)
    try:

        async def report() -> Any:
            async with db.transaction(pool="analytics") as tx:
                return await tx.fetchone("SELECT pg_advisory_xact_lock(?)::text, 42", key)

        reports = [asyncio.create_task(report()) for _ in range(3)]
        await until(lambda: db.pool_metrics()["analytics"].waiting == 1)
        for number in range(10):
            async with db.transaction(pool="api") as tx:
                assert await tx.fetchone("SELECT ?::int + 1", number) == (number + 1,)
        assert not any(task.done() for task in reports)
        analytics = db.pool_metrics()["analytics"]
        assert (analytics.in_use, analytics.waiting) == (2, 1)
    finally:
        await blocker.execute("SELECT pg_advisory_unlock($1)", key)
        await blocker.close()
    assert await asyncio.gather(*reports) == [("", 42)] * 3
    await db.close()


async def test_the_exhausted_pool_error_does_not_show_the_password() -> None:
    pools = Pools(
        "postgresql://orders:s3cret@db.internal/orders",
        {"api": PoolSettings(1, max_queue=1)},
        ManualClock(),
    )
    async with pools.slot("api"):
        waiter = asyncio.create_task(pools.slot("api").__aenter__())
        await until(lambda: pools.metrics()["api"].waiting == 1)
        with pytest.raises(PoolExhaustedError) as info:
            async with pools.slot("api"):
                pass
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    assert "orders:***@db.internal" in str(info.value)
    assert "s3cret" not in str(info.value)
