"""The order dashboard (CQRS read side): a projection of the order events, joined with
the local user cache that replicates the users service's events.

Orders may not read the users database (database per service), so it keeps ``user_cache``
fed by ``UserCreated`` / ``UserUpdated``. The cache is written in the bus consumer's
transaction, in the inbox database; the projection lives beside the event store. The query
handler reads the dashboard rows, then the cache rows of their users, and joins them.
"""

from __future__ import annotations

from typing import Any

from examples.shop.contracts import (
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    UserCreated,
    UserUpdated,
)

from shipyard.cqrs import Query
from shipyard.eventsourcing import Projection, handles
from shipyard.replication import Replica, ReplicaTable
from shipyard.storage import Database, Transaction

USER_CACHE = ReplicaTable("user_cache", key="id", columns={"name": "TEXT", "email": "TEXT"})


def user_replica(db: Database) -> Replica:
    """The user cache, fed by the users service's events."""
    replica = Replica(db, USER_CACHE)
    for event_type in (UserCreated, UserUpdated):
        replica.upsert_on(
            event_type, key="user_id", version="version", values={"name": "name", "email": "email"}
        )
    return replica


class OrderDashboard(Projection):
    """One row per order: status, user, total, number of items."""

    name = "order_dashboard"

    def schema(self, table: str) -> list[str]:
        return [
            f"CREATE TABLE {table} (order_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,"
            " status TEXT NOT NULL, total_cents BIGINT NOT NULL, items INTEGER NOT NULL,"
            " flow TEXT NOT NULL, reason TEXT, placed_at DOUBLE PRECISION NOT NULL,"
            " updated_at DOUBLE PRECISION NOT NULL)",
            f"CREATE INDEX {table}_status ON {table} (status, updated_at)",
        ]

    @handles(OrderPlaced)
    async def placed(self, event: OrderPlaced, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"INSERT INTO {table} VALUES (?, ?, 'PENDING', ?, ?, ?, NULL, ?, ?)"
            " ON CONFLICT (order_id) DO NOTHING",
            event.order_id,
            event.user_id,
            event.total_cents,
            sum(line.quantity for line in event.lines),
            event.flow,
            event.occurred_at,
            event.occurred_at,
        )

    @handles(OrderConfirmed)
    async def confirmed(self, event: OrderConfirmed, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"UPDATE {table} SET status = 'CONFIRMED', updated_at = ? WHERE order_id = ?",
            event.occurred_at,
            event.order_id,
        )

    @handles(OrderCancelled)
    async def cancelled(self, event: OrderCancelled, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"UPDATE {table} SET status = 'CANCELLED', reason = ?, updated_at = ?"
            " WHERE order_id = ?",
            event.reason,
            event.occurred_at,
            event.order_id,
        )


class DashboardQuery(Query):
    """The newest orders, optionally of one status."""

    status: str | None = None
    limit: int = 50


_COLUMNS = ("order_id", "user_id", "status", "total_cents", "items", "flow", "reason", "updated_at")


async def dashboard_rows(query: DashboardQuery, tx: Transaction) -> list[dict[str, Any]]:
    """The query handler's first half: dashboard rows from the projection's view."""
    limit = max(1, min(query.limit, 500))
    select = f"SELECT {', '.join(_COLUMNS)} FROM order_dashboard"
    if query.status:
        rows = await tx.fetch(
            f"{select} WHERE status = ? ORDER BY updated_at DESC LIMIT ?", query.status, limit
        )
    else:
        rows = await tx.fetch(f"{select} ORDER BY updated_at DESC LIMIT ?", limit)
    return [dict(zip(_COLUMNS, row, strict=True)) for row in rows]


async def join_users(rows: list[dict[str, Any]], cache: Database | None) -> list[dict[str, Any]]:
    """The second half: each row's user from the local cache (``None`` when not replicated
    yet)."""
    ids = sorted({row["user_id"] for row in rows})
    users: dict[str, dict[str, Any]] = {}
    if ids and cache is not None:
        marks = ",".join("?" * len(ids))
        async with cache.transaction(readonly=True) as tx:
            found = await tx.fetch(
                f"SELECT id, name, email FROM {USER_CACHE.name}"
                f" WHERE deleted = 0 AND id IN ({marks})",
                *ids,
            )
        users = {str(r[0]): {"name": r[1], "email": r[2]} for r in found}
    return [{**row, "user": users.get(row["user_id"])} for row in rows]
