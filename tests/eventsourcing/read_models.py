"""Three read models fed by the same order stream."""

from __future__ import annotations

from shipyard.eventsourcing import Projection, handles
from shipyard.storage import Transaction
from tests.eventsourcing.shop import OrderCancelled, OrderPlaced, OrderShipped, shop_registry


class CustomerOrderHistory(Projection):
    name = "customer_orders"

    def schema(self, table: str) -> list[str]:
        return [
            f"CREATE TABLE {table} (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL,"
            " total_cents BIGINT NOT NULL, status TEXT NOT NULL)",
            f"CREATE INDEX {table}_customer ON {table} (customer)",
        ]

    @handles(OrderPlaced)
    async def placed(self, event: OrderPlaced, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"INSERT INTO {table} VALUES (?, ?, ?, 'placed')",
            event.order_id,
            event.customer,
            event.total_cents,
        )

    @handles(OrderShipped)
    async def shipped(self, event: OrderShipped, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"UPDATE {table} SET status = 'shipped' WHERE order_id = ?", event.order_id
        )

    @handles(OrderCancelled)
    async def cancelled(self, event: OrderCancelled, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"UPDATE {table} SET status = 'cancelled' WHERE order_id = ?", event.order_id
        )


class WarehouseFulfilment(Projection):
    name = "warehouse_fulfilment"

    def schema(self, table: str) -> list[str]:
        return [f"CREATE TABLE {table} (warehouse TEXT PRIMARY KEY, shipped BIGINT NOT NULL)"]

    @handles(OrderShipped)
    async def shipped(self, event: OrderShipped, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"INSERT INTO {table} VALUES (?, 1)"
            f" ON CONFLICT (warehouse) DO UPDATE SET shipped = {table}.shipped + 1",
            event.warehouse,
        )


class AccountingTotals(Projection):
    name = "accounting_totals"

    def schema(self, table: str) -> list[str]:
        return [
            f"CREATE TABLE {table} (ledger TEXT PRIMARY KEY,"
            " cents BIGINT NOT NULL, orders BIGINT NOT NULL)"
        ]

    @handles(OrderPlaced)
    async def placed(self, event: OrderPlaced, tx: Transaction, table: str) -> None:
        await tx.execute(
            f"INSERT INTO {table} VALUES ('revenue', ?, 1) ON CONFLICT (ledger) DO UPDATE"
            f" SET cents = {table}.cents + excluded.cents, orders = {table}.orders + 1",
            event.total_cents,
        )


# What `shipyard projections rebuild --projections ... --registry ...` loads in the CLI test.
PROJECTIONS = [CustomerOrderHistory(), WarehouseFulfilment(), AccountingTotals()]
REGISTRY = shop_registry()
