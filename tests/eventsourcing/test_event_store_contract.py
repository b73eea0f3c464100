"""The EventStore contract: every adapter (SQLite, PostgreSQL) passes these same tests."""

from __future__ import annotations

import asyncio

import pytest

from shipyard.eventsourcing import ConcurrencyError, EventStore, NewEvent, Snapshot, SqlEventStore
from tests.eventsourcing.conftest import settle


def events(*names: str) -> list[NewEvent]:
    return [NewEvent(f"id-{name}", name, f'{{"n":"{name}"}}'.encode()) for name in names]


async def test_appended_events_read_back_in_stream_order(store: EventStore) -> None:
    assert await store.append("order-1", events("a", "b"), expected_version=0) == 2
    assert await store.append("order-1", events("c"), expected_version=2) == 3

    stream = await store.read_stream("order-1")

    assert [(e.version, e.name, e.body) for e in stream] == [
        (1, "a", b'{"n":"a"}'),
        (2, "b", b'{"n":"b"}'),
        (3, "c", b'{"n":"c"}'),
    ]
    assert [e.name for e in await store.read_stream("order-1", from_version=2)] == ["b", "c"]
    assert await store.stream_version("order-1") == 3
    assert await store.stream_version("order-404") == 0


async def test_stale_expected_version_raises_and_writes_nothing(store: EventStore) -> None:
    await store.append("order-1", events("a", "b"), expected_version=0)

    with pytest.raises(ConcurrencyError) as caught:
        await store.append("order-1", events("x", "y"), expected_version=1)

    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == ("order-1", 1, 2)
    assert "order-1" in str(caught.value)
    assert "expected 1" in str(caught.value)
    assert [e.name for e in await store.read_stream("order-1")] == ["a", "b"]
    await settle(store)
    assert [e.name for e in await store.read_all()] == ["a", "b"]
    assert await store.stream_version("order-1") == 2


async def test_creating_an_existing_stream_is_a_conflict(store: EventStore) -> None:
    await store.append("order-1", events("a"), expected_version=0)

    with pytest.raises(ConcurrencyError) as caught:
        await store.append("order-1", events("b"), expected_version=0)

    assert caught.value.actual == 1


async def test_appending_to_a_missing_stream_with_a_version_is_a_conflict(
    store: EventStore,
) -> None:
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("order-9", events("a"), expected_version=3)

    assert caught.value.actual == 0
    assert await store.read_all() == []


async def test_global_reads_follow_commit_order_across_streams_in_pages(store: EventStore) -> None:
    await store.append("order-1", events("a"), expected_version=0)
    await store.append("order-2", events("b", "c"), expected_version=0)
    await store.append("order-1", events("d"), expected_version=1)
    await settle(store)

    first = await store.read_all(after_position=0, limit=3)
    rest = await store.read_all(after_position=first[-1].position, limit=3)

    assert [e.name for e in first] == ["a", "b", "c"]
    assert [(e.stream_id, e.name) for e in rest] == [("order-1", "d")]
    assert await store.read_all(after_position=rest[-1].position) == []
    assert await store.count_after(first[0].position) == 3


async def test_concurrent_appends_to_one_stream_let_exactly_one_win(store: EventStore) -> None:
    await store.append("order-1", events("a"), expected_version=0)

    outcomes = await asyncio.gather(
        *(store.append("order-1", events(f"w{i}"), expected_version=1) for i in range(5)),
        return_exceptions=True,
    )

    assert sum(1 for o in outcomes if o == 2) == 1
    assert sum(1 for o in outcomes if isinstance(o, ConcurrencyError)) == 4
    assert len(await store.read_stream("order-1")) == 2


async def test_concurrent_appends_to_different_streams_all_commit(store: EventStore) -> None:
    versions = await asyncio.gather(
        *(
            store.append(f"order-{i}", events(f"e{i}a", f"e{i}b"), expected_version=0)
            for i in range(40)
        )
    )

    assert versions == [2] * 40
    await settle(store)
    assert len(await store.read_all(limit=1000)) == 80


async def test_snapshots_replace_the_previous_one_and_load_returns_later_events(
    store: EventStore,
) -> None:
    await store.append("order-1", events("a", "b", "c"), expected_version=0)
    async with store.db.transaction() as tx:
        await store.save_snapshot_in(tx, Snapshot("order-1", 1, "Order:1", b"{}"))
        await store.save_snapshot_in(tx, Snapshot("order-1", 2, "Order:1", b'{"x":1}'))

    snapshot, later = await store.load("order-1")

    assert snapshot == Snapshot("order-1", 2, "Order:1", b'{"x":1}')
    assert [e.name for e in later] == ["c"]


async def test_append_listeners_hear_commits_only(store: EventStore) -> None:
    heard: list[str] = []
    unsubscribe = store.on_append(lambda: heard.append("appended"))
    await store.append("order-1", events("a"), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await store.append("order-1", events("b"), expected_version=0)
    unsubscribe()
    await store.append("order-1", events("c"), expected_version=1)

    assert heard == ["appended"]


async def test_appends_arriving_together_share_a_transaction_yet_fail_alone(
    store: SqlEventStore,
) -> None:
    await store.append("order-0", events("a"), expected_version=0)
    before = store.transactions

    outcomes = await asyncio.gather(
        *(store.append(f"order-{i}", events(f"e{i}"), expected_version=0) for i in range(1, 30)),
        store.append("order-0", events("stale"), expected_version=0),
        return_exceptions=True,
    )

    assert outcomes[:-1] == [1] * 29
    assert isinstance(outcomes[-1], ConcurrencyError)
    assert store.transactions - before < 30
    assert [e.name for e in await store.read_stream("order-0")] == ["a"]
    await settle(store)
    assert len(await store.read_all()) == 30


async def test_a_save_cancelled_while_leading_a_batch_leaves_the_others_answered(
    store: EventStore,
) -> None:
    leader = asyncio.create_task(store.append("s1", events("a"), expected_version=0))
    others = [
        asyncio.create_task(store.append(f"s{i}", events(f"e{i}"), expected_version=0))
        for i in (2, 3)
    ]
    await asyncio.sleep(0)  # the first one leads, the other two queue behind it
    leader.cancel()

    outcomes = await asyncio.gather(leader, *others, return_exceptions=True)

    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert outcomes[1:] == [1, 1]
    assert await store.stream_version("s1") == 0
