"""A small order domain the event-sourcing tests share."""

from __future__ import annotations

from shipyard.eventsourcing import Aggregate, applies
from shipyard.messaging import Event, EventRegistry


class OrderPlaced(Event):
    order_id: str
    customer: str
    total_cents: int
    items: int


class OrderShipped(Event):
    order_id: str
    warehouse: str


class OrderCancelled(Event):
    order_id: str
    reason: str


def shop_registry() -> EventRegistry:
    registry = EventRegistry()
    for event_type in (OrderPlaced, OrderShipped, OrderCancelled):
        registry.register(event_type)
    return registry


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer = ""
        self.total_cents = 0
        self.status = "new"
        self.notes = 0

    def place(self, customer: str, total_cents: int, items: int = 1) -> None:
        if self.status != "new":
            raise ValueError(f"order {self.id} is already {self.status}")
        self._raise(
            OrderPlaced(order_id=self.id, customer=customer, total_cents=total_cents, items=items)
        )

    def ship(self, warehouse: str) -> None:
        if self.status != "placed":
            raise ValueError(f"order {self.id} is {self.status}, not placed")
        self._raise(OrderShipped(order_id=self.id, warehouse=warehouse))

    def cancel(self, reason: str) -> None:
        self._raise(OrderCancelled(order_id=self.id, reason=reason))

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.customer = event.customer
        self.total_cents = event.total_cents
        self.status = "placed"

    @applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.status = "shipped"

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"
