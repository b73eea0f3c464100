"""Every Database adapter behaves the same: commit, rollback, ``?`` params, after-commit hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard import ConfigError
from shipyard.storage import Database, DatabaseClosedError, open_database
from shipyard.storage.postgres import to_numbered_params
from tests.conftest import scratch_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        async with scratch_postgres() as url:
            database = await _items_database(url)
            yield database
            await database.close()
        return
    database = await _items_database(url)
    yield database
    await database.close()


async def _items_database(url: str) -> Database:
    database = await open_database(url)
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, body BYTEA)")
    return database


async def test_committed_rows_are_visible_to_later_transactions(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name, body) VALUES (?, ?, ?)", 1, "a", b"\x00")
        await tx.executemany("INSERT INTO items (id, name) VALUES (?, ?)", [(2, "b"), (3, "c")])
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT id, name, body FROM items ORDER BY id")
        one = await tx.fetchone("SELECT name FROM items WHERE id = ?", 2)
        missing = await tx.fetchone("SELECT name FROM items WHERE id = ?", 99)
    assert rows == [(1, "a", b"\x00"), (2, "b", None), (3, "c", None)]
    assert one == ("b",)
    assert missing is None


async def test_an_exception_rolls_the_whole_transaction_back(db: Database) -> None:
    async def insert_then_fail() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", 1, "a")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await insert_then_fail()
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT id FROM items") == []


async def test_after_commit_callbacks_run_only_after_a_commit(db: Database) -> None:
    calls: list[str] = []
    async with db.transaction() as tx:
        tx.after_commit(lambda: calls.append("committed"))
        assert calls == []

    async def register_then_fail() -> None:
        async with db.transaction() as tx:
            tx.after_commit(lambda: calls.append("rolled back"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await register_then_fail()
    assert calls == ["committed"]


async def test_a_closed_database_refuses_new_transactions(db: Database) -> None:
    await db.close()
    with pytest.raises(DatabaseClosedError, match="open_database"):
        async with db.transaction():
            pass


async def test_unknown_url_schemes_are_rejected_naming_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        await open_database("mysql://localhost/db")
    assert info.value.field == "url"


async def test_sqlite_options_are_validated_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await open_database(f"sqlite:///{tmp_path / 'x.db'}", synchronous="SOMETIMES")
    assert info.value.field == "synchronous"


async def test_sqlite_uses_wal_so_readers_do_not_block_the_writer(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'wal.db'}")
    async with db.transaction() as tx:
        assert await tx.fetchone("PRAGMA journal_mode") == ("wal",)
    await db.close()


def test_question_marks_become_numbered_params_outside_quotes() -> None:
    sql = "SELECT '?' , x FROM t WHERE a = ? AND b = ?"
    assert to_numbered_params(sql) == "SELECT '?' , x FROM t WHERE a = $1 AND b = $2"
