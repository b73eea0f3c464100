"""The database breaker: repeated connection failures fail fast, a probe lets traffic back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shipyard.core import ManualClock
from shipyard.storage import (
    DatabaseUnavailableError,
    PooledDatabase,
    PostgresDatabase,
    open_database,
    redacted_url,
)
from tests.conftest import require_server

PASSWORD = "s3cret-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; ``stop()`` is an outage (listener gone,
    open connections cut), ``start()`` the recovery, on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


async def open_postgres(url: str, **options: Any) -> PostgresDatabase:
    db = await open_database(url, **options)
    assert isinstance(db, PostgresDatabase)
    return db


async def select_one(db: PooledDatabase) -> object:
    async with db.transaction() as tx:
        return await tx.fetchone("SELECT 1")


def test_urls_in_messages_never_show_the_password() -> None:
    url = f"postgresql://postgres:{PASSWORD}@db.internal:5432/orders"
    assert redacted_url(url) == "postgresql://postgres:***@db.internal:5432/orders"
    assert redacted_url("postgresql://postgres@127.0.0.1/test") == (
        "postgresql://postgres@127.0.0.1/test"
    )


async def test_opening_an_unreachable_database_says_so_without_the_password() -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/test"
    with pytest.raises(DatabaseUnavailableError) as info:
        await open_database(url)
    assert isinstance(info.value, ConnectionError)
    assert "cannot connect" in str(info.value)
    assert "postgres:***@127.0.0.1" in str(info.value)
    assert PASSWORD not in str(info.value)


async def test_repeated_connection_failures_open_the_breaker_and_requests_fail_fast() -> None:
    clock = ManualClock()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/test"
    # min_size=0: open without connecting, as a service that starts before its database.
    db = await open_postgres(url, min_size=0, clock=clock)
    errors = []
    while db.health().available:
        with pytest.raises(DatabaseUnavailableError) as info:
            await select_one(db)
        errors.append(info.value)
    # Opening the pool went through the breaker as a success, so 4 failed calls of 5 trip it.
    assert len(errors) == db.breaker.minimum_calls - 1
    assert all("cannot connect" in str(error) for error in errors)

    with pytest.raises(DatabaseUnavailableError, match="breaker is open") as info:
        await select_one(db)
    assert info.value.retry_after == pytest.approx(db.breaker.reset_timeout)
    assert info.value.__cause__ is None  # rejected without a connection attempt
    assert db.breaker.metrics.rejected == 1
    assert all(PASSWORD not in str(error) for error in [*errors, info.value])
    health = db.health()
    assert (health.breaker, health.available) == ("open", False)
    assert PASSWORD not in health.database
    await db.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    require_server("PostgreSQL", 5432)
    proxy = TcpProxy(5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_after_an_outage_a_half_open_probe_lets_traffic_back(proxy: TcpProxy) -> None:
    clock = ManualClock()
    db = await open_postgres(
        f"postgresql://postgres@127.0.0.1:{proxy.port}/test", max_size=2, clock=clock
    )
    assert await select_one(db) == (1,)

    await proxy.stop()
    failures = 0
    while db.health().available:
        with pytest.raises(DatabaseUnavailableError):
            await select_one(db)
        failures += 1
    assert failures >= db.breaker.minimum_calls // 2

    await proxy.start()
    # Still open until reset_timeout has passed: requests keep failing fast meanwhile.
    with pytest.raises(DatabaseUnavailableError, match="breaker is open"):
        await select_one(db)
    clock.advance(db.breaker.reset_timeout)
    assert db.health().breaker == "half_open"
    assert await select_one(db) == (1,)  # the probe connects...
    assert db.health().breaker == "closed"  # ...and traffic flows again
    assert await select_one(db) == (1,)
    await db.close()


async def test_a_failed_probe_opens_the_breaker_again(proxy: TcpProxy) -> None:
    clock = ManualClock()
    db = await open_postgres(f"postgresql://postgres@127.0.0.1:{proxy.port}/test", clock=clock)
    await proxy.stop()
    while db.health().available:
        with pytest.raises(DatabaseUnavailableError):
            await select_one(db)
    clock.advance(db.breaker.reset_timeout)
    with pytest.raises(DatabaseUnavailableError, match="cannot connect"):
        await select_one(db)
    assert db.health().breaker == "open"
    await db.close()


async def test_query_errors_do_not_count_as_connection_failures() -> None:
    require_server("PostgreSQL", 5432)
    db = await open_postgres("postgresql://postgres@127.0.0.1:5432/test")
    for _ in range(db.breaker.minimum_calls * 2):
        with pytest.raises(Exception, match="no_such_table"):
            async with db.transaction() as tx:
                await tx.fetch("SELECT * FROM no_such_table")
    assert db.health().breaker == "closed"
    await db.close()
