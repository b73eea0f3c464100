"""Command steps over the bus: the saga headers on a command and the participant's reply."""

from __future__ import annotations

from typing import Any

from shipyard.messaging import Event

SAGA_ID = "saga-id"
SAGA_STEP = "saga-step"
SAGA_ATTEMPT = "saga-attempt"
SAGA_COMPENSATION = "saga-compensation"


class StepReply(Event):
    """A participant's answer to a saga command: done (``ok``) or failed (``error``).

    ``data`` (optional) holds fields to merge into the saga's data. Build it with
    :func:`reply_to`, publish it through the participant's outbox, and have the
    orchestrator's service consume it with ``bus.subscribe(StepReply, group=...,
    handler=orchestrator.handle_reply)``.
    """

    saga_id: str
    step: str
    attempt: int
    compensation: bool = False
    ok: bool = True
    error: str | None = None
    data: dict[str, Any] | None = None


def saga_headers(command: Event) -> tuple[str, str, int, bool]:
    """``(saga id, step, attempt, compensation)`` from a command's headers.

    Participants deduplicate on ``saga id + step`` (the inbox already drops redelivered
    events; this also drops a command re-sent after an orchestrator crash).
    """
    headers = command.headers
    try:
        return (
            headers[SAGA_ID],
            headers[SAGA_STEP],
            int(headers[SAGA_ATTEMPT]),
            headers.get(SAGA_COMPENSATION) == "1",
        )
    except KeyError as missing:
        raise ValueError(f"{command.event_name} carries no saga header {missing}") from None


def reply_to(
    command: Event, *, ok: bool = True, error: str | None = None, data: dict[str, Any] | None = None
) -> StepReply:
    """The :class:`StepReply` answering ``command`` (same correlation, caused by it)."""
    saga_id, step, attempt, compensation = saga_headers(command)
    return StepReply(
        saga_id=saga_id,
        step=step,
        attempt=attempt,
        compensation=compensation,
        ok=ok,
        error=error,
        data=data,
        correlation_id=command.correlation_id or saga_id,
        causation_id=command.id,
    )
