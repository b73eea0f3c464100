"""The inventory service: stock levels and reservations (runs as several instances).

``reserve`` and ``release`` are idempotent per reservation id (the order id), whatever
instance answers and however often a saga step is re-sent: a reservation is reserved or
rejected once, and a release that arrives before its reservation leaves a tombstone so
the late reservation is refused rather than taking stock for a cancelled order.
"""

from __future__ import annotations

import time

import msgspec
from examples.shop import seed
from examples.shop.contracts import (
    Line,
    OrderPlaced,
    PaymentFailed,
    StockRejected,
    StockReleased,
    StockReserved,
)
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON, body, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.messaging import EventBus, Outbox
from shipyard.saga import carry
from shipyard.service import Service
from shipyard.storage import Transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stock (product_id TEXT PRIMARY KEY,"
    " available BIGINT NOT NULL CHECK (available >= 0))",
    "CREATE TABLE IF NOT EXISTS reservations (reservation_id TEXT PRIMARY KEY,"
    " state TEXT NOT NULL, reason TEXT, updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservation_lines (reservation_id TEXT NOT NULL,"
    " product_id TEXT NOT NULL, quantity BIGINT NOT NULL,"
    " PRIMARY KEY (reservation_id, product_id))",
)


class ReserveRequest(msgspec.Struct):
    """``POST /reservations`` body."""

    reservation_id: str
    lines: list[Line]


class Reservation(msgspec.Struct):
    """A reservation's state: ``reserved``, ``rejected`` or ``released``."""

    reservation_id: str
    state: str
    reason: str | None = None


async def _seed(tx: Transaction) -> None:
    if await tx.fetchone("SELECT 1 FROM stock LIMIT 1") is not None:
        return
    await tx.executemany(
        "INSERT INTO stock VALUES (?, ?)", [(p.id, seed.INITIAL_STOCK) for p in seed.PRODUCTS]
    )


def build(settings: ShopSettings) -> Service:
    """One inventory instance."""
    runtime = ShopRuntime("inventory", settings, schema=SCHEMA, seed=_seed)

    def for_update() -> str:
        # SQLite's BEGIN IMMEDIATE already serialises writers across instances.
        return " FOR UPDATE" if runtime.db.dialect == "postgresql" else ""

    async def reserve(reservation_id: str, lines: list[Line]) -> Reservation:
        merged: dict[str, int] = {}
        for line in lines:
            merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
        async with runtime.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT state, reason FROM reservations WHERE reservation_id = ?" + for_update(),
                reservation_id,
            )
            if row is not None:
                return Reservation(reservation_id, str(row[0]), row[1])
            short = []
            for product_id, quantity in sorted(merged.items()):
                have = await tx.fetchone(
                    "SELECT available FROM stock WHERE product_id = ?" + for_update(), product_id
                )
                if have is None or int(have[0]) < quantity:
                    short.append(product_id)
            now = time.time()
            if short:
                reason = f"out of stock: {', '.join(short)}"
                await tx.execute(
                    "INSERT INTO reservations VALUES (?, 'rejected', ?, ?)",
                    reservation_id,
                    reason,
                    now,
                )
                return Reservation(reservation_id, "rejected", reason)
            for product_id, quantity in sorted(merged.items()):
                await tx.execute(
                    "UPDATE stock SET available = available - ? WHERE product_id = ?",
                    quantity,
                    product_id,
                )
            await tx.executemany(
                "INSERT INTO reservation_lines VALUES (?, ?, ?)",
                [(reservation_id, p, q) for p, q in sorted(merged.items())],
            )
            await tx.execute(
                "INSERT INTO reservations VALUES (?, 'reserved', NULL, ?)", reservation_id, now
            )
        return Reservation(reservation_id, "reserved")

    async def release(reservation_id: str, reason: str) -> Reservation:
        async with runtime.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT state FROM reservations WHERE reservation_id = ?" + for_update(),
                reservation_id,
            )
            now = time.time()
            if row is None:
                await tx.execute(
                    "INSERT INTO reservations VALUES (?, 'released', ?, ?)",
                    reservation_id,
                    f"released before reserved: {reason}",
                    now,
                )
                return Reservation(reservation_id, "released", reason)
            if row[0] != "reserved":
                return Reservation(reservation_id, str(row[0]))
            lines = await tx.fetch(
                "SELECT product_id, quantity FROM reservation_lines WHERE reservation_id = ?",
                reservation_id,
            )
            for product_id, quantity in lines:
                await tx.execute(
                    "UPDATE stock SET available = available + ? WHERE product_id = ?",
                    quantity,
                    product_id,
                )
            await tx.execute(
                "UPDATE reservations SET state = 'released', reason = ?, updated_at = ?"
                " WHERE reservation_id = ?",
                reason,
                now,
                reservation_id,
            )
        return Reservation(reservation_id, "released", reason)

    async def reserve_endpoint(request: Request) -> JSON:
        try:
            wanted = await body(request, ReserveRequest)
        except ValueError as exc:
            return error(422, str(exc))
        result = await reserve(wanted.reservation_id, wanted.lines)
        status = 201 if result.state == "reserved" else 409
        return JSON(msgspec.to_builtins(result), status)

    async def release_endpoint(request: Request) -> JSON:
        result = await release(request.path_params["reservation_id"], "compensation")
        return JSON(msgspec.to_builtins(result))

    async def stock_of(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT product_id, available FROM stock WHERE product_id = ?",
                request.path_params["product_id"],
            )
        if row is None:
            return error(404, "no such product")
        return JSON({"product_id": row[0], "available": row[1], "in_stock": row[1] > 0})

    async def all_stock(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            rows = await tx.fetch("SELECT product_id, available FROM stock ORDER BY product_id")
            reserved = await tx.fetch(
                "SELECT l.product_id, SUM(l.quantity) FROM reservation_lines l"
                " JOIN reservations r ON r.reservation_id = l.reservation_id"
                " WHERE r.state = 'reserved' GROUP BY l.product_id"
            )
        return JSON(
            {
                "available": {str(r[0]): int(r[1]) for r in rows},
                "reserved": {str(r[0]): int(r[1]) for r in reserved},
                "instance": settings.instance,
            }
        )

    async def one_reservation(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT reservation_id, state, reason FROM reservations WHERE reservation_id = ?",
                request.path_params["reservation_id"],
            )
        if row is None:
            return error(404, "no such reservation")
        return JSON({"reservation_id": row[0], "state": row[1], "reason": row[2]})

    @runtime.consume
    def choreography(bus: EventBus, outbox: Outbox) -> None:
        async def on_order_placed(event: OrderPlaced, tx: Transaction) -> None:
            if event.flow != "choreographed":
                return  # the orchestrator drives this order's reservation over HTTP
            result = await reserve(event.order_id, event.lines)
            if result.state == "reserved":
                await outbox.add(
                    tx,
                    *carry(
                        event,
                        StockReserved(
                            order_id=event.order_id,
                            user_id=event.user_id,
                            total_cents=event.total_cents,
                            ordering_key=event.order_id,
                        ),
                    ),
                )
            else:
                await outbox.add(
                    tx,
                    *carry(
                        event,
                        StockRejected(
                            order_id=event.order_id,
                            reason=result.reason or result.state,
                            ordering_key=event.order_id,
                        ),
                    ),
                )

        async def on_payment_failed(event: PaymentFailed, tx: Transaction) -> None:
            await release(event.order_id, event.reason)
            await outbox.add(
                tx,
                *carry(
                    event,
                    StockReleased(
                        order_id=event.order_id, reason=event.reason, ordering_key=event.order_id
                    ),
                ),
            )

        bus.subscribe(OrderPlaced, group="inventory", handler=on_order_placed)
        bus.subscribe(PaymentFailed, group="inventory", handler=on_payment_failed)

    app = Starlette(
        routes=[
            Route("/reservations", reserve_endpoint, methods=["POST"]),
            Route("/reservations/{reservation_id}", one_reservation, methods=["GET"]),
            Route("/reservations/{reservation_id}/release", release_endpoint, methods=["POST"]),
            Route("/stock", all_stock, methods=["GET"]),
            Route("/stock/{product_id}", stock_of, methods=["GET"]),
        ],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)
