"""One fixture for every IdempotencyStore backend, shared by the contract and middleware tests.

Memory and SQL stores read time from a ManualClock, so their leases and TTLs expire when
the test advances it. Redis expires keys on its own clock: there the test uses short real
leases and waits for the key to disappear (bounded, polling), never a fixed long sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipyard.core import ManualClock
from shipyard.idempotency import IdempotencyStore, MemoryIdempotencyStore, SqlIdempotencyStore
from tests.conftest import require_server

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
BACKENDS = ["memory", "sqlite", "postgresql", "redis"]


@dataclass
class Backend:
    """A store plus the way time passes for it."""

    name: str
    store: IdempotencyStore
    clock: ManualClock
    short: float
    """A lease/TTL (seconds) short enough for the test to wait out."""

    @property
    def expires_by_itself(self) -> bool:
        """True when the server drops expired keys (Redis), so purging finds nothing."""
        return self.name == "redis"

    async def outlive(self, key: str) -> None:
        """Let the ``short`` lease or TTL of ``key`` run out."""
        if not self.expires_by_itself:
            self.clock.advance(self.short + 0.001)
            return
        async with asyncio.timeout(5):
            while True:  # poll: Redis gives no notice when a key expires
                if await self.store.get(key) is None:
                    return
                await asyncio.sleep(0.02)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    clock = ManualClock(auto_advance=False)
    name: str = request.param
    if name == "memory":
        yield Backend(name, MemoryIdempotencyStore(clock=clock), clock, short=5.0)
    elif name in ("sqlite", "postgresql"):
        from shipyard.storage import open_database

        if name == "postgresql":
            require_server("PostgreSQL", 5432)
            url = POSTGRES_URL
        else:
            url = f"sqlite:///{tmp_path / 'service.db'}"
        db = await open_database(url)
        table = f"idem_test_{uuid.uuid4().hex[:12]}"
        sql_store = SqlIdempotencyStore(db, table=table, clock=clock)
        await sql_store.create_table()
        try:
            yield Backend(name, sql_store, clock, short=5.0)
        finally:
            await sql_store.drop_table()
            await db.close()
    else:
        require_server("Redis", 6379)
        from redis.asyncio import Redis

        from shipyard.idempotency import RedisIdempotencyStore

        prefix = f"test:idem:{uuid.uuid4().hex}"
        client = Redis.from_url(REDIS_URL)
        redis_store = RedisIdempotencyStore(client, prefix=prefix, clock=clock)
        try:
            yield Backend(name, redis_store, clock, short=0.2)
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
