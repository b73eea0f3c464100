"""Events are validated at publish, carry their metadata, and old versions are upcast."""

from __future__ import annotations

from typing import ClassVar

import pytest

from shipyard import ShipyardError
from shipyard.messaging import (
    Event,
    EventDecodeError,
    EventRegistry,
    EventValidationError,
    UnknownEventError,
)
from tests.messaging.conftest import OrderCreated, make_registry


class PriceChanged(Event):
    event_version: ClassVar[int] = 3
    sku: str
    cents: int
    currency: str


def test_an_invalid_field_is_rejected_at_publish_naming_the_field() -> None:
    with pytest.raises(EventValidationError) as info:
        make_registry().encode(OrderCreated(order_id="o-1", quantity=-2))
    assert info.value.field == "quantity"
    assert isinstance(info.value, ShipyardError)
    assert isinstance(info.value, ValueError)


def test_a_wrongly_typed_field_is_named_too() -> None:
    with pytest.raises(EventValidationError) as info:
        make_registry().encode(OrderCreated(order_id=42))  # type: ignore[arg-type]
    assert info.value.field == "order_id"
    assert "str" in str(info.value)


def test_an_unregistered_event_type_cannot_be_published() -> None:
    with pytest.raises(UnknownEventError, match="register"):
        EventRegistry().encode(OrderCreated(order_id="o-1"))


def test_an_event_round_trips_with_its_metadata() -> None:
    registry = make_registry()
    original = OrderCreated(
        order_id="o-1",
        quantity=2,
        correlation_id="flow-1",
        ordering_key="o-1",
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    message = registry.encode(original)
    assert (message.name, message.event_id, message.ordering_key) == (
        "OrderCreated",
        original.id,
        "o-1",
    )
    assert registry.decode(message.body) == original


def test_every_event_gets_a_unique_id_and_a_timestamp() -> None:
    first, second = OrderCreated(order_id="a"), OrderCreated(order_id="b")
    assert first.id != second.id
    assert first.occurred_at > 0


def test_a_caused_event_shares_the_correlation_and_names_its_cause() -> None:
    cause = OrderCreated(order_id="o-1", correlation_id="flow-1")
    assert cause.caused() == {"correlation_id": "flow-1", "causation_id": cause.id}


def test_upcasters_turn_old_payloads_into_the_current_version() -> None:
    registry = EventRegistry()
    registry.register(PriceChanged)

    @registry.upcaster("PriceChanged", from_version=1)
    def split_price(payload: dict[str, object]) -> dict[str, object]:
        payload["cents"] = round(float(str(payload.pop("price"))) * 100)
        return payload

    @registry.upcaster("PriceChanged", from_version=2)
    def add_currency(payload: dict[str, object]) -> dict[str, object]:
        return {**payload, "currency": "EUR"}

    old = b'{"name":"PriceChanged","version":1,"data":{"sku":"s-1","price":"2.50","id":"e-1"}}'
    event = registry.decode(old)
    assert isinstance(event, PriceChanged)
    assert (event.sku, event.cents, event.currency, event.id) == ("s-1", 250, "EUR", "e-1")


def test_a_missing_upcaster_is_a_decode_error() -> None:
    registry = EventRegistry()
    registry.register(PriceChanged)
    with pytest.raises(EventDecodeError, match="no upcaster"):
        registry.decode(b'{"name":"PriceChanged","version":2,"data":{"sku":"s"}}')


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"name":"Nope","version":1,"data":{}}',
        b'{"name":"OrderCreated","version":1,"data":{"quantity":1}}',
        b'{"name":"OrderCreated","version":9,"data":{"order_id":"o"}}',
    ],
)
def test_bytes_that_are_not_a_known_valid_event_fail_to_decode(body: bytes) -> None:
    with pytest.raises(EventDecodeError):
        make_registry().decode(body)


def test_two_types_cannot_share_an_event_name() -> None:
    registry = make_registry()

    class Impostor(Event):
        event_name: ClassVar[str] = "OrderCreated"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor)


def test_event_ids_are_time_ordered_uuid7s() -> None:
    import time
    import uuid

    before = time.time_ns() // 1_000_000
    ids = [OrderPlacedForIds().id for _ in range(300)]  # more than one stock of bytes
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert len(set(ids)) == len(ids)
    stamps = [u.int >> 80 for u in parsed]  # the 48-bit millisecond timestamp
    assert stamps == sorted(stamps)
    assert before <= stamps[0] <= stamps[-1] <= after


class OrderPlacedForIds(Event):
    pass
