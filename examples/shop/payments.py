"""The payments service: charges and refunds an order's total at the external payment
provider, through a ``ServiceClient`` with a circuit breaker and retries.

Every answer is definitive or says "try again": a charge is ``captured``, ``declined`` or
``failed`` (nothing taken — guaranteed by voiding the key at the provider when the outcome
of an attempt is unknown), or 503 while even that is impossible. So a saga that gives up
on a charge never leaves money taken for a cancelled order. Charges and refunds of one
order run one at a time (a lock per charge id; payments runs as one instance).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from typing import Any

import msgspec
from examples.shop.contracts import PaymentCharged, PaymentFailed, StockReserved
from examples.shop.runtime import ShopRuntime
from examples.shop.settings import ShopSettings
from examples.shop.web import JSON, body, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.client import ClientError, HTTPStatusError
from shipyard.core import ShipyardError
from shipyard.messaging import EventBus, Outbox
from shipyard.resilience import BreakerState
from shipyard.saga import carry
from shipyard.service import Service
from shipyard.storage import Transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS payments (charge_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,"
    " amount_cents BIGINT NOT NULL, state TEXT NOT NULL, sent INTEGER NOT NULL DEFAULT 0,"
    " reason TEXT, updated_at DOUBLE PRECISION NOT NULL)",
)

PROVIDER_POLICY: Mapping[str, Any] = {
    "retry": {"max_attempts": 3, "base_delay": 0.05, "max_delay": 0.5},
    "circuit_breaker": {
        "failure_rate_threshold": 0.5,
        "minimum_calls": 10,
        "window": 10,
        "reset_timeout": 5.0,
    },
    "instance_circuit_breaker": {
        "failure_rate_threshold": 0.5,
        "minimum_calls": 5,
        "reset_timeout": 5.0,
    },
    "timeout": 2.0,
}
"""How payments calls the provider: 3 attempts, a breaker for the provider (opens at 50%
failures over 10 s, probes again after 5 s), 2 s per attempt."""

FINAL = ("captured", "declined", "void", "refunded")


class ChargeRequest(msgspec.Struct):
    """``POST /charges`` body."""

    charge_id: str
    user_id: str
    amount_cents: int


class Outcome(msgspec.Struct):
    """A charge's definitive state (``captured``, ``declined``, ``failed``) and why."""

    charge_id: str
    state: str
    amount_cents: int
    reason: str | None = None


class ProviderUnavailable(ShipyardError, ConnectionError):
    """The provider could neither charge nor void this charge; nothing is decided yet.
    Retry the same charge id later."""


def build(settings: ShopSettings) -> Service:
    """The payments service."""
    runtime = ShopRuntime("payments", settings, schema=SCHEMA)
    locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def provider() -> Any:
        # One provider endpoint: ejecting it as an outlier would leave nothing to call;
        # the breakers already stop the calls while it fails.
        return runtime.client(
            "payment-provider", policy=PROVIDER_POLICY, timeout=6.0, outlier=False
        )

    def lock_for(charge_id: str) -> asyncio.Lock:
        lock = locks.get(charge_id)
        if lock is None:
            lock = locks[charge_id] = asyncio.Lock()
        return lock

    async def set_state(charge_id: str, state: str, reason: str | None = None) -> None:
        async with runtime.db.transaction() as tx:
            await tx.execute(
                "UPDATE payments SET state = ?, reason = ?, updated_at = ? WHERE charge_id = ?",
                state,
                reason,
                time.time(),
                charge_id,
            )

    async def void_at_provider(charge_id: str) -> str:
        answer = await provider().post_json(f"/v1/refunds/{charge_id}", {})
        return str(answer["state"])

    async def charge(wanted: ChargeRequest) -> Outcome:
        async with lock_for(wanted.charge_id):
            async with runtime.db.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT state, sent, amount_cents, reason FROM payments WHERE charge_id = ?",
                    wanted.charge_id,
                )
                if row is None:
                    await tx.execute(
                        "INSERT INTO payments VALUES (?, ?, ?, 'pending', 0, NULL, ?)",
                        wanted.charge_id,
                        wanted.user_id,
                        wanted.amount_cents,
                        time.time(),
                    )
                    sent = False
                elif row[0] in FINAL:
                    state = "captured" if row[0] == "captured" else str(row[0])
                    return _outcome(wanted.charge_id, state, int(row[2]), row[3])
                else:
                    sent = bool(row[1])
                if not sent and _breaker_open(provider()):
                    # Nothing was ever sent for this charge: failing it is definitive.
                    await tx.execute(
                        "UPDATE payments SET state = 'void', reason = ? WHERE charge_id = ?",
                        "payment provider unavailable (circuit open)",
                        wanted.charge_id,
                    )
                    return _outcome(
                        wanted.charge_id, "void", 0, "payment provider unavailable (circuit open)"
                    )
                await tx.execute(
                    "UPDATE payments SET sent = 1 WHERE charge_id = ?", wanted.charge_id
                )
            try:
                await provider().post_json(
                    "/v1/charges",
                    {"amount_cents": wanted.amount_cents, "customer": wanted.user_id},
                    headers={"Idempotency-Key": wanted.charge_id},
                )
            except HTTPStatusError as exc:
                if exc.status == 402:
                    await set_state(wanted.charge_id, "declined", "card declined")
                    return _outcome(wanted.charge_id, "declined", 0, "card declined")
                if exc.status == 409:
                    await set_state(wanted.charge_id, "void", "voided at the provider")
                    return _outcome(wanted.charge_id, "void", 0, "voided at the provider")
                return await give_up(wanted.charge_id, repr(exc))
            except (ClientError, ShipyardError, OSError, TimeoutError) as exc:
                return await give_up(wanted.charge_id, repr(exc))
            await set_state(wanted.charge_id, "captured")
            return _outcome(wanted.charge_id, "captured", wanted.amount_cents)

    async def give_up(charge_id: str, why: str) -> Outcome:
        # The attempt's outcome is unknown (the provider may have charged): void the key,
        # which refunds a capture or refuses it later — then the failure is definitive.
        try:
            state = await void_at_provider(charge_id)
        except (ClientError, ShipyardError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(
                f"charge {charge_id}: provider failed ({why}) and could not be voided "
                f"({exc!r}); retry the same charge id"
            ) from exc
        reason = f"payment provider failed: {why}"[:500]
        await set_state(charge_id, state, reason)
        return _outcome(charge_id, state, 0, reason)

    async def refund(charge_id: str) -> Outcome:
        async with lock_for(charge_id):
            async with runtime.db.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT state, sent FROM payments WHERE charge_id = ?", charge_id
                )
                if row is None:
                    # Refund before any charge: void it here so a late charge is refused.
                    await tx.execute(
                        "INSERT INTO payments VALUES (?, '', 0, 'void', 0, 'refunded first', ?)",
                        charge_id,
                        time.time(),
                    )
                    return Outcome(charge_id, "void", 0, "refunded before any charge")
                state, sent = str(row[0]), bool(row[1])
                if state in ("void", "refunded", "declined"):
                    return Outcome(charge_id, state, 0)
                if state == "pending" and not sent:
                    await tx.execute(
                        "UPDATE payments SET state = 'void' WHERE charge_id = ?", charge_id
                    )
                    return Outcome(charge_id, "void", 0)
            try:
                final = await void_at_provider(charge_id)
            except (ClientError, ShipyardError, OSError, TimeoutError) as exc:
                raise ProviderUnavailable(
                    f"refund {charge_id}: provider unavailable ({exc!r}); retry"
                ) from exc
            await set_state(charge_id, final, "refunded")
            return Outcome(charge_id, final, 0)

    async def charge_endpoint(request: Request) -> JSON:
        try:
            wanted = await body(request, ChargeRequest)
        except ValueError as exc:
            return error(422, str(exc))
        try:
            outcome = await charge(wanted)
        except ProviderUnavailable as exc:
            return error(503, str(exc))
        if outcome.state == "captured":
            return JSON(msgspec.to_builtins(outcome), 201)
        return JSON(msgspec.to_builtins(outcome), 402)

    async def refund_endpoint(request: Request) -> JSON:
        try:
            outcome = await refund(request.path_params["charge_id"])
        except ProviderUnavailable as exc:
            return error(503, str(exc))
        return JSON(msgspec.to_builtins(outcome))

    async def one(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            row = await tx.fetchone(
                "SELECT charge_id, user_id, amount_cents, state, reason FROM payments"
                " WHERE charge_id = ?",
                request.path_params["charge_id"],
            )
        if row is None:
            return error(404, "no such charge")
        keys = ("charge_id", "user_id", "amount_cents", "state", "reason")
        return JSON(dict(zip(keys, row, strict=True)))

    async def summary(request: Request) -> JSON:
        async with runtime.db.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT state, COUNT(*), COALESCE(SUM(amount_cents), 0) FROM payments"
                " GROUP BY state"
            )
        states = {str(r[0]): {"count": int(r[1]), "amount_cents": int(r[2])} for r in rows}
        captured = states.get("captured", {}).get("amount_cents", 0)
        breaker = provider().service_breaker
        return JSON(
            {
                "captured_cents": captured,
                "states": states,
                "provider_breaker": None if breaker is None else breaker.state.value,
            }
        )

    @runtime.consume
    def choreography(bus: EventBus, outbox: Outbox) -> None:
        async def on_stock_reserved(event: StockReserved, tx: Transaction) -> None:
            # ProviderUnavailable propagates: the bus redelivers later (same charge id).
            outcome = await charge(ChargeRequest(event.order_id, event.user_id, event.total_cents))
            produced: PaymentCharged | PaymentFailed
            if outcome.state == "captured":
                produced = PaymentCharged(order_id=event.order_id, amount_cents=event.total_cents)
            else:
                produced = PaymentFailed(
                    order_id=event.order_id, reason=outcome.reason or outcome.state
                )
            await outbox.add(tx, *carry(event, produced))

        bus.subscribe(StockReserved, group="payments", handler=on_stock_reserved)

    app = Starlette(
        routes=[
            Route("/charges", charge_endpoint, methods=["POST"]),
            Route("/charges/{charge_id}", one, methods=["GET"]),
            Route("/charges/{charge_id}/refund", refund_endpoint, methods=["POST"]),
            Route("/payments/summary", summary, methods=["GET"]),
        ],
        lifespan=runtime.lifespan(),
    )

    @runtime.on_open
    async def create_provider_client() -> None:
        provider()  # now, so its breaker is on /metrics before the first charge

    return runtime.service(app)


def _outcome(charge_id: str, state: str, amount: int, reason: str | None = None) -> Outcome:
    failed = state in ("void", "refunded")
    return Outcome(charge_id, "failed" if failed else state, amount, reason)


def _breaker_open(client: Any) -> bool:
    breaker = client.service_breaker
    return breaker is not None and breaker.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
