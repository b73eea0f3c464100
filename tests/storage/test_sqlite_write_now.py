"""``SqliteDatabase.write_now``: a lone write committed on the event loop itself, only when
that needs no waiting; otherwise it does nothing and says so, and ``write`` takes over."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import shipyard.storage.sqlite as sqlite_module
from shipyard import ConfigError
from shipyard.storage.sqlite import SqliteDatabase


async def _open(path: Path, **options: object) -> SqliteDatabase:
    database = SqliteDatabase(str(path), **options)  # type: ignore[arg-type]
    await database.connect()
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)")
    return database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = await _open(tmp_path / "service.db")
    yield database
    await database.close()


def insert(name: str, threads: list[str] | None = None) -> object:
    def write(conn: sqlite3.Connection) -> None:
        if threads is not None:
            threads.append(threading.current_thread().name)
        conn.execute("INSERT INTO items (name) VALUES (?)", (name,))

    return write


async def names(db: SqliteDatabase) -> list[str]:
    async with db.transaction(readonly=True) as tx:
        return [row[0] for row in await tx.fetch("SELECT name FROM items ORDER BY id")]


async def test_an_idle_database_commits_the_write_on_the_calling_thread(
    db: SqliteDatabase,
) -> None:
    threads: list[str] = []

    assert db.write_now(insert("a", threads)) is True  # type: ignore[arg-type]

    assert threads == [threading.current_thread().name]
    assert await names(db) == ["a"]  # committed: another connection sees it


async def test_a_failing_write_rolls_back_raises_and_leaves_the_writer_usable(
    db: SqliteDatabase,
) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name) VALUES ('half')")
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        db.write_now(half_then_fail)

    assert await names(db) == []
    assert db.write_now(insert("after")) is True  # type: ignore[arg-type]
    await db.write(insert("via thread"))  # type: ignore[arg-type]
    assert await names(db) == ["after", "via thread"]


async def test_nothing_runs_while_a_transaction_is_open(db: SqliteDatabase) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (name) VALUES ('in tx')")
        assert db.write_now(insert("now")) is False  # type: ignore[arg-type]
    assert await names(db) == ["in tx"]


async def test_nothing_runs_while_the_writer_thread_is_busy(db: SqliteDatabase) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(timeout=30)  # held on the thread until the test lets it go
        conn.execute("INSERT INTO items (name) VALUES ('slow')")

    pending = asyncio.ensure_future(db.write(slow))
    await asyncio.sleep(0)  # the job is queued (or running) on the writer's thread
    assert db.write_now(insert("now")) is False  # type: ignore[arg-type]
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    assert db.write_now(insert("now")) is False  # type: ignore[arg-type]
    release.set()
    await pending
    assert db.write_now(insert("later")) is True  # type: ignore[arg-type]
    assert await names(db) == ["slow", "later"]


async def test_another_process_holding_the_write_lock_means_no_wait_and_no_write(
    tmp_path: Path,
) -> None:
    # A long busy timeout: waiting it out on the loop would block every other task.
    db = await _open(tmp_path / "shared.db", busy_timeout=30.0)
    other = sqlite3.connect(tmp_path / "shared.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        assert db.write_now(insert("now")) is False  # type: ignore[arg-type]
        assert time.monotonic() - began < 15  # did not sit out the 30 s busy timeout
        other.execute("ROLLBACK")
        # The writer still waits for the lock as configured on the thread path.
        async with db.transaction() as tx:
            row = await tx.fetchone("PRAGMA busy_timeout")
        assert row == (30_000,)
        assert db.write_now(insert("now")) is True  # type: ignore[arg-type]
    finally:
        other.close()
        await db.close()


async def test_a_full_pool_means_no_write(tmp_path: Path) -> None:
    db = await _open(tmp_path / "pooled.db", pools={"api": {"size": 1, "max_wait": 1.0}})
    try:
        async with db.transaction(readonly=True):  # holds the pool's only slot
            assert db.write_now(insert("now"), pool="api") is False  # type: ignore[arg-type]
        assert db.write_now(insert("now"), pool="api") is True  # type: ignore[arg-type]
        assert db.pool_metrics()["api"].in_use == 0  # the slot went back
    finally:
        await db.close()


def slow_insert(name: str, seconds: float, timer: list[float]) -> object:
    def write(conn: sqlite3.Connection) -> None:
        timer[0] += seconds  # a slow fsync, as the commit timer sees it
        conn.execute("INSERT INTO items (name) VALUES (?)", (name,))

    return write


async def test_one_slow_commit_keeps_the_loop_path_but_slow_commits_leave_it_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, timer = [1000.0], [0.0]
    monkeypatch.setattr(sqlite_module, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(sqlite_module, "_perf_counter", lambda: timer[0])
    db = await _open(tmp_path / "slow-disk.db", inline_write_budget=0.02)
    try:
        # One commit over the budget is a blip: the next write still runs here.
        assert db.write_now(slow_insert("blip", 0.05, timer)) is True  # type: ignore[arg-type]
        assert db.write_now(insert("fast")) is True  # type: ignore[arg-type]
        # A disk that stays slow: writes go to the thread ...
        done = [db.write_now(slow_insert(f"slow{n}", 0.05, timer)) for n in range(12)]  # type: ignore[arg-type]
        assert False in done
        assert db.write_now(insert("waits")) is False  # type: ignore[arg-type]
        await db.write(insert("via thread"))  # type: ignore[arg-type]
        # ... until a second later one is tried here again: fast now, so it stays.
        clock[0] += 1.5
        assert db.write_now(insert("retried")) is True  # type: ignore[arg-type]
        assert db.write_now(insert("again")) is True  # type: ignore[arg-type]
        assert (await names(db))[-3:] == ["via thread", "retried", "again"]
    finally:
        await db.close()


async def test_a_zero_budget_turns_it_off_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    db = await _open(tmp_path / "off.db", inline_write_budget=0)
    try:
        assert db.write_now(insert("now")) is False  # type: ignore[arg-type]
    finally:
        await db.close()
    with pytest.raises(ConfigError, match="inline_write_budget"):
        SqliteDatabase(str(tmp_path / "bad.db"), inline_write_budget=-1)
