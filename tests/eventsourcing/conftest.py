"""Every event-store test runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.core import ManualClock
from shipyard.eventsourcing import EventStore, open_event_store
from shipyard.storage import open_database
from tests.conftest import scratch_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    clock = ManualClock()
    if request.param == "sqlite":
        db = await open_database(f"sqlite:///{tmp_path / 'events.db'}")
        try:
            yield await open_event_store(db, clock=clock)
        finally:
            await db.close()
        return
    async with scratch_postgres() as url:
        db = await open_database(url)
        try:
            yield await open_event_store(db, clock=clock)
        finally:
            await db.close()


async def settle(store: EventStore) -> None:
    """Wait until every committed event is readable in the global order.

    On PostgreSQL the global order only extends below the oldest transaction still in
    flight ANYWHERE on the server (see ``eventsourcing/postgres.py``), and the test server
    is shared, so another test's open transaction can briefly hold reads back. SQLite
    needs no wait.
    """
    if store.db.dialect != "postgresql":
        return
    for _ in range(2000):
        async with store.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT COALESCE(max(tx_id) < pg_snapshot_xmin(pg_current_snapshot()), true)"
                " FROM es_events"
            )
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("events stayed unreadable for 20 s: a transaction is stuck open")
