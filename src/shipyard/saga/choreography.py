"""Choreography helpers: event-driven saga steps without an orchestrator.

A :class:`Participant` subscribes handlers on an :class:`~shipyard.messaging.EventBus`.
Each handler runs in the consumer's transaction (the bus's inbox makes it run once per
event) and returns the next event(s); they go into the outbox in that same transaction,
with the correlation id carried over and the causation id set, so the flow can be
followed by a :class:`~shipyard.saga.ChoreographyTracker`. When the handler rejects the
work (raises :class:`StepRejected`, or an error listed in ``reject_on``) its database
writes are rolled back to a savepoint and the ``failure`` event is published instead —
the event other participants compensate on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from shipyard.messaging import Event, EventBus, Outbox
from shipyard.saga.errors import SagaError
from shipyard.storage import Transaction

E = TypeVar("E", bound=Event)

StepHandler = Callable[[E, Transaction], Awaitable[Event | Sequence[Event] | None]]
"""``async def handle(event, tx) -> next event(s) | None`` — the participant's local step."""
FailureBuilder = Callable[[E, Exception], Event]
"""Builds the failure event from the incoming event and the rejection."""

_SAVEPOINT = "shipyard_choreography_step"


class StepRejected(SagaError, RuntimeError):
    """Raise in a choreographed step to refuse the work (out of stock, card declined);
    its writes are undone and the step's failure event is published."""


def carry(source: Event, *events: Event) -> tuple[Event, ...]:
    """Stamp ``events`` as caused by ``source``: same correlation id, causation = its id."""
    correlation = source.correlation_id or source.id
    for event in events:
        if event.correlation_id is None:
            event.correlation_id = correlation
        if event.causation_id is None:
            event.causation_id = source.id
    return events


class Participant:
    """A service's choreographed steps on ``bus`` in consumer ``group``, publishing
    through ``outbox`` (which must write to the same database as the bus's inbox)."""

    def __init__(self, bus: EventBus, outbox: Outbox, *, group: str) -> None:
        self._bus = bus
        self._outbox = outbox
        self.group = group

    def on(
        self,
        event: type[E],
        handler: StepHandler[E],
        *,
        failure: FailureBuilder[E] | None = None,
        reject_on: tuple[type[Exception], ...] = (),
    ) -> None:
        """Run ``handler`` for each ``event``; publish what it returns, or ``failure(...)``
        when it rejects (``StepRejected`` or one of ``reject_on``)."""
        outbox = self._outbox
        rejections: tuple[type[Exception], ...] = (StepRejected, *reject_on)

        async def handle(incoming: Any, tx: Transaction) -> None:
            if failure is None:
                produced = await handler(incoming, tx)
            else:
                await tx.execute(f"SAVEPOINT {_SAVEPOINT}")
                try:
                    produced = await handler(incoming, tx)
                except rejections as error:
                    # Undo the step's own writes but keep the inbox claim: the rejection
                    # is this event's one outcome.
                    await tx.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                    produced = failure(incoming, error)
                await tx.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            if produced is None:
                return
            events = (produced,) if isinstance(produced, Event) else tuple(produced)
            if events:
                await outbox.add(tx, *carry(incoming, *events))

        self._bus.subscribe(event, group=self.group, handler=handle)
