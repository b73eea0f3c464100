"""The payment saga's data and commands, shared by the command-step and reply-timeout tests."""

from __future__ import annotations

import msgspec

from shipyard.messaging import Event, EventRegistry
from shipyard.saga import StepReply


class Payment(msgspec.Struct):
    order_id: str
    amount: int
    charge_id: str | None = None


class ChargeCard(Event):
    order_id: str
    amount: int


class RefundCard(Event):
    order_id: str


def registry() -> EventRegistry:
    """The commands the payment saga sends, and the replies it reads."""
    events = EventRegistry()
    for event_type in (ChargeCard, RefundCard, StepReply):
        events.register(event_type)
    return events
