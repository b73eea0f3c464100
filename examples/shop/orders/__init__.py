"""The orders service: event-sourced orders, placed by an orchestrated saga or a
choreography, with an order dashboard read model (CQRS) joined to a replicated user cache."""

from examples.shop.orders.aggregate import Order, OrderStatus
from examples.shop.orders.placement import PlaceOrder, place_order_saga
from examples.shop.orders.service import build

__all__ = ["Order", "OrderStatus", "PlaceOrder", "build", "place_order_saga"]
