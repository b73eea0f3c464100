"""NATS JetStream transport: one stream per bus, one durable pull consumer per group.

Subjects are ``<stream>.<event name>``. Each message carries the event id as
``Nats-Msg-Id``, so JetStream drops a republish of the same event inside its duplicate
window (a relay that crashed before marking rows sent). A group acknowledges each handled
batch with one ack-all; a message not acked within ``ack_wait`` (or nak'ed when a consumer
closes) is delivered again, and its delivery count is reported as ``Delivery.attempt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from shipyard.core import ConfigError, validation
from shipyard.messaging.errors import TransportError
from shipyard.messaging.events import WireMessage
from shipyard.messaging.transport import Delivery, StartFrom

_KEY_HEADER = "Shipyard-Ordering-Key"
_ID_HEADER = "Nats-Msg-Id"
_TOP_UP_WAIT = 0.002
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class NatsTransport:
    """Events in a JetStream stream: ``nats://127.0.0.1:4222``."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "shipyard",
        ack_wait: float = 30.0,
        publish_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 2.0,
    ) -> None:
        if not _NAME.match(stream):
            raise ConfigError("stream", stream, "must be letters, digits, '_' or '-'")
        self._url = url
        self.stream = stream
        self._ack_wait = validation.positive("ack_wait", ack_wait)
        self._publish_timeout = validation.positive("publish_timeout", publish_timeout)
        self._connect_timeout = validation.positive("connect_timeout", connect_timeout)
        self._reconnect_wait = validation.positive("reconnect_wait", reconnect_wait)
        self._nc: Any = None
        self._js: Any = None

    @property
    def url(self) -> str:
        """The ``nats://`` URL."""
        return self._url

    async def connect(self) -> None:
        """Connect and create the stream if needed (``open_transport`` does this)."""
        try:
            self._nc = await nats.connect(
                self._url,
                connect_timeout=self._connect_timeout,
                # Keep reconnecting forever: the outbox holds events meanwhile.
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                reconnect_time_wait=self._reconnect_wait,
            )
        except (TimeoutError, OSError, NatsError) as error:
            raise TransportError(f"cannot connect to NATS at {self._url}: {error}") from error
        self._js = self._nc.jetstream()
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            await self._js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.stream}.>"]))

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        """Publish ``messages`` pipelined and wait for every JetStream ack."""
        if self._js is None or self._nc.is_closed:
            raise TransportError(f"NATS transport {self._url} is not connected")
        prefix = self.stream + "."
        try:
            acks = []
            for message in messages:
                headers = {_ID_HEADER: message.event_id}
                if message.ordering_key is not None:
                    headers[_KEY_HEADER] = message.ordering_key
                # publish_async writes in order on the one connection, so the stream keeps
                # the publish order while the acks are awaited together.
                acks.append(
                    await self._js.publish_async(
                        prefix + message.name, message.body, headers=headers
                    )
                )
            await asyncio.wait_for(asyncio.gather(*acks), self._publish_timeout)
        except (TimeoutError, NatsError, OSError) as error:
            raise TransportError(
                f"JetStream did not confirm publishing to {self.stream!r} at {self._url}: "
                f"{error!r}; the outbox keeps the events and retries"
            ) from error

    async def subscribe(
        self, group: str, *, start_from: StartFrom = "beginning"
    ) -> NatsSubscription:
        """Bind ``group``'s durable pull consumer, creating it at ``start_from`` if new."""
        if self._js is None:
            raise TransportError(f"NATS transport {self._url} is not connected")
        if not _NAME.match(group):
            raise ConfigError("group", group, "must be letters, digits, '_' or '-' for NATS")
        config = ConsumerConfig(
            durable_name=group,
            # Batches are acknowledged whole and in order, so one "ack all up to here"
            # replaces an ack per message.
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL if start_from == "beginning" else DeliverPolicy.NEW,
            ack_wait=self._ack_wait,
            max_ack_pending=10_000,
        )
        try:
            pull = await self._js.pull_subscribe(
                f"{self.stream}.>", durable=group, stream=self.stream, config=config
            )
        except (TimeoutError, NatsError) as error:
            raise TransportError(f"cannot bind consumer {group!r}: {error!r}") from error
        return NatsSubscription(pull)

    async def delete_stream(self) -> None:
        """Delete the stream and every consumer on it (tests, teardown)."""
        if self._js is not None:
            await self._js.delete_stream(self.stream)

    async def close(self) -> None:
        """Drain and close the connection."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()


class NatsSubscription:
    """A group's durable pull consumer."""

    def __init__(self, pull: Any) -> None:
        self._pull = pull
        # Fetched but unacknowledged messages, nak'ed on close so they come back at once
        # instead of after ack_wait.
        self._pending: dict[int, Any] = {}

    async def fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Pull up to ``max_messages``; ``[]`` when none arrive within ``max_wait``."""
        # nats-py's fetch(n) keeps collecting until n messages or the whole timeout, which
        # would hold a half-full batch back. Wait for ONE message, then take whatever else
        # is already there with a short second pull.
        try:
            msgs = await self._pull.fetch(1, timeout=max_wait)
            if max_messages > 1:
                with contextlib.suppress(NatsTimeoutError, asyncio.TimeoutError):
                    msgs += await self._pull.fetch(max_messages - 1, timeout=_TOP_UP_WAIT)
        except (TimeoutError, NatsTimeoutError):
            return []
        except NatsError as error:
            raise TransportError(f"cannot fetch from JetStream: {error!r}") from error
        deliveries = []
        for msg in msgs:
            headers = msg.headers or {}
            meta = msg.metadata
            name = msg.subject.partition(".")[2]
            event_id = headers.get(_ID_HEADER) or f"nats-{meta.sequence.stream}"
            message = WireMessage(name, event_id, headers.get(_KEY_HEADER), msg.data)
            deliveries.append(Delivery(message, meta.sequence.stream, meta.num_delivered, msg))
            self._pending[meta.sequence.stream] = msg
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge ``deliveries`` with one ack-all on the last one."""
        if not deliveries:
            return
        try:
            await deliveries[-1].handle.ack()
            for delivery in deliveries:
                self._pending.pop(delivery.position, None)
        except NatsError as error:
            raise TransportError(f"cannot ack on JetStream: {error!r}") from error

    async def close(self) -> None:
        """Nak what was not acked and unsubscribe; the durable consumer stays on the server."""
        pending, self._pending = self._pending, {}
        with contextlib.suppress(NatsError):
            for msg in pending.values():
                await msg.nak()
        with contextlib.suppress(NatsError):
            await self._pull.unsubscribe()
