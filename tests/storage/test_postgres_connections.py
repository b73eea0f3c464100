"""PostgreSQL's own connection handling: the session reset that travels with COMMIT or
ROLLBACK, one-statement transactions, and a cancelled transaction leaving nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shipyard.storage import open_database
from shipyard.storage.postgres import PostgresDatabase
from tests.conftest import scratch_postgres


@pytest.fixture
async def db() -> AsyncIterator[PostgresDatabase]:
    async with scratch_postgres() as url:
        # One connection: every transaction below reuses the same session.
        opened = await open_database(url, pools={"api": {"size": 1}})
        assert isinstance(opened, PostgresDatabase)
        try:
            async with opened.transaction() as tx:
                await tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            yield opened
        finally:
            await opened.close()


async def test_session_state_does_not_leak_into_the_next_transaction(db: PostgresDatabase) -> None:
    async with db.transaction() as tx:
        await tx.execute("SET application_name = 'leaky'")
        await tx.fetch("SELECT pg_advisory_lock(42)")

    async def set_then_fail() -> None:
        async with db.transaction() as tx:
            await tx.execute("SET statement_timeout = '1ms'")
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await set_then_fail()
    async with db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT current_setting('application_name'), current_setting('statement_timeout'),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "  AND pid = pg_backend_pid())"
        )
    assert row == ("", "0", 0)


async def test_statement_commits_one_statement_and_returns_its_rows(db: PostgresDatabase) -> None:
    rows = await db.statement(
        "INSERT INTO t (id, v) VALUES (?, ?), (?, ?) RETURNING id", 1, "a", 2, "b"
    )
    assert sorted(rows) == [(1,), (2,)]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.statement("INSERT INTO t (id, v) VALUES (?, ?), (?, ?)", 3, "c", 1, "dup")
    # All or nothing: the failed statement left no row 3, and the connection still works.
    assert await db.statement("SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "b")]


async def test_a_cancelled_transaction_writes_nothing_and_the_pool_goes_on(
    db: PostgresDatabase,
) -> None:
    started = asyncio.Event()

    async def slow_insert() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (id, v) VALUES (?, ?)", 9, "never")
            started.set()
            await tx.fetch("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow_insert())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT id FROM t") == []
        await tx.execute("INSERT INTO t (id, v) VALUES (?, ?)", 1, "after")
    assert await db.statement("SELECT v FROM t") == [("after",)]
