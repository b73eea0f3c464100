"""Database pools (the storage bulkheads) exported on /metrics, read at scrape time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.core import ConfigError
from shipyard.observability import ServiceMetrics
from shipyard.storage import PooledDatabase, PoolExhaustedError, open_database


def pool_samples(metrics: ServiceMetrics) -> dict[tuple[str, str, str], float]:
    """``(metric, database, pool) -> value`` for every ``shipyard_db_pool_*`` sample."""
    text = metrics.render().decode()
    return {
        (s.name, s.labels["database"], s.labels["pool"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("shipyard_db_pool_")
    }


async def test_a_full_pool_shows_in_use_waiting_and_rejected(tmp_path: Path) -> None:
    db = await open_database(
        f"sqlite:///{tmp_path}/orders.db",
        pools={"api": {"size": 1, "max_wait": 0.05}, "analytics": {"size": 2}},
    )
    metrics = ServiceMetrics()
    metrics.watch_database("orders", db)
    try:
        idle = pool_samples(metrics)
        assert idle[("shipyard_db_pool_size", "orders", "api")] == 1
        assert idle[("shipyard_db_pool_size", "orders", "analytics")] == 2
        assert idle[("shipyard_db_pool_in_use", "orders", "api")] == 0

        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with db.transaction(pool="api", readonly=True):
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await holding.wait()
        waiter = asyncio.create_task(_read(db, "api"))
        await asyncio.sleep(0.01)
        busy = pool_samples(metrics)
        assert busy[("shipyard_db_pool_in_use", "orders", "api")] == 1
        assert busy[("shipyard_db_pool_waiting", "orders", "api")] == 1
        with pytest.raises(PoolExhaustedError):
            await waiter
        release.set()
        await holder

        after = pool_samples(metrics)
        assert after[("shipyard_db_pool_rejected_total", "orders", "api")] == 1
        assert after[("shipyard_db_pool_rejected_total", "orders", "analytics")] == 0
        assert after[("shipyard_db_pool_in_use", "orders", "api")] == 0
    finally:
        await db.close()


async def _read(db: PooledDatabase, pool: str) -> None:
    async with db.transaction(pool=pool, readonly=True) as tx:
        await tx.fetch("SELECT 1")


async def test_unwatching_removes_the_series_and_bad_arguments_are_named(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path}/a.db")
    metrics = ServiceMetrics()
    stop = metrics.watch_database("a", db)
    try:
        assert ("shipyard_db_pool_size", "a", "default") in pool_samples(metrics)
        stop()
        assert pool_samples(metrics) == {}
        with pytest.raises(ConfigError, match="name"):
            metrics.watch_database("", db)
        with pytest.raises(ConfigError, match="database"):
            metrics.watch_database("b", object())  # type: ignore[arg-type]
    finally:
        await db.close()
