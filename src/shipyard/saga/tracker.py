"""The choreography tracker: each business transaction's state and timeline, from events.

A choreographed flow has no orchestrator to ask "where is order 42?". The tracker
consumes the flow's events as its own consumer group, groups them by correlation id and
keeps, per flow, a state and the timeline of events (which event, caused by which, when)
in its database — so choreographed flows are as visible as orchestrated ones, and stalled
ones can be listed.

States: ``IN_PROGRESS`` from the first event; ``COMPLETED`` on an event in
``completes``; ``FAILED`` on an event in ``fails`` (the participants are compensating);
``COMPENSATED`` on an event in ``compensated``. A final state is not left again, except
that FAILED moves on to COMPENSATED.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.messaging import Event, EventBus
from shipyard.saga.errors import SagaError
from shipyard.storage import Database, Transaction

FLOWS = "shipyard_choreography_flows"
FLOW_EVENTS = "shipyard_choreography_events"


class FlowState(enum.StrEnum):
    """Where a choreographed business transaction stands."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATED = "COMPENSATED"


class FlowNotFound(SagaError, LookupError):
    """No event with this correlation id was tracked."""

    def __init__(self, correlation_id: str) -> None:
        self.correlation_id = correlation_id
        super().__init__(f"no tracked flow with correlation id {correlation_id!r}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """One event of a flow's timeline."""

    seq: int
    name: str
    event_id: str
    causation_id: str | None
    occurred_at: float
    recorded_at: float


@dataclass(slots=True)
class Flow:
    """A business transaction reconstructed from its events."""

    correlation_id: str
    flow: str
    state: FlowState
    started_at: float
    updated_at: float
    events: list[FlowEvent] = field(default_factory=list)


def _names(events: Iterable[type[Event] | str]) -> frozenset[str]:
    return frozenset(e if isinstance(e, str) else e.event_name for e in events)


class ChoreographyTracker:
    """Follows ``flow``'s events by correlation id and stores state + timeline in ``db``.

    Give the event types that end the flow: ``completes`` (success), ``fails`` (a step
    refused; compensations follow) and ``compensated`` (everything was undone).
    """

    def __init__(
        self,
        db: Database,
        *,
        flow: str,
        completes: Iterable[type[Event] | str],
        fails: Iterable[type[Event] | str] = (),
        compensated: Iterable[type[Event] | str] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._db = db
        self.flow = flow
        self._completes = _names(completes)
        self._fails = _names(fails)
        self._compensated = _names(compensated)
        self._clock = clock

    async def install(self) -> None:
        """Create the tracker's tables if missing."""
        async with self._db.transaction() as tx:
            await tx.execute(
                f"""CREATE TABLE IF NOT EXISTS {FLOWS} (
                    correlation_id TEXT NOT NULL, flow TEXT NOT NULL, state TEXT NOT NULL,
                    started_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
                    events INTEGER NOT NULL, PRIMARY KEY (flow, correlation_id))"""
            )
            await tx.execute(
                f"""CREATE TABLE IF NOT EXISTS {FLOW_EVENTS} (
                    flow TEXT NOT NULL, correlation_id TEXT NOT NULL, seq INTEGER NOT NULL,
                    name TEXT NOT NULL, event_id TEXT NOT NULL, causation_id TEXT,
                    occurred_at DOUBLE PRECISION NOT NULL,
                    recorded_at DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (flow, correlation_id, seq))"""
            )
            await tx.execute(
                f"CREATE INDEX IF NOT EXISTS {FLOWS}_state ON {FLOWS} (flow, state, updated_at)"
            )

    def attach(
        self, bus: EventBus, events: Iterable[type[Event]], *, group: str | None = None
    ) -> None:
        """Subscribe :meth:`record` to every event type of the flow on ``bus`` (consumer
        group ``group``, default ``"tracker-<flow>"``); ``bus`` must use the tracker's
        database."""
        group_name = group or f"tracker-{self.flow}"
        for event_type in events:
            bus.subscribe(event_type, group=group_name, handler=self.record)

    def _next_state(self, state: FlowState | None, name: str) -> FlowState:
        if name in self._compensated:
            return FlowState.COMPENSATED
        if state in (FlowState.COMPLETED, FlowState.COMPENSATED):
            return state
        if name in self._fails:
            return FlowState.FAILED
        if state is FlowState.FAILED:
            return state
        if name in self._completes:
            return FlowState.COMPLETED
        return FlowState.IN_PROGRESS

    async def record(self, event: Event, tx: Transaction) -> None:
        """Add ``event`` to its flow (bus handler; also callable directly in a transaction)."""
        correlation = event.correlation_id or event.id
        now = self._clock.now()
        row = await tx.fetchone(
            f"SELECT state, events FROM {FLOWS} WHERE flow = ? AND correlation_id = ?",
            self.flow,
            correlation,
        )
        name = event.event_name
        if row is None:
            state = self._next_state(None, name)
            seq = 1
            await tx.execute(
                f"INSERT INTO {FLOWS} (correlation_id, flow, state, started_at, updated_at,"
                " events) VALUES (?, ?, ?, ?, ?, 1)",
                correlation,
                self.flow,
                state.value,
                event.occurred_at,
                now,
            )
        else:
            state = self._next_state(FlowState(row[0]), name)
            seq = int(row[1]) + 1
            await tx.execute(
                f"UPDATE {FLOWS} SET state = ?, updated_at = ?, events = ?"
                " WHERE flow = ? AND correlation_id = ?",
                state.value,
                now,
                seq,
                self.flow,
                correlation,
            )
        await tx.execute(
            f"INSERT INTO {FLOW_EVENTS} (flow, correlation_id, seq, name, event_id,"
            " causation_id, occurred_at, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.flow,
            correlation,
            seq,
            name,
            event.id,
            event.causation_id,
            event.occurred_at,
            now,
        )

    async def get(self, correlation_id: str) -> Flow:
        """The flow's state and timeline; raises :class:`FlowNotFound`."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT state, started_at, updated_at FROM {FLOWS}"
                " WHERE flow = ? AND correlation_id = ?",
                self.flow,
                correlation_id,
            )
            if row is None:
                raise FlowNotFound(correlation_id)
            events = await tx.fetch(
                f"SELECT seq, name, event_id, causation_id, occurred_at, recorded_at"
                f" FROM {FLOW_EVENTS} WHERE flow = ? AND correlation_id = ? ORDER BY seq",
                self.flow,
                correlation_id,
            )
        return Flow(
            correlation_id,
            self.flow,
            FlowState(row[0]),
            float(row[1]),
            float(row[2]),
            [FlowEvent(int(e[0]), e[1], e[2], e[3], float(e[4]), float(e[5])) for e in events],
        )

    async def flows(
        self, *, state: FlowState | None = None, limit: int = 100
    ) -> list[tuple[str, FlowState]]:
        """``(correlation id, state)`` of the flows, most recently updated first."""
        async with self._db.transaction() as tx:
            if state is None:
                rows = await tx.fetch(
                    f"SELECT correlation_id, state FROM {FLOWS} WHERE flow = ?"
                    " ORDER BY updated_at DESC LIMIT ?",
                    self.flow,
                    limit,
                )
            else:
                rows = await tx.fetch(
                    f"SELECT correlation_id, state FROM {FLOWS} WHERE flow = ? AND state = ?"
                    " ORDER BY updated_at DESC LIMIT ?",
                    self.flow,
                    state.value,
                    limit,
                )
        return [(r[0], FlowState(r[1])) for r in rows]

    async def stalled(self, older_than: float) -> list[str]:
        """Flows in progress (or failed, compensating) with no event for ``older_than``
        seconds — a participant that never answered."""
        cutoff = self._clock.now() - older_than
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT correlation_id FROM {FLOWS} WHERE flow = ? AND state IN (?, ?)"
                " AND updated_at < ? ORDER BY updated_at",
                self.flow,
                FlowState.IN_PROGRESS.value,
                FlowState.FAILED.value,
                cutoff,
            )
        return [r[0] for r in rows]
