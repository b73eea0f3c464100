"""Declaring a saga: ordered steps, each an action with its compensation, checked up front.

A definition is validated when it is built, so a saga that could not be compensated never
starts: every step before the pivot needs a compensation (unless it is read-only), steps
after the pivot are retried until they succeed and take none, names are unique, and
``after=`` dependencies must not form a cycle. The step order is the declaration order,
moved only as far as ``after=`` requires.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

import msgspec

from shipyard.core import validation
from shipyard.messaging import Event
from shipyard.resilience import Retry
from shipyard.saga.errors import SagaDefinitionError
from shipyard.saga.record import StepFailure

D = TypeVar("D", bound=msgspec.Struct)

StepKind = Literal["call", "command"]


@dataclass(frozen=True, slots=True)
class StepContext(Generic[D]):
    """What an action or compensation is called with.

    ``idempotency_key`` (saga id + step, plus ``:compensate`` for compensations) is what
    participants deduplicate on: after a crash the same action may be sent again.

    ``failure`` says why: in a compensation, the step failure that made the saga
    compensate; in a retried step (``attempt > 1``), the previous attempt's failure;
    otherwise ``None``.
    """

    saga_id: str
    saga: str
    step: str
    attempt: int
    data: D
    compensating: bool = False
    failure: StepFailure | None = None

    @property
    def idempotency_key(self) -> str:
        """``"<saga id>:<step>"`` (``":compensate"`` appended for a compensation)."""
        suffix = ":compensate" if self.compensating else ""
        return f"{self.saga_id}:{self.step}{suffix}"


Action = Callable[[StepContext[D]], Awaitable[D | None]]
"""``async def action(ctx) -> new data | None``: returning data replaces the saga's data."""
CommandBuilder = Callable[[StepContext[D]], Event]
"""Builds the command event sent through the outbox; the participant answers with a
:class:`~shipyard.saga.StepReply`."""


@dataclass(frozen=True, slots=True)
class Step(Generic[D]):
    """One step of a saga.

    Give either ``action`` (called in process, or over HTTP via
    :func:`~shipyard.saga.http_action`) or ``command`` (a command message through the
    outbox; the saga waits for the participant's reply). ``compensation`` /
    ``compensation_command`` undo it. ``retry`` retries a failing action or command (its
    ``max_attempts``, backoff, ``retry_after`` and :meth:`~shipyard.resilience.Retry.
    should_retry` are used; the orchestrator's clock sleeps). ``timeout`` bounds each
    attempt — for a command step (and its compensation command) the wait for the reply:
    the deadline is stored with the command, and when it passes the attempt fails with
    :class:`~shipyard.saga.ReplyTimeoutError`. ``pivot=True`` marks the go/no-go step:
    steps after it are retried until they succeed. ``read_only=True`` marks a step that
    changes nothing, so it needs no compensation. ``after`` names steps that must run
    first (default: none beyond the declaration order).
    """

    name: str
    action: Action[D] | None = None
    compensation: Action[D] | None = None
    command: CommandBuilder[D] | None = None
    compensation_command: CommandBuilder[D] | None = None
    retry: Retry | None = None
    timeout: float | None = None
    pivot: bool = False
    read_only: bool = False
    after: tuple[str, ...] = ()

    @property
    def kind(self) -> StepKind:
        """``"command"`` for message steps, ``"call"`` otherwise."""
        return "command" if self.command is not None else "call"

    @property
    def compensable(self) -> bool:
        """True when the step has something to undo."""
        return self.compensation is not None or self.compensation_command is not None


@dataclass(frozen=True, slots=True)
class StepShape:
    """A step as stored and drawn: no code, just its name and flags."""

    name: str
    kind: StepKind
    compensable: bool
    pivot: bool
    read_only: bool
    retriable: bool
    """After the pivot: retried until it succeeds instead of compensating."""


@dataclass(frozen=True)
class SagaDefinition(Generic[D]):
    """A named, versioned saga: its steps and the msgspec type of its data.

    Raises :class:`SagaDefinitionError` naming the step when the steps are not a valid
    saga. Change the steps, bump ``version``: sagas already running finish on the
    definition they started with, as long as it stays registered.
    """

    name: str
    steps: Sequence[Step[D]]
    data_type: type[D]
    version: int = 1
    order: tuple[Step[D], ...] = field(init=False, repr=False)
    pivot_index: int | None = field(init=False, repr=False)
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SagaDefinitionError(str(self.name), None, "needs a non-empty name")
        validation.at_least("version", self.version, 1)
        if not (isinstance(self.data_type, type) and issubclass(self.data_type, msgspec.Struct)):
            raise SagaDefinitionError(self.name, None, "data_type must be a msgspec.Struct type")
        order = _ordered(self.name, list(self.steps))
        pivot_index = _check(self.name, order)
        object.__setattr__(self, "order", tuple(order))
        object.__setattr__(self, "pivot_index", pivot_index)
        object.__setattr__(self, "fingerprint", _fingerprint(self))

    def step(self, name: str) -> Step[D]:
        """The step called ``name``."""
        for step in self.order:
            if step.name == name:
                return step
        raise KeyError(name)

    def is_retriable(self, index: int) -> bool:
        """True for steps after the pivot: they never fail the saga, they retry."""
        return self.pivot_index is not None and index > self.pivot_index

    def shape(self) -> list[StepShape]:
        """The steps in run order, without code (for the log, the CLI and diagrams)."""
        return [
            StepShape(s.name, s.kind, s.compensable, s.pivot, s.read_only, self.is_retriable(i))
            for i, s in enumerate(self.order)
        ]

    def replace_steps(self, steps: Sequence[Step[D]]) -> SagaDefinition[D]:
        """The same saga (name, version, fingerprint) with the step code swapped — for the
        test harness, which wraps actions to inject failures."""
        clone = replace(self, steps=steps)
        object.__setattr__(clone, "fingerprint", self.fingerprint)
        return clone

    def decode(self, data: bytes | str) -> D:
        """Saga data from its stored JSON."""
        return msgspec.json.decode(data, type=self.data_type)


def _ordered(saga: str, steps: list[Step[Any]]) -> list[Step[Any]]:
    """Declaration order, with each step moved after the steps it names in ``after``."""
    names: dict[str, Step[Any]] = {}
    for step in steps:
        if not isinstance(step, Step):
            raise SagaDefinitionError(saga, None, f"{step!r} is not a Step")
        if not step.name:
            raise SagaDefinitionError(saga, None, "every step needs a non-empty name")
        if step.name in names:
            raise SagaDefinitionError(saga, step.name, "duplicate step name; names must be unique")
        names[step.name] = step
    if not steps:
        raise SagaDefinitionError(saga, None, "needs at least one step")
    for step in steps:
        for dependency in step.after:
            if dependency not in names:
                raise SagaDefinitionError(
                    saga, step.name, f"runs after {dependency!r}, which is not a step"
                )
    order: list[Step[Any]] = []
    placed: set[str] = set()
    visiting: list[str] = []

    def place(step: Step[Any]) -> None:
        if step.name in placed:
            return
        if step.name in visiting:
            cycle = [*visiting[visiting.index(step.name) :], step.name]
            raise SagaDefinitionError(saga, step.name, f"is part of a cycle: {' -> '.join(cycle)}")
        visiting.append(step.name)
        for dependency in step.after:
            place(names[dependency])
        visiting.pop()
        placed.add(step.name)
        order.append(step)

    for step in steps:
        place(step)
    return order


def _check(saga: str, order: list[Step[Any]]) -> int | None:
    pivots = [i for i, step in enumerate(order) if step.pivot]
    if len(pivots) > 1:
        raise SagaDefinitionError(
            saga,
            order[pivots[1]].name,
            f"is a second pivot (the pivot is {order[pivots[0]].name!r})",
        )
    pivot = pivots[0] if pivots else None
    for index, step in enumerate(order):
        if (step.action is None) == (step.command is None):
            raise SagaDefinitionError(saga, step.name, "needs exactly one of action= or command=")
        if step.compensation is not None and step.compensation_command is not None:
            raise SagaDefinitionError(
                saga, step.name, "give compensation= or compensation_command=, not both"
            )
        if step.timeout is not None:
            validation.positive(f"steps[{step.name}].timeout", step.timeout)
        if step.retry is not None and not isinstance(step.retry, Retry):
            raise SagaDefinitionError(saga, step.name, "retry= must be a shipyard Retry")
        if step.pivot and step.read_only:
            raise SagaDefinitionError(saga, step.name, "cannot be both pivot and read-only")
        after_pivot = pivot is not None and index > pivot
        if step.compensable and (step.pivot or step.read_only or after_pivot):
            why = (
                "is the pivot"
                if step.pivot
                else "is read-only"
                if step.read_only
                else "comes after the pivot (it is retried until it succeeds)"
            )
            raise SagaDefinitionError(
                saga, step.name, f"has a compensation that would never run: it {why}"
            )
        if not step.compensable and not (step.pivot or step.read_only or after_pivot):
            raise SagaDefinitionError(
                saga,
                step.name,
                "has no compensation; add compensation= (or compensation_command=), or mark "
                "it pivot=True (the go/no-go step) or read_only=True",
            )
    return pivot


def _fingerprint(definition: SagaDefinition[Any]) -> str:
    shape = [
        (s.name, s.kind, s.compensable, s.pivot, s.read_only, s.after) for s in definition.order
    ]
    text = json.dumps([definition.name, definition.version, shape])
    return hashlib.sha256(text.encode()).hexdigest()
