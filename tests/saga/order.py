"""The example order saga: create_order <-> cancel_order, reserve_inventory <->
release_inventory, charge_payment <-> refund_payment, confirm_order (the pivot).

Participants keep their state in one SQLite "shop" database (tables per service), so it
survives an orchestrator killed with SIGKILL. Every action and compensation is idempotent
on the saga's idempotency key, as participants must be.
"""

from __future__ import annotations

import msgspec

from shipyard.saga import SagaDefinition, Step, StepContext
from shipyard.storage import Database

STOCK = 10
BALANCE = 1_000


class OrderData(msgspec.Struct):
    order_id: str
    sku: str = "widget"
    quantity: int = 2
    customer: str = "ada"
    amount: int = 300
    reservation_id: str | None = None
    charge_id: str | None = None


class OutOfStockError(RuntimeError):
    pass


SHOP_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservations (key TEXT PRIMARY KEY, sku TEXT, quantity INTEGER,"
    " released INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS accounts (customer TEXT PRIMARY KEY, balance INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS charges (key TEXT PRIMARY KEY, customer TEXT, amount INTEGER,"
    " refunded INTEGER NOT NULL DEFAULT 0)",
)


async def install_shop(shop: Database) -> None:
    async with shop.transaction() as tx:
        for statement in SHOP_SCHEMA:
            await tx.execute(statement)
        await tx.execute(
            "INSERT INTO stock (sku, available) VALUES ('widget', ?) ON CONFLICT DO NOTHING", STOCK
        )
        await tx.execute(
            "INSERT INTO accounts (customer, balance) VALUES ('ada', ?) ON CONFLICT DO NOTHING",
            BALANCE,
        )


def order_saga(shop: Database, *, version: int = 1) -> SagaDefinition[OrderData]:
    async def create_order(ctx: StepContext[OrderData]) -> None:
        async with shop.transaction() as tx:
            # PENDING is the semantic lock: readers see an order in flight, not a done deal.
            await tx.execute(
                "INSERT INTO orders (order_id, status) VALUES (?, 'PENDING')"
                " ON CONFLICT DO NOTHING",
                ctx.data.order_id,
            )

    async def cancel_order(ctx: StepContext[OrderData]) -> None:
        async with shop.transaction() as tx:
            await tx.execute(
                "UPDATE orders SET status = 'CANCELLED' WHERE order_id = ?", ctx.data.order_id
            )

    async def reserve_inventory(ctx: StepContext[OrderData]) -> OrderData:
        key = ctx.idempotency_key
        async with shop.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM reservations WHERE key = ?", key) is None:
                row = await tx.fetchone("SELECT available FROM stock WHERE sku = ?", ctx.data.sku)
                if row is None or row[0] < ctx.data.quantity:
                    raise OutOfStockError(ctx.data.sku)
                await tx.execute(
                    "UPDATE stock SET available = available - ? WHERE sku = ?",
                    ctx.data.quantity,
                    ctx.data.sku,
                )
                await tx.execute(
                    "INSERT INTO reservations (key, sku, quantity) VALUES (?, ?, ?)",
                    key,
                    ctx.data.sku,
                    ctx.data.quantity,
                )
        return msgspec.structs.replace(ctx.data, reservation_id=key)

    async def release_inventory(ctx: StepContext[OrderData]) -> None:
        key = f"{ctx.saga_id}:reserve_inventory"
        async with shop.transaction() as tx:
            row = await tx.fetchone(
                "SELECT quantity, released FROM reservations WHERE key = ?", key
            )
            if row is not None and not row[1]:
                await tx.execute(
                    "UPDATE stock SET available = available + ? WHERE sku = ?", row[0], ctx.data.sku
                )
                await tx.execute("UPDATE reservations SET released = 1 WHERE key = ?", key)

    async def charge_payment(ctx: StepContext[OrderData]) -> OrderData:
        key = ctx.idempotency_key
        async with shop.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM charges WHERE key = ?", key) is None:
                await tx.execute(
                    "UPDATE accounts SET balance = balance - ? WHERE customer = ?",
                    ctx.data.amount,
                    ctx.data.customer,
                )
                await tx.execute(
                    "INSERT INTO charges (key, customer, amount) VALUES (?, ?, ?)",
                    key,
                    ctx.data.customer,
                    ctx.data.amount,
                )
        return msgspec.structs.replace(ctx.data, charge_id=key)

    async def refund_payment(ctx: StepContext[OrderData]) -> None:
        key = f"{ctx.saga_id}:charge_payment"
        async with shop.transaction() as tx:
            row = await tx.fetchone("SELECT amount, refunded FROM charges WHERE key = ?", key)
            if row is not None and not row[1]:
                await tx.execute(
                    "UPDATE accounts SET balance = balance + ? WHERE customer = ?",
                    row[0],
                    ctx.data.customer,
                )
                await tx.execute("UPDATE charges SET refunded = 1 WHERE key = ?", key)

    async def confirm_order(ctx: StepContext[OrderData]) -> None:
        async with shop.transaction() as tx:
            await tx.execute(
                "UPDATE orders SET status = 'CONFIRMED' WHERE order_id = ?", ctx.data.order_id
            )

    return SagaDefinition(
        "order",
        [
            Step("create_order", create_order, compensation=cancel_order),
            Step("reserve_inventory", reserve_inventory, compensation=release_inventory),
            Step("charge_payment", charge_payment, compensation=refund_payment),
            Step("confirm_order", confirm_order, pivot=True),
        ],
        data_type=OrderData,
        version=version,
    )


async def shop_state(shop: Database, order_id: str) -> dict[str, object]:
    async with shop.transaction() as tx:
        status = await tx.fetchone("SELECT status FROM orders WHERE order_id = ?", order_id)
        stock = await tx.fetchone("SELECT available FROM stock WHERE sku = 'widget'")
        balance = await tx.fetchone("SELECT balance FROM accounts WHERE customer = 'ada'")
        held = await tx.fetchone(
            "SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE released = 0"
        )
        charged = await tx.fetchone(
            "SELECT COALESCE(SUM(amount), 0) FROM charges WHERE refunded = 0"
        )
    assert stock is not None
    assert balance is not None
    assert held is not None
    assert charged is not None
    return {
        "status": None if status is None else status[0],
        "stock": stock[0],
        "balance": balance[0],
        "held": held[0],
        "charged": charged[0],
    }
