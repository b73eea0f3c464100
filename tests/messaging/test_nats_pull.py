"""NATS JetStream specifics: the streaming pull, closing it, reconnecting, refused publishes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from shipyard.messaging import Delivery, TransportError, WireMessage
from shipyard.messaging.nats import NatsSubscription, NatsTransport
from tests.conftest import require_server
from tests.messaging.conftest import eventually
from tests.messaging.test_transport_outage import TcpProxy


def messages(count: int, start: int = 0) -> list[WireMessage]:
    return [WireMessage("OrderCreated", f"id-{n}", None, b"{}") for n in range(start, count)]


async def fetch_at_least(subscription: NatsSubscription, count: int) -> list[Delivery]:
    deliveries: list[Delivery] = []
    for _ in range(20):
        deliveries += await subscription.fetch(3, 2.0)
        if len(deliveries) >= count:
            break
    return deliveries


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.event_id for d in deliveries]


@pytest.fixture
async def transport() -> AsyncIterator[NatsTransport]:
    require_server("NATS", 4222)
    opened = NatsTransport("nats://127.0.0.1:4222", stream=f"test_{uuid.uuid4().hex[:12]}")
    await opened.connect()
    yield opened
    await opened.delete_stream()
    await opened.close()


async def test_messages_published_while_a_batch_is_handled_are_fetched_next(
    transport: NatsTransport,
) -> None:
    subscription = await transport.subscribe("g")
    await transport.publish(messages(3))
    first = await fetch_at_least(subscription, 3)
    await transport.publish(messages(6, start=3))  # "while the handler runs"
    second = await fetch_at_least(subscription, 3)
    assert ids(first + second) == [f"id-{n}" for n in range(6)]
    await subscription.ack(first + second)
    await subscription.close()


async def test_closing_returns_fetched_and_buffered_messages_at_once(
    transport: NatsTransport,
) -> None:
    # Six messages: exactly the first pull request (two fetches of 3), so none is still on
    # its way when we close (nats-server 2.9 may then hold one back until ack_wait).
    await transport.publish(messages(6))
    subscription = await transport.subscribe("g")
    fetched = await fetch_at_least(subscription, 3)
    await subscription.ack(fetched[:2])
    # The rest were fetched or are buffered unacknowledged, and a new pull request is
    # open on the server.
    await subscription.close()

    again = await transport.subscribe("g")
    redelivered = await fetch_at_least(again, 4)
    assert ids(redelivered) == [f"id-{n}" for n in range(2, 6)]
    handed_out = set(ids(fetched[2:]))
    assert all(d.attempt == 2 for d in redelivered if d.message.event_id in handed_out), (
        "a nak'ed message counts as delivered again"
    )
    await again.ack(redelivered)
    await again.close()


async def test_a_consumer_resumes_after_its_connection_to_nats_drops(
    transport: NatsTransport,
) -> None:
    proxy = TcpProxy(4222)
    await proxy.start()
    via_proxy = NatsTransport(
        f"nats://127.0.0.1:{proxy.port}", stream=transport.stream, reconnect_wait=0.05
    )
    await via_proxy.connect()
    try:
        subscription = await via_proxy.subscribe("g")
        assert await subscription.fetch(3, 0.05) == []  # a pull request is now open
        await proxy.stop()  # the server forgets that request with the connection
        await proxy.start()
        # Publish once reconnected: a message sent to the dying connection would only
        # come back after ack_wait (at-least-once), which is not what this test is about.
        await eventually(lambda: via_proxy._nc.stats["reconnects"] == 1)
        await transport.publish(messages(2))
        # Well before the lost request would have expired (5 s): reconnecting renews it.
        deliveries: list[Delivery] = []
        for _ in range(6):
            deliveries += await subscription.fetch(3, 0.5)
        assert ids(deliveries) == ["id-0", "id-1"]
        await subscription.ack(deliveries)
        await subscription.close()
    finally:
        await via_proxy.close()
        await proxy.stop()


async def test_publishing_to_a_deleted_stream_raises_transport_error() -> None:
    require_server("NATS", 4222)
    transport = NatsTransport("nats://127.0.0.1:4222", stream=f"test_{uuid.uuid4().hex[:12]}")
    await transport.connect()
    try:
        await transport.delete_stream()
        with pytest.raises(TransportError, match="outbox keeps the events"):
            await transport.publish(messages(2))
    finally:
        await transport.close()


async def test_a_consumer_that_dies_loses_nothing_to_its_competitors_acks(
    transport: NatsTransport,
) -> None:
    # Two processes share the group; the first dies holding messages it never handled.
    # The second acknowledging its own must not acknowledge those (as an ack-all would).
    dying = NatsTransport(transport.url, stream=transport.stream, ack_wait=1.0)
    await dying.connect()
    surviving = NatsTransport(transport.url, stream=transport.stream, ack_wait=1.0)
    await surviving.connect()
    try:
        await transport.publish(messages(12))
        first = await dying.subscribe("g")
        held = await fetch_at_least(first, 3)  # its pull request took the first six
        second = await surviving.subscribe("g")
        handled: list[Delivery] = []
        for _ in range(30):
            batch = await second.fetch(3, 0.5)
            await second.ack(batch)
            handled += batch
            if set(ids(handled)) >= {f"id-{n}" for n in range(12)}:
                break
            if len(handled) >= 6 and dying._nc is not None:
                await dying._nc.close()  # dies: no nak, no ack for what it held
        assert set(ids(handled)) == {f"id-{n}" for n in range(12)}
        assert set(ids(held)) <= set(ids(handled))  # redelivered after ack_wait
        await second.close()
    finally:
        await dying.close()
        await surviving.close()


async def test_a_consumer_made_with_ack_all_is_refused_with_the_fix(
    transport: NatsTransport,
) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

    await transport._js.add_consumer(
        transport.stream, ConsumerConfig(durable_name="old", ack_policy=AckPolicy.ALL)
    )
    with pytest.raises(TransportError, match=r"ack_policy.*nats consumer rm"):
        await transport.subscribe("old")
