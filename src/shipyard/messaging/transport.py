"""The ``Transport`` port: a durable log of wire messages with consumer groups.

A transport delivers every message to every consumer group at least once, in publish
order per group; a group's position moves only when it acknowledges, so a consumer that
crashes before ``ack`` gets the same messages again. Idempotence (the inbox), retries and
dead letters live above the transport, in :class:`~shipyard.messaging.EventBus`, so every
transport behaves the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from shipyard.core import ConfigError
from shipyard.messaging.events import WireMessage

StartFrom = Literal["beginning", "now"]
"""Where a brand-new consumer group starts: the oldest retained message, or the next one."""


class Delivery:
    """One message handed to a consumer group.

    ``attempt`` counts how often the transport has delivered it (1 = first time; only
    transports that track redeliveries, such as NATS, report more than 1).
    """

    __slots__ = ("attempt", "handle", "message", "position")

    def __init__(
        self, message: WireMessage, position: int, attempt: int = 1, handle: Any = None
    ) -> None:
        self.message = message
        self.position = position
        self.attempt = attempt
        self.handle = handle


class Subscription(Protocol):
    """A consumer group's cursor on the transport."""

    async def fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``max_wait`` seconds for the first."""

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Mark ``deliveries`` as done for this group (they will not be delivered again)."""

    async def close(self) -> None:
        """Stop consuming; unacknowledged deliveries will be delivered again."""


class Transport(Protocol):
    """Where the relay publishes and consumer groups fetch."""

    @property
    def url(self) -> str:
        """The URL the transport was opened with."""

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        """Append ``messages`` durably, in order; raises ``TransportError`` when down."""

    async def subscribe(self, group: str, *, start_from: StartFrom = "beginning") -> Subscription:
        """Open ``group``'s cursor, creating the group at ``start_from`` if it is new."""

    async def close(self) -> None:
        """Release connections and wake waiting fetches."""


async def open_transport(url: str, **options: Any) -> Transport:
    """Open a transport by URL: ``memory://``, ``sqlite:///path/bus.db`` or ``nats://host:port``.

    Keyword options go to the adapter (e.g. ``stream=`` for NATS, ``poll_interval=`` for
    SQLite).
    """
    if url.startswith("memory://"):
        from shipyard.messaging.memory import MemoryTransport

        return MemoryTransport(**options)
    if url.startswith("sqlite://"):
        from shipyard.messaging.sqlite import SqliteTransport

        sqlite = SqliteTransport(url, **options)
        await sqlite.connect()
        return sqlite
    if url.startswith("nats://"):
        from shipyard.messaging.nats import NatsTransport

        nats = NatsTransport(url, **options)
        await nats.connect()
        return nats
    raise ConfigError("url", url, "must start with memory://, sqlite:/// or nats://")
