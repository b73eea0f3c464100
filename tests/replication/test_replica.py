"""Replication: a local user cache fed by the users service's events and its HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shipyard.core import ManualClock
from shipyard.messaging import Event, EventBus, EventRegistry, MemoryTransport, install_schema
from shipyard.replication import BackfillError, Replica, ReplicaTable, backfill
from shipyard.storage import Database, open_database


class UserCreated(Event):
    user_id: str
    email: str
    name: str
    version: int


class UserUpdated(Event):
    user_id: str
    email: str
    version: int


class UserDeleted(Event):
    user_id: str
    version: int


USERS = ReplicaTable("user_cache", key="id", columns={"email": "TEXT", "name": "TEXT"})


def registry() -> EventRegistry:
    events = EventRegistry()
    for event_type in (UserCreated, UserUpdated, UserDeleted):
        events.register(event_type)
    return events


@pytest.fixture
async def orders_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    await install_schema(db)
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, user_id TEXT, total BIGINT)")
        await tx.execute("INSERT INTO orders VALUES ('o1', 'u1', 500), ('o2', 'u2', 700)")
    yield db
    await db.close()


def user_replica(db: Database, clock: ManualClock) -> Replica:
    replica = Replica(db, USERS, clock=clock)
    replica.upsert_on(
        UserCreated, key="user_id", version="version", values={"email": "email", "name": "name"}
    )
    replica.upsert_on(UserUpdated, key="user_id", version="version", values={"email": "email"})
    replica.delete_on(UserDeleted, key="user_id", version="version")
    return replica


async def deliver(bus: EventBus, transport: MemoryTransport, *events: Event) -> None:
    """Publish as the users service would, then let the orders consumer handle the batch."""
    await bus.publish(*events)
    subscription = await transport.subscribe("orders-user-cache")
    deliveries = await subscription.fetch(100, 0.01)
    await bus.handle_batch("orders-user-cache", deliveries)
    await subscription.ack(deliveries)


async def cache(db: Database) -> list[tuple[Any, ...]]:
    async with db.transaction() as tx:
        return await tx.fetch(
            "SELECT id, email, name, version, deleted FROM user_cache ORDER BY id"
        )


async def test_user_events_fill_the_cache_and_orders_join_it_locally(orders_db: Database) -> None:
    clock = ManualClock()
    replica = user_replica(orders_db, clock)
    await replica.install()
    transport = MemoryTransport()
    bus = EventBus(transport, orders_db, registry(), clock=clock)
    replica.subscribe(bus, group="orders-user-cache")
    await install_schema(orders_db)

    await deliver(
        bus,
        transport,
        UserCreated(user_id="u1", email="ada@x", name="Ada", version=1),
        UserCreated(user_id="u2", email="bob@x", name="Bob", version=1),
        UserUpdated(user_id="u1", email="ada@new", version=2),
    )

    async with orders_db.transaction() as tx:
        joined = await tx.fetch(
            "SELECT o.id, u.email, u.name FROM orders o JOIN user_cache u ON u.id = o.user_id"
            " WHERE u.deleted = 0 ORDER BY o.id"
        )
    assert joined == [("o1", "ada@new", "Ada"), ("o2", "bob@x", "Bob")]
    assert replica.applied == 3


async def test_stale_and_duplicate_updates_are_ignored_by_version(orders_db: Database) -> None:
    replica = user_replica(orders_db, ManualClock())
    await replica.install()
    newer = UserUpdated(user_id="u1", email="v3@x", version=3)

    async with orders_db.transaction() as tx:
        assert await replica.apply(UserCreated(user_id="u1", email="v1@x", name="A", version=1), tx)
        assert await replica.apply(newer, tx)
        assert not await replica.apply(newer, tx)  # duplicate
        assert not await replica.apply(UserUpdated(user_id="u1", email="v2@x", version=2), tx)

    assert await cache(orders_db) == [("u1", "v3@x", "A", 3, 0)]
    assert (replica.applied, replica.ignored) == (2, 2)


async def test_a_delete_leaves_a_tombstone_that_a_late_update_cannot_undo(
    orders_db: Database,
) -> None:
    replica = user_replica(orders_db, ManualClock())
    await replica.install()

    async with orders_db.transaction() as tx:
        await replica.apply(UserCreated(user_id="u1", email="a@x", name="A", version=1), tx)
        await replica.apply(UserDeleted(user_id="u1", version=3), tx)
        await replica.apply(UserUpdated(user_id="u1", email="late@x", version=2), tx)

    assert await cache(orders_db) == [("u1", None, None, 3, 1)]


async def test_lag_reports_the_delay_of_the_latest_change_and_events_not_yet_committed(
    orders_db: Database,
) -> None:
    clock = ManualClock()
    replica = user_replica(orders_db, clock)
    await replica.install()
    event = UserCreated(user_id="u1", email="a@x", name="A", version=1, occurred_at=clock.now())
    clock.advance(2.5)

    async with orders_db.transaction() as tx:
        await replica.apply(event, tx)
        assert replica.lag().events_behind == 1

    lag = replica.lag()
    assert (lag.seconds, lag.events_behind) == (2.5, 0)
    replica.note_source_head(4)
    assert replica.lag().events_behind == 3


def users_api(rows: list[dict[str, Any]], *, fail: bool = False) -> web.Application:
    async def list_users(request: web.Request) -> web.Response:
        if fail:
            return web.json_response({"error": "down"}, status=503)
        after = int(request.query.get("after", "0"))
        limit = int(request.query["limit"])
        page = rows[after : after + limit]
        more = after + limit < len(rows)
        return web.json_response({"items": page, "next": after + limit if more else None})

    app = web.Application()
    app.router.add_get("/users", list_users)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/users"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_backfill_pages_through_the_owner_api_without_overwriting_newer_rows(
    orders_db: Database, serve: Any
) -> None:
    replica = user_replica(orders_db, ManualClock())
    await replica.install()
    async with orders_db.transaction() as tx:  # an event already brought u2's newer email
        await replica.apply(UserUpdated(user_id="u2", email="bob@new", version=5), tx)
    rows = [
        {"id": f"u{i}", "email": f"user{i}@x", "name": f"User {i}", "version": 1}
        for i in range(1, 8)
    ]
    url = await serve(users_api(rows))

    written = await backfill(replica, url, page_size=3)

    assert written == 6
    cached = await cache(orders_db)
    assert len(cached) == 7
    assert cached[1] == ("u2", "bob@new", None, 5, 0)


async def test_a_failing_owner_api_raises_a_clear_backfill_error(
    orders_db: Database, serve: Any
) -> None:
    replica = user_replica(orders_db, ManualClock())
    await replica.install()
    url = await serve(users_api([], fail=True))

    with pytest.raises(BackfillError, match="HTTP 503"):
        await backfill(replica, url)
