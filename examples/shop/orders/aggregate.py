"""The ``Order`` aggregate: its state is the fold of its events."""

from __future__ import annotations

import enum

from examples.shop.contracts import Line, OrderCancelled, OrderConfirmed, OrderPlaced

from shipyard.core import ShipyardError
from shipyard.eventsourcing import Aggregate, applies


class OrderStatus(enum.StrEnum):
    """Where an order stands: ``PENDING`` until its flow ends CONFIRMED or CANCELLED."""

    NEW = "NEW"
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class OrderStateError(ShipyardError, ValueError):
    """The order cannot make this change from its current status (e.g. cancel a confirmed
    order); the flow that asked is out of step with the order — check its saga or flow."""


class Order(Aggregate):
    """One order. Commands are idempotent: confirming a confirmed order or cancelling a
    cancelled one raises no event, so re-delivered steps change nothing."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = OrderStatus.NEW
        self.user_id = ""
        self.lines: list[Line] = []
        self.total_cents = 0
        self.flow = "orchestrated"
        self.reason: str | None = None

    # -- commands -------------------------------------------------------------------------

    def place(self, user_id: str, lines: list[Line], total_cents: int, flow: str) -> None:
        """Accept the order (once)."""
        if self.status is not OrderStatus.NEW:
            return
        self._raise(
            OrderPlaced(
                order_id=self.id,
                user_id=user_id,
                lines=lines,
                total_cents=total_cents,
                flow=flow,
                correlation_id=self.id,
                ordering_key=self.id,
            )
        )

    def confirm(self) -> None:
        """Make the order final."""
        if self.status is OrderStatus.CONFIRMED:
            return
        if self.status is not OrderStatus.PENDING:
            raise OrderStateError(f"order {self.id} is {self.status}; it cannot be confirmed")
        self._raise(OrderConfirmed(order_id=self.id, correlation_id=self.id, ordering_key=self.id))

    def cancel(self, reason: str) -> None:
        """Cancel the order (its flow undid every earlier step)."""
        if self.status is OrderStatus.CANCELLED:
            return
        if self.status is OrderStatus.CONFIRMED:
            raise OrderStateError(f"order {self.id} is confirmed; it cannot be cancelled")
        self._raise(
            OrderCancelled(
                order_id=self.id, reason=reason, correlation_id=self.id, ordering_key=self.id
            )
        )

    # -- state ----------------------------------------------------------------------------

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.status = OrderStatus.PENDING
        self.user_id = event.user_id
        self.lines = list(event.lines)
        self.total_cents = event.total_cents
        self.flow = event.flow

    @applies(OrderConfirmed)
    def _confirmed(self, event: OrderConfirmed) -> None:
        self.status = OrderStatus.CONFIRMED

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = OrderStatus.CANCELLED
        self.reason = event.reason

    def view(self) -> dict[str, object]:
        """The order as the API shows it."""
        return {
            "order_id": self.id,
            "status": self.status.value,
            "user_id": self.user_id,
            "lines": [
                {
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "unit_cents": line.unit_cents,
                }
                for line in self.lines
            ],
            "total_cents": self.total_cents,
            "flow": self.flow,
            "reason": self.reason,
        }
