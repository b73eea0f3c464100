"""SQLite transactions: deferred writes, the writer lock handed on at COMMIT, posted reads."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.storage.sqlite import SqliteDatabase, _Worker


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(str(tmp_path / "service.db"))
    await database.connect()
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    yield database
    await database.close()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the jobs sent to worker threads and awaited, in order."""
    sent: list[str] = []
    submit = _Worker.submit

    def counting(self: _Worker, fn: Any, *args: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return submit(self, fn, *args)

    monkeypatch.setattr(_Worker, "submit", counting)
    return sent


async def _names(db: SqliteDatabase) -> list[str]:
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT name FROM items ORDER BY id")
    return [row[0] for row in rows]


async def test_deferred_writes_commit_with_the_transaction_in_one_trip(
    db: SqliteDatabase, trips: list[str]
) -> None:
    async with db.transaction() as tx:
        tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, "a")
        tx.defer_many("INSERT INTO items (id, name) VALUES (?, ?)", [(2, "b"), (3, "c")])
    assert trips == ["_commit"]
    assert await _names(db) == ["a", "b", "c"]


async def test_deferred_writes_run_before_the_next_awaited_statement(db: SqliteDatabase) -> None:
    async with db.transaction() as tx:
        tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, "a")
        seen = await tx.fetch("SELECT name FROM items")
    assert seen == [("a",)]


async def test_a_failing_deferred_write_raises_from_the_block_and_rolls_everything_back(
    db: SqliteDatabase,
) -> None:
    async def insert_duplicate() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, "kept?")
            tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, "duplicate")

    with pytest.raises(sqlite3.IntegrityError):
        await insert_duplicate()
    assert await _names(db) == []


async def test_a_deferred_failure_surfaces_at_the_next_statement_and_commit_still_refuses(
    db: SqliteDatabase,
) -> None:
    async def swallow_the_failure() -> None:
        async with db.transaction() as tx:
            tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, None)  # NOT NULL
            with pytest.raises(sqlite3.IntegrityError):
                await tx.fetch("SELECT 1")
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 2, "b")

    with pytest.raises(sqlite3.IntegrityError):
        await swallow_the_failure()
    assert await _names(db) == []


async def test_the_writer_is_usable_again_after_a_failed_commit(db: SqliteDatabase) -> None:
    async def insert_null() -> None:
        async with db.transaction() as tx:
            tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, None)

    with pytest.raises(sqlite3.IntegrityError):
        await insert_null()
    async with db.transaction() as tx:
        tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, "a")
    assert await _names(db) == ["a"]


async def test_concurrent_read_modify_write_transactions_never_interleave(
    db: SqliteDatabase,
) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES (1, '0')")

    async def increment() -> None:
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT name FROM items WHERE id = 1")
            assert row is not None
            await asyncio.sleep(0)  # give the others every chance to cut in
            tx.defer("UPDATE items SET name = ? WHERE id = 1", str(int(row[0]) + 1))

    await asyncio.gather(*(increment() for _ in range(20)))
    assert await _names(db) == ["20"]


async def test_a_transaction_after_a_commit_sees_it_even_before_the_committer_resumes(
    db: SqliteDatabase,
) -> None:
    async def write(n: int) -> None:
        async with db.transaction() as tx:
            tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", n, str(n))

    async def count() -> int:
        async with db.transaction() as tx:
            row = await tx.fetchone("SELECT count(*) FROM items")
        assert row is not None
        return int(row[0])

    # The second write queues right behind the first's COMMIT; the count behind both.
    _, _, counted = await asyncio.gather(write(1), write(2), count())
    assert counted == 2


async def test_read_only_transactions_do_not_wait_for_their_commit_but_see_later_writes(
    db: SqliteDatabase, trips: list[str]
) -> None:
    async with db.transaction(readonly=True) as tx:
        assert await tx.fetch("SELECT name FROM items") == []
    # The reader opens, then BEGIN + SELECT go in one trip; the COMMIT was only posted.
    assert trips == ["_open", "_then"]
    async with db.transaction() as tx:
        tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, "a")
    async with db.transaction(readonly=True) as tx:
        assert await tx.fetch("SELECT name FROM items") == [("a",)]


async def test_a_block_that_raises_discards_its_deferred_writes(db: SqliteDatabase) -> None:
    async def change_mind() -> None:
        async with db.transaction() as tx:
            tx.defer("INSERT INTO items (id, name) VALUES (?, ?)", 1, "a")
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        await change_mind()
    assert await _names(db) == []


async def test_queued_one_trip_transactions_share_a_commit_and_keep_their_own_errors(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shipyard.storage.sqlite as sqlite_module

    group_sizes: list[int] = []
    commit_group = sqlite_module._commit_group

    def spying(group: list[Any], answers: list[Any]) -> None:
        group_sizes.append(len(group))
        commit_group(group, answers)

    monkeypatch.setattr(sqlite_module, "_commit_group", spying)
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES (7, 'taken')")

    async def insert(item_id: int) -> None:
        async with db.transaction() as tx:
            tx.defer("INSERT INTO items VALUES (?, ?)", item_id, f"item-{item_id}")

    ids = [*range(100, 119), 7]  # 7 collides with the existing row
    results = await asyncio.gather(*(insert(i) for i in ids), return_exceptions=True)

    failures = [(i, r) for i, r in zip(ids, results, strict=True) if r is not None]
    assert [i for i, _ in failures] == [7]
    assert isinstance(failures[0][1], sqlite3.IntegrityError)
    assert max(group_sizes, default=0) > 1, "queued transactions never shared a commit"
    async with db.transaction(readonly=True) as tx:
        rows = await tx.fetch("SELECT id FROM items WHERE id >= 100 ORDER BY id")
    assert [r[0] for r in rows] == list(range(100, 119))
