"""Fixtures for the saga tests: saga log databases (SQLite and PostgreSQL), the shop."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shipyard.storage import Database, open_database
from tests.conftest import require_server
from tests.saga.order import install_shop

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str]:
    """A throw-away PostgreSQL database (unique per run), dropped afterwards."""
    require_server("PostgreSQL", 5432)
    name = f"shipyard_saga_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


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
