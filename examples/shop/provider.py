"""A simulated external payment provider (think of a card processor's API).

``POST /v1/charges`` with an ``Idempotency-Key`` captures money once per key, however
often it is sent; ``POST /v1/refunds/{key}`` gives it back — and, for a key never
charged, voids it so that a charge arriving late is refused. Customers whose id starts with
``declined`` are declined (402). ``GET /v1/ledger`` is the provider's view of the money,
which the invariant tests compare with the shop's. Fault injection (latency, errors) comes
from the service's chaos admin endpoint.
"""

from __future__ import annotations

import time

import msgspec
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON, body, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.service import Service

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS provider_charges (key TEXT PRIMARY KEY,"
    " customer TEXT NOT NULL, amount_cents BIGINT NOT NULL, state TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL)",
)


class ChargeRequest(msgspec.Struct):
    """``POST /v1/charges`` body."""

    amount_cents: int
    customer: str


def build(settings: ShopSettings) -> Service:
    """The payment provider."""
    runtime = ShopRuntime("payment-provider", settings, schema=SCHEMA)

    async def charge(request: Request) -> JSON:
        key = request.headers.get("idempotency-key")
        if not key:
            return error(400, "an Idempotency-Key header is required")
        try:
            wanted = await body(request, ChargeRequest)
        except ValueError as exc:
            return error(422, str(exc))
        async with runtime.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT amount_cents, state FROM provider_charges WHERE key = ?", key
            )
            if row is None:
                state = "declined" if wanted.customer.startswith("declined") else "captured"
                await tx.execute(
                    "INSERT INTO provider_charges VALUES (?, ?, ?, ?, ?)",
                    key,
                    wanted.customer,
                    wanted.amount_cents if state == "captured" else 0,
                    state,
                    time.time(),
                )
                amount = wanted.amount_cents
            else:
                amount, state = int(row[0]), str(row[1])
        if state == "declined":
            return error(402, "card declined", code="card_declined")
        if state in ("void", "refunded"):
            return error(409, f"charge {key} was {state}", code=state)
        return JSON(
            {"id": key, "amount_cents": amount, "state": state}, 201 if row is None else 200
        )

    async def refund(request: Request) -> JSON:
        key = request.path_params["key"]
        async with runtime.db.transaction() as tx:
            row = await tx.fetchone("SELECT state FROM provider_charges WHERE key = ?", key)
            if row is None:
                # Never charged: void the key, so a charge request still on its way is
                # refused instead of taking money for a cancelled order.
                await tx.execute(
                    "INSERT INTO provider_charges VALUES (?, '', 0, 'void', ?)", key, time.time()
                )
                state = "void"
            elif row[0] == "captured":
                await tx.execute(
                    "UPDATE provider_charges SET state = 'refunded' WHERE key = ?", key
                )
                state = "refunded"
            else:
                state = str(row[0])
        return JSON({"id": key, "state": state})

    async def ledger(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT key, customer, amount_cents, state FROM provider_charges ORDER BY key"
            )
        charges = [
            {"key": r[0], "customer": r[1], "amount_cents": r[2], "state": r[3]} for r in rows
        ]
        captured = sum(int(r[2]) for r in rows if r[3] == "captured")
        refunded = sum(int(r[2]) for r in rows if r[3] == "refunded")
        return JSON({"captured_cents": captured, "refunded_cents": refunded, "charges": charges})

    app = Starlette(
        routes=[
            Route("/v1/charges", charge, methods=["POST"]),
            Route("/v1/refunds/{key}", refund, methods=["POST"]),
            Route("/v1/ledger", ledger, methods=["GET"]),
        ],
        lifespan=runtime.lifespan(),
    )
    return runtime.service(app)
