"""Errors raised by the event bus, outbox and transports."""

from __future__ import annotations

from shipyard.core import ShipyardError


class MessagingError(ShipyardError):
    """Root of the errors the messaging package raises."""


class EventValidationError(MessagingError, ValueError):
    """An event does not match its declared type; ``field`` names the offending field."""

    def __init__(self, event_name: str, field: str, problem: str) -> None:
        self.event_name = event_name
        self.field = field
        self.problem = problem
        super().__init__(
            f"event {event_name!r} is invalid at field {field!r}: {problem}; "
            "fix the value before publishing"
        )


class UnknownEventError(MessagingError, LookupError):
    """No event type is registered under this name (and version)."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        what = name if version is None else f"{name} v{version}"
        super().__init__(
            f"no event type is registered for {what}; register it with "
            "@registry.register (or add an upcaster for older versions)"
        )


class EventDecodeError(MessagingError, ValueError):
    """Bytes from the wire could not be turned into an event (they go to the dead letters)."""


class TransportError(MessagingError, ConnectionError):
    """The transport could not publish or fetch; the outbox keeps events until it recovers."""


class DeadLetterNotFoundError(MessagingError, LookupError):
    """No dead letter has this id; list them with ``shipyard events dlq list``."""

    def __init__(self, letter_id: int) -> None:
        self.letter_id = letter_id
        super().__init__(
            f"no dead letter with id {letter_id}; list them with `shipyard events dlq list`"
        )
