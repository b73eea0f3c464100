"""Errors raised by aggregates, the event store, repositories and projections."""

from __future__ import annotations

from shipyard.core import ShipyardError


class EventSourcingError(ShipyardError):
    """Root of the errors the event-sourcing package raises."""


class ConcurrencyError(EventSourcingError, RuntimeError):
    """A stream was appended with a stale expected version; nothing was written.

    Another writer appended to ``stream_id`` since the aggregate was loaded. Reload the
    aggregate and run the command again (``Retry(retry_on=ConcurrencyError)`` does that).
    """

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, not the expected {expected}; "
            "nothing was written — reload the aggregate and retry the command"
        )


class UnregisteredEventError(EventSourcingError, LookupError):
    """A stored event has a name that no registered event class carries."""

    def __init__(self, name: str, stream_id: str, position: int) -> None:
        self.name = name
        self.stream_id = stream_id
        self.position = position
        super().__init__(
            f"event {name!r} in stream {stream_id!r} (position {position}) has no registered "
            "class; register it with @registry.register (or an upcaster for its old version)"
        )


class AggregateNotFoundError(EventSourcingError, LookupError):
    """No events (and no snapshot) exist for this aggregate id."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} has no events; create the aggregate first")


class ProjectionNotFoundError(EventSourcingError, LookupError):
    """No projection with this name is registered with the runner."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"no projection named {name!r}; known projections: {sorted(known)}")
