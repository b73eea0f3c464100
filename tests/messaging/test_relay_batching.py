"""The relay's linger: a burst of commits goes out as one batch, and it can be turned off."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shipyard import ConfigError
from shipyard.messaging import MemoryTransport, Outbox, OutboxRelay, WireMessage
from shipyard.storage import Database
from tests.messaging.conftest import OrderCreated, eventually, make_registry


class RecordingTransport(MemoryTransport):
    """A memory transport that remembers the size of every publish call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        self.batches.append(len(messages))
        await super().publish(messages)


async def commit_one_by_one(db: Database, outbox: Outbox, count: int) -> None:
    for n in range(count):
        async with db.transaction() as tx:
            await outbox.add(tx, OrderCreated(order_id=f"o-{n}"))


async def test_commits_made_while_the_relay_lingers_are_published_together(
    db: Database,
) -> None:
    outbox = Outbox(make_registry())
    transport = RecordingTransport()
    async with OutboxRelay(db, transport, outbox=outbox, poll_interval=3600, linger=1.5) as relay:
        # One event first, so the relay is past its start-up pass and waiting for a commit.
        await commit_one_by_one(db, outbox, 1)
        await eventually(lambda: relay.published == 1)
        await commit_one_by_one(db, outbox, 5)  # the first commit wakes it, then it waits
        await eventually(lambda: relay.published == 6)
    assert transport.batches == [1, 5]


async def test_without_linger_each_commit_is_published_on_its_own(db: Database) -> None:
    outbox = Outbox(make_registry())
    transport = RecordingTransport()
    async with OutboxRelay(db, transport, outbox=outbox, poll_interval=3600, linger=0) as relay:
        await eventually(lambda: outbox._wakers != set())
        for _ in range(3):
            before = relay.published
            await commit_one_by_one(db, outbox, 1)
            await eventually(lambda: relay.published > before)  # noqa: B023 (awaited here)
    assert transport.batches == [1, 1, 1]


def test_a_negative_linger_is_rejected(db: Database) -> None:
    with pytest.raises(ConfigError, match="linger"):
        OutboxRelay(db, MemoryTransport(), linger=-0.001)
