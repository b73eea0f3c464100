"""Ready-made checks against real dependencies (and against closed ports)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shipyard.core import ConfigError, ManualClock
from shipyard.health import (
    CheckFailedError,
    Probes,
    Status,
    disk_space_check,
    event_loop_lag_check,
    http_check,
    nats_check,
    postgres_check,
    redis_check,
    sqlite_check,
)
from tests.conftest import require_server

SECRET = "s3cret-Pa55"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and no one can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def probe_once(check: object, *, budget: float = 2.0) -> Status:
    probes = Probes(budget=budget, cache_ttl=0)
    probes.add_readiness("dependency", check)  # type: ignore[arg-type]
    try:
        return (await probes.readiness()).status
    finally:
        await probes.aclose()


async def probe_once_keeping(check: object, *, budget: float) -> Status:
    """One readiness probe with ``check``, leaving the check (and its client) open."""
    probes = Probes(budget=budget, cache_ttl=0)
    probes.add_readiness("dependency", check)  # type: ignore[arg-type]
    return (await probes.readiness()).status


def assert_clean(error: CheckFailedError, port: int) -> None:
    message = str(error)
    assert SECRET not in message
    assert "127.0.0.1" not in message
    assert str(port) not in message
    assert "unreachable" in message


# -- SQLite ---------------------------------------------------------------------------------


async def test_sqlite_check_passes_on_a_database_file(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    sqlite3.connect(path).close()
    check = sqlite_check(path)
    await check()
    await check()
    await check.aclose()


async def test_sqlite_check_accepts_a_sqlite_url_and_a_connection_factory(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    sqlite3.connect(path).close()
    await sqlite_check(f"sqlite://{path}")()
    await sqlite_check(lambda: sqlite3.connect(path, check_same_thread=False))()


async def test_sqlite_check_fails_on_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(CheckFailedError, match="sqlite"):
        await sqlite_check(path)()
    assert not path.exists()


# -- disk ---------------------------------------------------------------------------------------


async def test_disk_check_passes_with_enough_free_space(tmp_path: Path) -> None:
    detail = await disk_space_check(tmp_path, min_free_bytes=1)()
    assert "free" in detail


async def test_disk_check_fails_below_the_minimum(tmp_path: Path) -> None:
    total = shutil.disk_usage(tmp_path).total
    with pytest.raises(CheckFailedError, match="below"):
        await disk_space_check(tmp_path, min_free_bytes=total + 1)()
    with pytest.raises(CheckFailedError, match="below"):
        await disk_space_check(tmp_path, min_free_ratio=1.0)()


def test_disk_check_needs_a_minimum() -> None:
    with pytest.raises(ConfigError):
        disk_space_check("/")
    with pytest.raises(ConfigError) as caught:
        disk_space_check("/", min_free_ratio=1.5)
    assert caught.value.field == "min_free_ratio"


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[int]]]:
    """A local aiohttp server: /ok answers 200, /broken 500; records client ports."""
    client_ports: list[int] = []

    async def ok(request: web.Request) -> web.Response:
        client_ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        return web.Response(text="ok")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", client_ports
    await runner.cleanup()


async def test_http_check_passes_on_an_expected_status_reusing_one_connection(
    upstream: tuple[str, list[int]],
) -> None:
    base, client_ports = upstream
    check = http_check(f"{base}/ok")
    try:
        assert await check() == "status 200"
        assert await check() == "status 200"
    finally:
        await check.aclose()
    assert len(client_ports) == 2
    assert client_ports[0] == client_ports[1]


async def test_http_check_fails_on_an_unexpected_status(upstream: tuple[str, list[int]]) -> None:
    base, _ = upstream
    check = http_check(f"{base}/broken")
    try:
        with pytest.raises(CheckFailedError, match="500"):
            await check()
    finally:
        await check.aclose()
    allowed = http_check(f"{base}/broken", expect_status={500})
    try:
        await allowed()
    finally:
        await allowed.aclose()


async def test_http_check_uses_a_session_it_is_given(upstream: tuple[str, list[int]]) -> None:
    base, _ = upstream
    async with aiohttp.ClientSession() as session:
        check = http_check(f"{base}/ok", session=session)
        await check()
        await check.aclose()
        assert not session.closed


async def test_http_check_fails_cleanly_on_a_closed_port(closed_port: int) -> None:
    check = http_check(f"http://user:{SECRET}@127.0.0.1:{closed_port}/health")
    try:
        with pytest.raises(CheckFailedError) as caught:
            await check()
    finally:
        await check.aclose()
    assert_clean(caught.value, closed_port)


# -- event-loop lag -------------------------------------------------------------------------------


async def test_lag_check_fails_after_the_loop_was_blocked_and_recovers() -> None:
    clock = ManualClock(auto_advance=False)
    check = event_loop_lag_check(0.2, interval=0.1, clock=clock)
    try:
        await check()  # starts the sampler
        await asyncio.sleep(0)
        clock.advance(0.15)  # woke 50 ms late: within the limit
        await asyncio.sleep(0)
        await check()
        await asyncio.sleep(0)
        clock.advance(0.5)  # woke 400 ms late: the loop was blocked
        await asyncio.sleep(0)
        with pytest.raises(CheckFailedError, match="blocked for 400 ms"):
            await check()
        await check()  # the worst lag is per probe interval
    finally:
        await check.aclose()


async def test_lag_check_passes_on_a_free_loop() -> None:
    check = event_loop_lag_check(1.0, interval=0.001)
    try:
        await check()
        await asyncio.sleep(0.005)
        assert "worst lag" in await check()
    finally:
        await check.aclose()


# -- PostgreSQL -----------------------------------------------------------------------------------

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Wrap ``module.name`` so the test can count how often a check connects."""
    calls: list[int] = []
    original = getattr(module, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


async def test_postgres_check_passes_with_a_dsn_connecting_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_server("PostgreSQL", 5432)
    import asyncpg

    connects = count_calls(monkeypatch, asyncpg, "connect")
    check = postgres_check(POSTGRES)
    try:
        for _ in range(3):
            await check()
    finally:
        await check.aclose()
    assert len(connects) == 1


async def test_postgres_connect_outlives_the_probe_that_timed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_server("PostgreSQL", 5432)
    import asyncpg

    real_connect = asyncpg.connect
    connects: list[int] = []

    async def slow_connect(*args: Any, **kwargs: Any) -> Any:
        connects.append(1)
        await asyncio.sleep(0.03)  # a connect longer than the probe budget
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "connect", slow_connect)
    check = postgres_check(POSTGRES)
    try:
        # Were the connect cancelled with each probe, every probe would start it anew and
        # time out: readiness would never pass.
        statuses = []
        for _ in range(100):
            statuses.append(await probe_once_keeping(check, budget=0.01))
            if statuses[-1] is Status.PASS:
                break
            await asyncio.sleep(0.005)
    finally:
        await check.aclose()
    assert statuses[0] is Status.FAIL
    assert statuses[-1] is Status.PASS
    assert len(connects) < len(statuses)


async def test_postgres_check_reuses_a_pool_it_is_given() -> None:
    require_server("PostgreSQL", 5432)
    import asyncpg

    pool = await asyncpg.create_pool(POSTGRES, min_size=1, max_size=1)
    try:
        await postgres_check(pool)()
        assert await probe_once(postgres_check(pool)) is Status.PASS
        assert not pool._closed
    finally:
        await pool.close()


async def test_postgres_check_fails_cleanly_on_a_closed_port(closed_port: int) -> None:
    check = postgres_check(f"postgresql://postgres:{SECRET}@127.0.0.1:{closed_port}/test")
    with pytest.raises(CheckFailedError) as caught:
        await check()
    assert_clean(caught.value, closed_port)
    assert await probe_once(check) is Status.FAIL


# -- Redis ----------------------------------------------------------------------------------------


async def test_redis_check_passes_with_a_url_creating_one_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_server("Redis", 6379)
    import redis.asyncio

    clients = count_calls(monkeypatch, redis.asyncio, "from_url")
    check = redis_check("redis://127.0.0.1:6379/0")
    try:
        for _ in range(3):
            await check()
    finally:
        await check.aclose()
    assert len(clients) == 1


async def test_redis_check_reuses_a_client_it_is_given() -> None:
    require_server("Redis", 6379)
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    try:
        check = redis_check(client)
        await check()
        await check.aclose()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_check_fails_cleanly_on_a_closed_port(closed_port: int) -> None:
    check = redis_check(f"redis://:{SECRET}@127.0.0.1:{closed_port}/0")
    try:
        with pytest.raises(CheckFailedError) as caught:
            await check()
    finally:
        await check.aclose()
    assert_clean(caught.value, closed_port)


# -- NATS -----------------------------------------------------------------------------------------


async def test_nats_check_passes_with_a_url_connecting_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_server("NATS", 4222)
    import nats

    connects = count_calls(monkeypatch, nats, "connect")
    check = nats_check("nats://127.0.0.1:4222")
    try:
        for _ in range(3):
            await check()
    finally:
        await check.aclose()
    assert len(connects) == 1


async def test_nats_check_reuses_a_connected_client() -> None:
    require_server("NATS", 4222)
    import nats

    client = await nats.connect("nats://127.0.0.1:4222")
    try:
        check = nats_check(client)
        await check()
        await check.aclose()
        assert client.is_connected
    finally:
        await client.close()
    with pytest.raises(CheckFailedError, match="not connected"):
        await check()


async def test_nats_check_fails_cleanly_on_a_closed_port(closed_port: int) -> None:
    check = nats_check(f"nats://user:{SECRET}@127.0.0.1:{closed_port}")
    try:
        with pytest.raises(CheckFailedError) as caught:
            await check()
    finally:
        await check.aclose()
    assert_clean(caught.value, closed_port)


# -- configuration ------------------------------------------------------------------------------


def test_checks_reject_urls_of_the_wrong_kind_without_echoing_them() -> None:
    for factory in (postgres_check, redis_check, nats_check):
        with pytest.raises(ConfigError) as caught:
            factory(f"mysql://root:{SECRET}@db/x")
        assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError):
        http_check("ftp://example")
    with pytest.raises(ConfigError) as caught:
        event_loop_lag_check(0)
    assert caught.value.field == "max_lag"
