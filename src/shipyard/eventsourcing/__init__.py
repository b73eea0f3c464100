"""Event sourcing: aggregates, an event store with optimistic concurrency, projections.

Aggregates derive their state from events (``@applies``) and raise new ones from command
methods; a :class:`Repository` loads them (from a snapshot plus later events) and saves
their new events with the expected version — a conflict raises :class:`ConcurrencyError`
and writes nothing. Events are stored in the service's own database (SQLite or
PostgreSQL, ``await open_event_store(db)``) and can reach the bus through the messaging
outbox in the same transaction. :class:`ProjectionRunner` keeps read models up to date
from the global order, with the checkpoint in the same transaction as each update.
"""

from shipyard.eventsourcing.aggregate import Aggregate, applies
from shipyard.eventsourcing.errors import (
    AggregateNotFoundError,
    ConcurrencyError,
    EventSourcingError,
    ProjectionNotFoundError,
    UnregisteredEventError,
)
from shipyard.eventsourcing.postgres import PostgresEventStore
from shipyard.eventsourcing.projection import (
    Projection,
    ProjectionRunner,
    ProjectionStatus,
    handles,
)
from shipyard.eventsourcing.repository import Repository, decode_stored
from shipyard.eventsourcing.sqlite import SqliteEventStore
from shipyard.eventsourcing.store import (
    Commit,
    EventStore,
    NewEvent,
    Snapshot,
    SqlEventStore,
    StoredEvent,
    open_event_store,
)

__all__ = [
    # aggregates
    "Aggregate",
    "applies",
    "Repository",
    # the event store port and its adapters
    "EventStore",
    "open_event_store",
    "SqlEventStore",
    "SqliteEventStore",
    "PostgresEventStore",
    "NewEvent",
    "StoredEvent",
    "Snapshot",
    "Commit",
    "decode_stored",
    # projections
    "Projection",
    "handles",
    "ProjectionRunner",
    "ProjectionStatus",
    # errors
    "EventSourcingError",
    "ConcurrencyError",
    "UnregisteredEventError",
    "AggregateNotFoundError",
    "ProjectionNotFoundError",
]
