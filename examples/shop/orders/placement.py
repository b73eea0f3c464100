"""How an order is placed: an orchestrated saga, or the same flow as a choreography.

Orchestrated (``place-order`` saga, run by the orders service)::

    create  (compensation: cancel the order)
    reserve (inventory, POST /reservations;        compensation: release)
    charge  (payments,  POST /charges;             compensation: refund)
    confirm (pivot: the order becomes final)

Choreographed: ``OrderPlaced`` → inventory reserves → ``StockReserved`` → payments charges →
``PaymentCharged`` → orders confirms; ``StockRejected`` → orders cancels; ``PaymentFailed`` →
inventory releases → ``StockReleased`` → orders cancels.

Participants answer definitively (409 out of stock, 402 declined) or "unknown" (no answer,
5xx). Only a definitive answer fails a step: an unknown outcome is retried with the same
idempotency key until the participant decides, because the saga compensates the steps
BEFORE the failed one — a step that failed while in fact succeeding would never be undone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from examples.shop.contracts import Line, PaymentCharged, StockRejected, StockReleased
from examples.shop.orders.aggregate import Order

from shipyard.client import HTTPStatusError, ServiceClient
from shipyard.core import ShipyardError
from shipyard.eventsourcing import ConcurrencyError, Repository
from shipyard.messaging import EventBus
from shipyard.resilience import Retry
from shipyard.saga import SagaDefinition, Step, StepContext, StepFailure
from shipyard.storage import Transaction

SAGA = "place-order"
UNTIL_DECIDED = 1_000_000
"""Attempts for a step whose outcome is unknown: in practice, until the participant answers."""


class PlaceOrder(msgspec.Struct):
    """The saga's data."""

    order_id: str
    user_id: str
    lines: list[Line]
    total_cents: int
    flow: str = "orchestrated"


class ParticipantRefused(ShipyardError, RuntimeError):
    """A participant said a final "no" (out of stock, card declined); its text is the
    reason the order is cancelled with. Nothing to retry: the saga compensates."""


def _refusal(error: BaseException) -> bool:
    return (
        isinstance(error, HTTPStatusError)
        and 400 <= error.status < 500
        and error.status not in (408, 429)
    )


def definitive(error: BaseException) -> bool:
    """True for a participant's final "no" (a 4xx other than 408/429)."""
    return isinstance(error, ParticipantRefused) or _refusal(error)


async def _post(client: ServiceClient, path: str, body: Any, headers: dict[str, str]) -> Any:
    """POST to a participant; a refusal becomes :class:`ParticipantRefused` with its reason."""
    try:
        return await client.post_json(path, body, headers=headers)
    except HTTPStatusError as error:
        if not _refusal(error):
            raise
        try:
            answer = error.response.json()
            reason = str(answer.get("reason") or answer.get("error") or answer)
        except (ValueError, AttributeError):
            reason = f"{client.service} answered {error.status}"
        raise ParticipantRefused(reason) from error


def _undecided(error: BaseException) -> bool:
    return not definitive(error)


def until_decided() -> Retry:
    """The retry of a participant step: only unknown outcomes, backing off up to 2 s."""
    return Retry(
        max_attempts=UNTIL_DECIDED,
        base_delay=0.1,
        max_delay=2.0,
        retry_on=_undecided,
        give_up_on=definitive,
    )


class OrderBook:
    """Loads and changes orders, retrying a change that raced another writer."""

    def __init__(self, repository: Repository[Order]) -> None:
        self.repository = repository
        self._retry = Retry(
            max_attempts=20,
            base_delay=0.005,
            max_delay=0.1,
            retry_on=ConcurrencyError,
            give_up_on=None,
        )

    async def get(self, order_id: str) -> Order | None:
        """The order, or ``None``."""
        return await self.repository.get(order_id)

    async def change(self, order_id: str, command: Callable[[Order], None]) -> Order:
        """Load ``order_id`` (new if absent), apply ``command``, save."""

        async def attempt() -> Order:
            order = await self.repository.get(order_id) or Order(order_id)
            command(order)
            await self.repository.save(order)
            return order

        result: Order = await self._retry.call(attempt)
        return result


def _cancel_reason(failure: StepFailure | None) -> str:
    """What the customer sees: a participant's own reason as is, anything else with its
    error type."""
    if failure is None:
        return "the order could not be placed"
    if failure.error_type == ParticipantRefused.__qualname__:
        text = failure.message
    else:
        text = str(failure)
    return text if len(text) <= 300 else text[:297] + "..."


def place_order_saga(
    book: OrderBook,
    inventory: ServiceClient,
    payments: ServiceClient,
) -> SagaDefinition[PlaceOrder]:
    """The orchestrated flow (see the module docs); the cancelled order carries the
    failure the saga compensates for (``ctx.failure``)."""

    def headers(ctx: StepContext[PlaceOrder]) -> dict[str, str]:
        return {"Idempotency-Key": ctx.idempotency_key, "X-Saga-Id": ctx.saga_id}

    async def create(ctx: StepContext[PlaceOrder]) -> None:
        data = ctx.data
        await book.change(
            data.order_id,
            lambda order: order.place(data.user_id, data.lines, data.total_cents, data.flow),
        )

    async def cancel(ctx: StepContext[PlaceOrder]) -> None:
        reason = _cancel_reason(ctx.failure)
        await book.change(ctx.data.order_id, lambda order: order.cancel(reason))

    async def reserve(ctx: StepContext[PlaceOrder]) -> None:
        body = {"reservation_id": ctx.data.order_id, "lines": msgspec.to_builtins(ctx.data.lines)}
        await _post(inventory, "/reservations", body, headers(ctx))

    async def release(ctx: StepContext[PlaceOrder]) -> None:
        await _post(inventory, f"/reservations/{ctx.data.order_id}/release", {}, headers(ctx))

    async def charge(ctx: StepContext[PlaceOrder]) -> None:
        body = {
            "charge_id": ctx.data.order_id,
            "user_id": ctx.data.user_id,
            "amount_cents": ctx.data.total_cents,
        }
        await _post(payments, "/charges", body, headers(ctx))

    async def refund(ctx: StepContext[PlaceOrder]) -> None:
        await _post(payments, f"/charges/{ctx.data.order_id}/refund", {}, headers(ctx))

    async def confirm(ctx: StepContext[PlaceOrder]) -> None:
        await book.change(ctx.data.order_id, Order.confirm)

    return SagaDefinition(
        SAGA,
        [
            Step("create", action=create, compensation=cancel),
            Step("reserve", action=reserve, compensation=release, retry=until_decided()),
            Step("charge", action=charge, compensation=refund, retry=until_decided()),
            Step("confirm", action=confirm, pivot=True),
        ],
        data_type=PlaceOrder,
    )


def choreography(bus: EventBus, book: OrderBook, *, group: str = "orders") -> None:
    """Subscribe the orders side of the choreographed flow: confirm on ``PaymentCharged``,
    cancel on ``StockRejected`` / ``StockReleased``. The orders are saved in the orders
    database (their own transactions); a re-delivered event finds the order already changed
    and changes nothing."""

    async def charged(event: PaymentCharged, tx: Transaction) -> None:
        await book.change(event.order_id, Order.confirm)

    async def rejected(event: StockRejected | StockReleased, tx: Transaction) -> None:
        reason = event.reason

        def cancel(order: Order) -> None:
            order.cancel(reason)

        await book.change(event.order_id, cancel)

    handlers: dict[type[Any], Any] = {
        PaymentCharged: charged,
        StockRejected: rejected,
        StockReleased: rejected,
    }
    for event_type, handler in handlers.items():
        bus.subscribe(event_type, group=group, handler=handler)
