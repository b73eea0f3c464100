"""Schema migrations: versioned SQL files applied once, in order, recorded with checksums."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard import ConfigError
from shipyard.core import ManualClock
from shipyard.storage import (
    MigrationChecksumError,
    MigrationError,
    PooledDatabase,
    load_migrations,
    migrate,
    open_database,
)

CREATE_ORDERS = """-- the orders table; note the ';' inside the default
CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT DEFAULT 'a;b');
CREATE TABLE audit (entry TEXT NOT NULL);
"""
ADD_STATUS = """ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'new';
INSERT INTO audit (entry) VALUES ('status added')
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "0001_create_orders.sql").write_text(CREATE_ORDERS)
    (root / "0002_add_status.sql").write_text(ADD_STATUS)
    (root / "README.md").write_text("not a migration")
    return root


async def applied_rows(db: PooledDatabase) -> list[tuple[object, ...]]:
    async with db.transaction() as tx:
        return await tx.fetch("SELECT version, name FROM schema_migrations ORDER BY version")


async def test_pending_migrations_are_applied_in_order_and_recorded(
    database_url: str, folder: Path
) -> None:
    clock = ManualClock()  # wall time 2023-11-14T22:13:20Z
    db = await open_database(database_url)
    applied = await migrate(db, folder, clock=clock)
    assert [(m.version, m.name) for m in applied] == [(1, "create_orders"), (2, "add_status")]
    assert await applied_rows(db) == [(1, "create_orders"), (2, "add_status")]
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO orders (id) VALUES (1)")
        assert await tx.fetchone("SELECT note, status FROM orders") == ("a;b", "new")
        checksum, applied_at = await tx.fetchone(
            "SELECT checksum, applied_at FROM schema_migrations WHERE version = 2"
        ) or ("", "")
    assert checksum == load_migrations(folder)[1].checksum
    assert applied_at.startswith("2023-11-14T22:13:20")
    await db.close()


async def test_applied_migrations_are_skipped_and_new_ones_run(
    database_url: str, folder: Path
) -> None:
    db = await open_database(database_url, migrations=folder)
    assert await migrate(db, folder) == []
    (folder / "0003_index_status.sql").write_text("CREATE INDEX orders_status ON orders (status)")
    assert [m.version for m in await migrate(db, folder)] == [3]
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT entry FROM audit") == [("status added",)]
    await db.close()


async def test_an_edited_applied_migration_is_an_error_naming_the_file(
    database_url: str, folder: Path
) -> None:
    db = await open_database(database_url, migrations=folder)
    (folder / "0001_create_orders.sql").write_text(CREATE_ORDERS + "-- edited\n")
    with pytest.raises(MigrationChecksumError, match=r"0001_create_orders.sql.*changed"):
        await migrate(db, folder)
    await db.close()


async def test_a_failing_migration_is_rolled_back_and_stops_the_run(
    database_url: str, folder: Path
) -> None:
    (folder / "0003_broken.sql").write_text(
        "CREATE TABLE half_done (id INTEGER);\nSELECT * FROM no_such_table;"
    )
    (folder / "0004_never.sql").write_text("CREATE TABLE never (id INTEGER);")
    db = await open_database(database_url)
    with pytest.raises(MigrationError, match=r"0003_broken.sql.*rolled back") as info:
        await migrate(db, folder)
    assert info.value.__cause__ is not None
    assert [row[0] for row in await applied_rows(db)] == [1, 2]
    async with db.transaction() as tx:
        tables = await tx.fetch(
            "SELECT name FROM sqlite_master WHERE name IN ('half_done', 'never')"
            if db.dialect == "sqlite"
            else "SELECT tablename FROM pg_tables WHERE tablename IN ('half_done', 'never')"
        )
    assert tables == []
    await db.close()


async def test_a_failing_start_up_migration_closes_the_database(
    tmp_path: Path, folder: Path
) -> None:
    (folder / "0003_broken.sql").write_text("SELECT * FROM no_such_table;")
    with pytest.raises(MigrationError, match=r"0003_broken.sql"):
        await open_database(f"sqlite:///{tmp_path / 'x.db'}", migrations=folder)


async def test_concurrent_start_ups_apply_each_migration_exactly_once(
    database_url: str, folder: Path
) -> None:
    # Each migration would fail if run twice (CREATE TABLE without IF NOT EXISTS).
    for version in range(3, 13):
        (folder / f"{version:04d}_table_{version}.sql").write_text(
            f"CREATE TABLE t{version} (id INTEGER);\n"
            f"INSERT INTO audit (entry) VALUES ('{version}');"
        )
    instances = [await open_database(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(db, folder) for db in instances))
        versions = sorted(m.version for applied in results for m in applied)
        assert versions == list(range(1, 13))
        async with instances[0].transaction() as tx:
            assert await tx.fetchone("SELECT count(*) FROM audit") == (11,)
    finally:
        for db in instances:
            await db.close()


async def test_sqlite_scripts_may_hold_triggers_and_trailing_comments(tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "0001_counted.sql").write_text(
        "CREATE TABLE items (id INTEGER);\n"
        "CREATE TABLE counts (n INTEGER);\n"
        "INSERT INTO counts VALUES (0);\n"
        "CREATE TRIGGER count_items AFTER INSERT ON items BEGIN\n"
        "  UPDATE counts SET n = n + 1;\n"
        "END;\n"
        "/* trailing; comment */ -- and another\n"
    )
    db = await open_database(f"sqlite:///{tmp_path / 'x.db'}", migrations=root)
    async with db.transaction() as tx:
        await tx.executemany("INSERT INTO items VALUES (?)", [(1,), (2,)])
        assert await tx.fetchone("SELECT n FROM counts") == (2,)
    await db.close()


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (["0001_a.sql", "1_b.sql"], "same version 1 as 0001_a.sql"),
        (["create orders.sql"], "must look like 0001_create_orders.sql"),
    ],
)
def test_a_malformed_migration_folder_is_an_error_naming_the_file(
    tmp_path: Path, files: list[str], problem: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=problem):
        load_migrations(tmp_path)
    with pytest.raises(MigrationError, match="not a folder"):
        load_migrations(tmp_path / "missing")


async def test_the_bookkeeping_table_name_must_be_a_plain_identifier(
    tmp_path: Path, folder: Path
) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigError) as info:
        await migrate(db, folder, table="x; DROP TABLE y")
    assert info.value.field == "table"
    await db.close()
