"""What the saga log holds: one record per saga and its timeline of transitions."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class SagaState(enum.StrEnum):
    """Where a saga is. ``RUNNING`` and ``COMPENSATING`` are unfinished (recovery resumes
    them); ``COMPLETED`` and ``COMPENSATED`` are final."""

    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"

    @property
    def finished(self) -> bool:
        """True for the final states."""
        return self in (SagaState.COMPLETED, SagaState.COMPENSATED)


UNFINISHED = (SagaState.RUNNING, SagaState.COMPENSATING)


class TransitionKind(enum.StrEnum):
    """One entry of a saga's timeline."""

    STARTED = "started"
    STEP_STARTED = "step_started"
    STEP_ATTEMPT_FAILED = "step_attempt_failed"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    COMMAND_SENT = "command_sent"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_ATTEMPT_FAILED = "compensation_attempt_failed"
    COMPENSATION_COMPLETED = "compensation_completed"
    ALERT = "alert"
    COMPLETED = "completed"
    COMPENSATED = "compensated"


@dataclass(slots=True)
class SagaRecord:
    """The saga's row in the log: where it is and its current data (JSON).

    ``position`` is the index (in run order) of the step being run, or, while
    compensating, of the step being compensated. ``awaiting`` is true while a command
    step waits for its participant's reply, until ``deadline`` (wall-clock seconds; ``None``:
    the step has no timeout). ``transitions`` counts timeline entries. ``owner`` is the
    orchestrator holding the saga's lease and ``lease_until`` when that lease expires
    (another orchestrator may then take the saga over).
    """

    saga_id: str
    name: str
    version: int
    fingerprint: str
    state: SagaState
    position: int
    attempt: int
    awaiting: bool
    data: bytes
    error: str | None
    created_at: float
    updated_at: float
    transitions: int
    failed_step: str | None = None
    deadline: float | None = None
    owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One timeline entry: what happened to which step, on which attempt, with what error."""

    saga_id: str
    seq: int
    kind: TransitionKind
    step: str | None
    attempt: int
    error: str | None
    at: float


# How the orchestrator writes an error into the log: "<type name>: <message>".
_ERROR_TEXT = re.compile(r"([A-Za-z_][\w.]*): (.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class StepFailure:
    """Why a step failed: the ``step``, the error's type name and its message.

    ``error_type`` is the exception's class name (``"OutOfStockError"``), ``"StepRejected"``
    when a participant replied with a failure, or ``""`` when the log does not say.
    """

    step: str
    error_type: str
    message: str

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}" if self.error_type else self.message

    @classmethod
    def parse(cls, step: str, text: str) -> StepFailure:
        """The failure of ``step`` from the error text stored in the saga log."""
        match = _ERROR_TEXT.fullmatch(text)
        if match is None:
            return cls(step, "", text)
        return cls(step, match[1], match[2])
