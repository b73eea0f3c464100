"""The distributed profile: a PostgreSQL database per service, NATS JetStream for events,
Redis for the gateway's rate-limit counters and response cache.

:func:`prepare_distributed` creates the databases that do not exist yet (``shop_users``,
``shop_orders``, ...) and checks that NATS and Redis answer, so ``shipyard up --profile
distributed`` fails at once with a clear message instead of ten services failing later.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from examples.shop.serve import SERVICES
from examples.shop.settings import Flow, ShopSettings

POSTGRES = "postgresql://postgres@127.0.0.1:5432/{database}"
NATS = "nats://127.0.0.1:4222"
REDIS = "redis://127.0.0.1:6379/0"


def distributed_settings(
    var: Path,
    registry: str,
    *,
    flow: Flow = "orchestrated",
    prefix: str = "shop",
    postgres: str = POSTGRES,
    nats: str = NATS,
    redis: str = REDIS,
) -> ShopSettings:
    """Settings for the distributed profile; ``prefix`` names the databases and the
    JetStream stream (tests use a unique one)."""
    return ShopSettings(
        var=var.resolve(),
        registry=registry,
        bus=nats,
        bus_stream=prefix,
        database=postgres.replace("{database}", f"{prefix}_{{service}}"),
        flow=flow,
        profile="distributed",
        redis=redis,
    )


def databases(settings: ShopSettings) -> list[str]:
    """The PostgreSQL database names the shop uses (each service's, and its inbox)."""
    names = []
    for service in SERVICES:
        for name in (service, f"{service}-inbox"):
            names.append(settings.database_url(name).rsplit("/", 1)[1])
    return names


async def prepare_distributed(settings: ShopSettings) -> None:
    """Create missing databases; check NATS and Redis. Raises ``OSError`` (or the
    driver's error) naming what is not reachable."""
    import asyncpg
    import nats
    import redis.asyncio as redis

    admin_url = settings.database_url("x").rsplit("/", 1)[0] + "/postgres"
    connection: Any = await asyncpg.connect(admin_url, timeout=5)
    try:
        existing = {r[0] for r in await connection.fetch("SELECT datname FROM pg_database")}
        for name in databases(settings):
            if name not in existing:
                await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    client: Any = await asyncio.wait_for(nats.connect(settings.bus, connect_timeout=3), 5)
    await client.close()
    if settings.redis:
        store: Any = redis.from_url(settings.redis)
        try:
            await store.ping()
        finally:
            await store.aclose()


async def drop_distributed(settings: ShopSettings) -> None:
    """Drop the profile's databases (tests clean up with this)."""
    import asyncpg

    admin_url = settings.database_url("x").rsplit("/", 1)[0] + "/postgres"
    connection: Any = await asyncpg.connect(admin_url, timeout=5)
    try:
        for name in databases(settings):
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
