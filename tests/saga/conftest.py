"""Fixtures for the saga tests: saga log databases (SQLite and PostgreSQL), the shop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.storage import Database, open_database
from tests.conftest import scratch_postgres
from tests.saga.order import install_shop


@pytest.fixture(params=["sqlite", "postgresql"])
async def log_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The saga log's database, once per backend."""
    if request.param == "sqlite":
        db = await open_database(f"sqlite:///{tmp_path / 'saga.db'}")
        yield db
        await db.close()
        return
    async with scratch_postgres() as url:
        db = await open_database(url)
        yield db
        await db.close()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    yield db
    await db.close()


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(f"sqlite:///{tmp_path / 'shop.db'}")
    await install_shop(db)
    yield db
    await db.close()
