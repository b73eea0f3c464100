"""PostgreSQL: concurrent appenders commit out of order, yet a catch-up reader never skips."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shipyard.eventsourcing import EventStore, NewEvent, PostgresEventStore, StoredEvent
from shipyard.storage import open_database
from tests.conftest import scratch_postgres


@pytest.fixture
async def pg_store() -> AsyncIterator[EventStore]:
    async with scratch_postgres() as url:
        db = await open_database(url)
        store = PostgresEventStore(db)
        await store.install()
        try:
            yield store
        finally:
            await db.close()


class CatchUpReader:
    """Follows the global order from a checkpoint, like a projection does."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.checkpoint = 0
        self.seen: list[StoredEvent] = []

    async def poll(self) -> list[str]:
        batch = await self.store.read_all(after_position=self.checkpoint)
        if batch:
            self.checkpoint = batch[-1].position
            self.seen.extend(batch)
        return [e.name for e in batch]

    async def poll_for(self, count: int) -> list[str]:
        """Poll until ``count`` more events arrived (the shared server's other transactions
        can hold the global order back for a moment), then poll once more to prove that
        nothing beyond them is readable."""
        names: list[str] = []
        for _ in range(2000):
            names += await self.poll()
            if len(names) >= count:
                break
            await asyncio.sleep(0.01)
        return names


def one(name: str) -> list[NewEvent]:
    return [NewEvent(f"id-{name}", name, b"{}")]


async def test_lower_position_committing_last_is_read_in_order_without_a_skip(
    pg_store: EventStore,
) -> None:
    reader = CatchUpReader(pg_store)
    async with pg_store.db.transaction() as slow:
        await pg_store.append_in(slow, "order-a", one("slow"), 0)  # takes the lower position
        async with pg_store.db.transaction() as fast:
            await pg_store.append_in(fast, "order-b", one("fast"), 0)
        # "fast" is committed with the higher position while "slow" is still in flight:
        # reading it now would move the checkpoint past "slow" for ever.
        assert await reader.poll() == []
    assert await reader.poll_for(2) == ["slow", "fast"]
    assert reader.seen[0].position < reader.seen[1].position
    assert await reader.poll() == []


async def test_an_older_transaction_with_a_higher_position_does_not_hide_a_younger_one(
    pg_store: EventStore,
) -> None:
    # The trap for "read below the oldest running transaction, ordered by position": the
    # OLDER transaction takes the HIGHER position and commits first; a reader checkpoints
    # that position, and the younger transaction's lower position would be skipped.
    reader = CatchUpReader(pg_store)
    older_block = pg_store.db.transaction()
    older = await older_block.__aenter__()
    await older.fetchone("SELECT pg_current_xact_id()")  # takes its transaction id first
    async with pg_store.db.transaction() as younger:
        await pg_store.append_in(younger, "order-y", one("younger"), 0)  # lower position
        await pg_store.append_in(older, "order-o", one("older"), 0)  # higher position
        await older_block.__aexit__(None, None, None)  # the older one commits first
        assert await reader.poll_for(1) == ["older"]
        assert await reader.poll() == []  # "younger" is committed only below
    assert await reader.poll_for(1) == ["younger"]
    assert reader.seen[0].position > reader.seen[1].position  # position is a cursor, not a rank
    assert await reader.poll() == []


async def test_committed_events_become_readable_once_the_older_writer_ends(
    pg_store: EventStore,
) -> None:
    reader = CatchUpReader(pg_store)
    await pg_store.append("order-1", one("first"), 0)
    async with pg_store.db.transaction() as pending:
        await pending.fetchone("SELECT pg_current_xact_id()")
        await pg_store.append("order-2", one("second"), 0)
        assert await reader.poll_for(1) == ["first"]
        assert await reader.poll() == []  # "second" waits behind the open writer
    assert await reader.poll_for(1) == ["second"]


async def test_concurrent_writers_never_make_a_reader_skip(pg_store: EventStore) -> None:
    reader = CatchUpReader(pg_store)

    async def writer(n: int) -> None:
        for i in range(20):
            await pg_store.append(f"stream-{n}-{i}", one(f"{n}-{i}"), 0)

    writers = asyncio.gather(*(writer(n) for n in range(6)))
    while not writers.done():
        await reader.poll()
        await asyncio.sleep(0)
    await writers
    await reader.poll_for(120 - len(reader.seen))

    names = [e.name for e in reader.seen]
    assert len(names) == len(set(names)) == 120
