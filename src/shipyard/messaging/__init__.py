"""Durable events: transactional outbox, idempotent consumers (inbox), dead letters.

Publish inside the business transaction with ``await outbox.add(tx, event)``; an
``OutboxRelay`` moves the events to a transport (``memory://``, ``sqlite:///bus.db`` or
``nats://...``); an ``EventBus`` delivers them to consumer groups whose handlers run in the
consumer's own transaction, deduplicated by event id.
"""

from shipyard.messaging.bus import GROUP_NAME_RULE, EventBus, Handler, check_group_name
from shipyard.messaging.deadletters import DeadLetter, DeadLetterStore
from shipyard.messaging.errors import (
    DeadLetterNotFoundError,
    EventDecodeError,
    EventValidationError,
    MessagingError,
    TransportError,
    UnknownEventError,
)
from shipyard.messaging.events import Event, EventRegistry, WireMessage
from shipyard.messaging.memory import MemoryTransport
from shipyard.messaging.outbox import Outbox, OutboxRelay
from shipyard.messaging.schema import install_schema
from shipyard.messaging.sqlite import SqliteTransport
from shipyard.messaging.transport import (
    Delivery,
    StartFrom,
    Subscription,
    Transport,
    open_transport,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shipyard.messaging.nats import NatsTransport


def __getattr__(name: str) -> object:
    # nats-py is an optional extra: import the JetStream transport only when asked for.
    if name == "NatsTransport":
        from shipyard.messaging.nats import NatsTransport

        return NatsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # events
    "Event",
    "EventRegistry",
    # publishing
    "Outbox",
    "OutboxRelay",
    # consuming
    "EventBus",
    "Handler",
    "check_group_name",
    "GROUP_NAME_RULE",
    "DeadLetter",
    "DeadLetterStore",
    "install_schema",
    # transports
    "Transport",
    "Subscription",
    "Delivery",
    "WireMessage",
    "StartFrom",
    "open_transport",
    "MemoryTransport",
    "SqliteTransport",
    "NatsTransport",
    # errors
    "MessagingError",
    "EventValidationError",
    "UnknownEventError",
    "EventDecodeError",
    "TransportError",
    "DeadLetterNotFoundError",
]
