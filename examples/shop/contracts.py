"""The events services exchange: the shop's published contracts, one registry for all.

Owners publish them through their outbox; consumers subscribe on the shared bus. Order
events double as the event-sourced history of the ``Order`` aggregate and as the messages
of the choreographed order flow.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shipyard.messaging import Event, EventRegistry

Cents = Annotated[int, msgspec.Meta(ge=0)]
Quantity = Annotated[int, msgspec.Meta(ge=1)]


class Line(msgspec.Struct, frozen=True):
    """One line of an order."""

    product_id: str
    quantity: Quantity
    unit_cents: Cents = 0


# -- users ----------------------------------------------------------------------------


class UserCreated(Event):
    """A customer signed up (owner: users)."""

    user_id: str
    name: str
    email: str
    version: int = 1


class UserUpdated(Event):
    """A customer changed their name or email (owner: users)."""

    user_id: str
    name: str
    email: str
    version: int


# -- orders (also the Order aggregate's history) --------------------------------------


class OrderPlaced(Event):
    """An order was accepted and its placement flow started."""

    order_id: str
    user_id: str
    lines: list[Line]
    total_cents: Cents
    flow: str = "orchestrated"


class OrderConfirmed(Event):
    """Stock is reserved and the payment captured: the order is final."""

    order_id: str


class OrderCancelled(Event):
    """The order could not be completed; every step before was undone."""

    order_id: str
    reason: str


# -- the choreographed flow -------------------------------------------------------------


class StockReserved(Event):
    """Inventory reserved every line of an order (choreography)."""

    order_id: str
    user_id: str
    total_cents: Cents


class StockRejected(Event):
    """Inventory could not reserve an order's lines (choreography)."""

    order_id: str
    reason: str


class PaymentCharged(Event):
    """Payments captured an order's total (choreography)."""

    order_id: str
    amount_cents: Cents


class PaymentFailed(Event):
    """Payments could not capture an order's total; nothing was charged (choreography)."""

    order_id: str
    reason: str


class StockReleased(Event):
    """Inventory released an order's reservation after a failed payment (choreography)."""

    order_id: str
    reason: str


EVENTS: tuple[type[Event], ...] = (
    UserCreated,
    UserUpdated,
    OrderPlaced,
    OrderConfirmed,
    OrderCancelled,
    StockReserved,
    StockRejected,
    PaymentCharged,
    PaymentFailed,
    StockReleased,
)


def shop_registry() -> EventRegistry:
    """A registry that knows every shop event."""
    registry = EventRegistry()
    for event_type in EVENTS:
        registry.register(event_type)
    return registry
