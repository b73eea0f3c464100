"""The durable orchestrator: runs saga steps, persists every transition, compensates.

Each transition is committed to the saga log before the next action is sent, in the same
transaction as the outbox row of the command it sends. A step's completion and the start
of the next step are one transition (one commit), so a 4-step saga costs five commits.
After a crash, :meth:`Orchestrator.recover` resumes every unfinished saga where its last
commit left it: the step in progress runs again (participants deduplicate on the saga id
+ step id), a compensation in progress runs again, a command awaiting its reply keeps
waiting (the outbox delivers it at least once).

A step that fails (after its retries) starts the compensations of the completed steps,
newest first. Compensations, and steps after the pivot, are retried until they succeed,
with capped exponential backoff; after ``alert_after`` failed attempts an ``alert`` is
logged, recorded in the timeline and emitted to ``events`` listeners.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, EventPublisher, get_logger, validation
from shipyard.messaging import Event, Outbox, install_schema
from shipyard.resilience import Retry, Timeout, backoff_delay
from shipyard.saga.definition import SagaDefinition, Step, StepContext
from shipyard.saga.errors import (
    SagaDefinitionError,
    SagaVersionMismatchError,
    UnknownSagaError,
)
from shipyard.saga.group_commit import GroupCommitter, PendingWrite
from shipyard.saga.record import SagaRecord, SagaState, Transition, TransitionKind
from shipyard.saga.reply import SAGA_ATTEMPT, SAGA_COMPENSATION, SAGA_ID, SAGA_STEP, StepReply
from shipyard.saga.store import SagaLog, saga_log_for
from shipyard.storage import Database, Transaction

_log = get_logger("shipyard.saga")
_MAX_ERROR_CHARS = 2000

AnyDefinition = SagaDefinition[Any]
CommitHook = Callable[[SagaRecord, Sequence[Transition]], None]
"""Called after each committed transition (the test harness crashes the orchestrator here)."""


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """A transition that was committed (``kind``), for dashboards, metrics and alerts."""

    kind: TransitionKind
    saga_id: str
    saga: str
    state: SagaState
    step: str | None
    attempt: int
    error: str | None


def _describe(error: BaseException) -> str:
    text = f"{type(error).__qualname__}: {error}"
    return text[:_MAX_ERROR_CHARS]


class Orchestrator:
    """Runs registered saga definitions against a durable saga log.

    ``log`` is a :class:`SagaLog` or a :class:`~shipyard.storage.Database` (the log for its
    dialect is used). ``outbox`` is required for command steps; commands are added to it in
    the transition's transaction. Compensations and steps after the pivot back off from
    ``backoff_base`` to ``backoff_max`` seconds between attempts and raise an alert after
    ``alert_after`` failures. ``clock`` drives every backoff and step timeout.
    """

    def __init__(
        self,
        log: SagaLog | Database,
        *,
        outbox: Outbox | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        alert_after: int = 10,
        clock: Clock = SYSTEM_CLOCK,
        on_commit: CommitHook | None = None,
        random_source: Callable[[], float] = random.random,
    ) -> None:
        self.log: SagaLog = (
            saga_log_for(cast(Database, log)) if _is_database(log) else cast(SagaLog, log)
        )
        self._db = self.log.db
        self._outbox = outbox
        self._base = validation.positive("backoff_base", backoff_base)
        self._max = validation.positive("backoff_max", backoff_max)
        if self._max < self._base:
            raise ConfigError(
                "backoff_max", backoff_max, f"must be >= backoff_base ({backoff_base})"
            )
        self._alert_after = validation.at_least("alert_after", alert_after, 1)
        self._clock = clock
        self._on_commit = on_commit
        self._random = random_source
        self._definitions: dict[tuple[str, int], AnyDefinition] = {}
        self._latest: dict[str, AnyDefinition] = {}
        self._timeouts: dict[int, Timeout] = {}
        self._tasks: dict[str, asyncio.Task[SagaRecord]] = {}
        self._writer = GroupCommitter(self._db, self.log, outbox)
        self.events: EventPublisher[SagaEvent] = EventPublisher("saga")
        """Every committed transition, including ``alert``."""

    # -- definitions -------------------------------------------------------------------

    def register(self, *definitions: AnyDefinition) -> None:
        """Make definitions runnable; the highest version of a name is used for new sagas.

        Keep older versions registered while sagas started on them are unfinished.
        """
        for definition in definitions:
            key = (definition.name, definition.version)
            existing = self._definitions.get(key)
            if existing is not None and existing.fingerprint != definition.fingerprint:
                raise SagaDefinitionError(
                    definition.name,
                    None,
                    f"version {definition.version} is already registered with other steps; "
                    "give the changed definition a new version",
                )
            sends = any(s.command or s.compensation_command for s in definition.order)
            if sends and self._outbox is None:
                raise ConfigError(
                    "outbox", None, f"saga {definition.name!r} sends commands: pass outbox="
                )
            self._definitions[key] = definition
            latest = self._latest.get(definition.name)
            if latest is None or latest.version < definition.version:
                self._latest[definition.name] = definition
            for step in definition.order:
                if step.timeout is not None:
                    self._timeouts[id(step)] = Timeout(step.timeout, clock=self._clock)

    def definition(self, name: str, version: int | None = None) -> AnyDefinition:
        """The registered definition (latest version when ``version`` is omitted)."""
        found = (
            self._latest.get(name) if version is None else self._definitions.get((name, version))
        )
        if found is None:
            known = sorted(f"{n} v{v}" for n, v in self._definitions)
            raise UnknownSagaError(name, version, known)
        return found

    async def install(self) -> None:
        """Create the saga log (and outbox) tables and record the registered definitions."""
        await self.log.install()
        if self._outbox is not None:
            await install_schema(self._db)
        for definition in self._definitions.values():
            await self.log.record_definition(
                definition.name, definition.version, definition.fingerprint, definition.shape()
            )

    # -- running -----------------------------------------------------------------------

    async def execute(
        self, saga: str | AnyDefinition, data: msgspec.Struct, *, saga_id: str | None = None
    ) -> SagaRecord:
        """Start a saga and run it until it finishes (or waits for a command's reply).

        ``saga_id`` makes starting idempotent: an id already in the log is not started
        again; its current record is driven on instead.
        """
        definition = self._resolve(saga)
        if not isinstance(data, definition.data_type):
            raise ConfigError(
                "data", data, f"must be a {definition.data_type.__qualname__} for {definition.name}"
            )
        saga_id = saga_id or str(uuid.uuid4())
        record = await self._create(definition, saga_id, data)
        return await self._drive_once(definition, record, data)

    async def start(
        self, saga: str | AnyDefinition, data: msgspec.Struct, *, saga_id: str | None = None
    ) -> str:
        """Persist a new saga and run it in the background; returns its id at once
        (after the first transition committed)."""
        definition = self._resolve(saga)
        saga_id = saga_id or str(uuid.uuid4())
        record = await self._create(definition, saga_id, data)
        self._spawn(definition, record, definition.decode(record.data))
        return saga_id

    async def resume(self, saga_id: str) -> SagaRecord:
        """Drive one saga on from its last committed transition."""
        record = await self.log.get(saga_id)
        if record.state.finished:
            return record
        definition = self._definition_of(record)
        return await self._drive_once(definition, record, definition.decode(record.data))

    async def recover(self) -> list[SagaRecord]:
        """Resume every unfinished saga of the log (concurrently); returns their records
        as they stand afterwards (finished, or waiting for a reply)."""
        unfinished = await self.log.unfinished()
        return list(await asyncio.gather(*(self.resume(r.saga_id) for r in unfinished)))

    async def wait(self, saga_id: str) -> SagaRecord:
        """Wait for the saga's background run (if any) and return its record."""
        task = self._tasks.get(saga_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.log.get(saga_id)

    async def close(self) -> None:
        """Cancel background runs (they resume on the next ``recover``)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle_reply(self, reply: StepReply, tx: Transaction) -> None:
        """Bus handler for :class:`StepReply`: record the outcome in the consumer's
        transaction (the orchestrator's database) and drive the saga on after commit.

        Replies that do not match what the saga waits for (duplicates, late replies to an
        earlier attempt) are ignored.
        """
        record = await self.log.load(tx, reply.saga_id)
        definition = self._definition_of(record)
        if record.state.finished or not record.awaiting:
            return
        step = definition.order[record.position]
        compensating = record.state is SagaState.COMPENSATING
        if (reply.step, reply.compensation, reply.attempt) != (
            step.name,
            compensating,
            record.attempt,
        ):
            return
        data = definition.decode(record.data)
        if reply.data:
            merged = {**msgspec.to_builtins(data), **reply.data}
            data = msgspec.convert(merged, definition.data_type)
        record.awaiting = False
        pending: list[Transition] = []
        commands: list[Event] = []
        if reply.ok:
            if compensating:
                self._compensated_step(definition, record, data, pending, commands)
            else:
                self._completed_step(definition, record, data, pending, commands)
        else:
            error = reply.error or "participant replied with a failure"
            self._failed_attempt(definition, record, step, error, pending, commands, data)
        record.data = msgspec.json.encode(data)
        record.updated_at = self._clock.now()
        await self.log.save(tx, record, pending)
        if commands:
            assert self._outbox is not None
            await self._outbox.add(tx, *commands)

        def after_commit() -> None:
            self._committed(record, pending)
            if not record.state.finished and not record.awaiting:
                self._spawn(definition, record, data)

        tx.after_commit(after_commit)

    # -- internals ---------------------------------------------------------------------

    def _resolve(self, saga: str | AnyDefinition) -> AnyDefinition:
        if isinstance(saga, SagaDefinition):
            if (saga.name, saga.version) not in self._definitions:
                self.register(saga)
            return self._definitions[(saga.name, saga.version)]
        return self.definition(saga)

    def _definition_of(self, record: SagaRecord) -> AnyDefinition:
        definition = self.definition(record.name, record.version)
        if definition.fingerprint != record.fingerprint:
            raise SagaVersionMismatchError(
                record.name, record.version, record.fingerprint, definition.fingerprint
            )
        return definition

    def _spawn(self, definition: AnyDefinition, record: SagaRecord, data: Any) -> None:
        if record.saga_id in self._tasks:
            return
        task = asyncio.create_task(
            self._drive(definition, record, data), name=f"saga-{record.saga_id}"
        )
        self._tasks[record.saga_id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[SagaRecord]) -> None:
        for saga_id, running in list(self._tasks.items()):
            if running is task:
                del self._tasks[saga_id]
        error = None if task.cancelled() else task.exception()
        if isinstance(error, Exception):
            _log.error("saga run stopped; recover() resumes it", error=_describe(error))

    async def _drive_once(
        self, definition: AnyDefinition, record: SagaRecord, data: Any
    ) -> SagaRecord:
        running = self._tasks.get(record.saga_id)
        if running is not None:
            await asyncio.shield(running)
            return await self.log.get(record.saga_id)
        return await self._drive(definition, record, data)

    async def _create(
        self, definition: AnyDefinition, saga_id: str, data: msgspec.Struct
    ) -> SagaRecord:
        now = self._clock.now()
        record = SagaRecord(
            saga_id=saga_id,
            name=definition.name,
            version=definition.version,
            fingerprint=definition.fingerprint,
            state=SagaState.RUNNING,
            position=0,
            attempt=1,
            awaiting=False,
            data=msgspec.json.encode(data),
            error=None,
            created_at=now,
            updated_at=now,
            transitions=0,
        )
        pending = [self._transition(record, TransitionKind.STARTED, None)]
        commands: list[Event] = []
        self._enter(definition, record, 0, data, pending, commands)
        existing = await self._writer.write(PendingWrite(record, pending, commands, create=True))
        if existing is not None:
            return existing
        self._committed(record, pending)
        return record

    async def _drive(self, definition: AnyDefinition, record: SagaRecord, data: Any) -> SagaRecord:
        while not record.state.finished and not record.awaiting:
            step = definition.order[record.position]
            compensating = record.state is SagaState.COMPENSATING
            if (step.compensation_command if compensating else step.command) is not None:
                # A command step that is not waiting: its command failed and is sent again.
                await self._resend(definition, record, step, data, compensating)
                continue
            ctx = StepContext(
                saga_id=record.saga_id,
                saga=definition.name,
                step=step.name,
                attempt=record.attempt,
                data=data,
                compensating=compensating,
            )
            fn = step.compensation if compensating else step.action
            assert fn is not None
            pending: list[Transition] = []
            commands: list[Event] = []
            try:
                timeout = self._timeouts.get(id(step))
                result = await (timeout.call(fn, ctx) if timeout is not None else fn(ctx))
            except Exception as error:
                delay = self._failed_attempt(
                    definition, record, step, _describe(error), pending, commands, data, error
                )
                await self._commit(record, data, pending, commands)
                if delay:
                    await self._clock.sleep(delay)
                continue
            if result is not None:
                data = result
            if compensating:
                self._compensated_step(definition, record, data, pending, commands)
            else:
                self._completed_step(definition, record, data, pending, commands)
            await self._commit(record, data, pending, commands)
        return record

    async def _resend(
        self,
        definition: AnyDefinition,
        record: SagaRecord,
        step: Step[Any],
        data: Any,
        compensating: bool,
    ) -> None:
        if record.attempt > 1:
            await self._clock.sleep(self._delay(record.attempt - 1, step, compensating, None))
        pending: list[Transition] = []
        commands: list[Event] = []
        self._enter(definition, record, record.position, data, pending, commands, fresh=False)
        await self._commit(record, data, pending, commands)

    def _delay(
        self, attempt: int, step: Step[Any], forever: bool, error: BaseException | None
    ) -> float:
        retry = step.retry
        if retry is not None and not forever:
            delay = backoff_delay(
                attempt,
                base_delay=retry.base_delay,
                multiplier=retry.multiplier,
                max_delay=retry.max_delay,
                jitter=retry.jitter,
                previous_delay=None,
                random=self._random,
            )
        else:
            delay = backoff_delay(
                attempt,
                base_delay=self._base,
                multiplier=2.0,
                max_delay=self._max,
                jitter="equal",
                previous_delay=None,
                random=self._random,
            )
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > delay:
            delay = float(hint)
        return delay

    def _failed_attempt(
        self,
        definition: AnyDefinition,
        record: SagaRecord,
        step: Step[Any],
        error_text: str,
        pending: list[Transition],
        commands: list[Event],
        data: Any,
        error: BaseException | None = None,
    ) -> float:
        """Record a failed attempt; returns the backoff before the next one (0: none)."""
        compensating = record.state is SagaState.COMPENSATING
        forever = compensating or definition.is_retriable(record.position)
        if forever or _may_retry(step.retry, record.attempt, error):
            kind = (
                TransitionKind.COMPENSATION_ATTEMPT_FAILED
                if compensating
                else TransitionKind.STEP_ATTEMPT_FAILED
            )
            pending.append(self._transition(record, kind, step.name, error_text))
            if forever and record.attempt == self._alert_after:
                pending.append(
                    self._transition(
                        record,
                        TransitionKind.ALERT,
                        step.name,
                        f"{record.attempt} attempts failed; still retrying: {error_text}",
                    )
                )
                _log.error(
                    "saga step keeps failing; still retrying",
                    saga=definition.name,
                    saga_id=record.saga_id,
                    step=step.name,
                    compensating=compensating,
                    attempts=record.attempt,
                    error=error_text,
                )
            delay = self._delay(record.attempt, step, forever, error)
            record.attempt += 1
            if not compensating:
                # While compensating, ``error`` keeps why the saga failed.
                record.error = error_text
            return delay
        # The step failed for good: undo the completed steps, newest first.
        pending.append(self._transition(record, TransitionKind.STEP_FAILED, step.name, error_text))
        record.state = SagaState.COMPENSATING
        record.error = error_text
        record.failed_step = step.name
        self._compensate_from(definition, record, record.position - 1, data, pending, commands)
        return 0.0

    def _completed_step(
        self,
        definition: AnyDefinition,
        record: SagaRecord,
        data: Any,
        pending: list[Transition],
        commands: list[Event],
    ) -> None:
        step = definition.order[record.position]
        pending.append(self._transition(record, TransitionKind.STEP_COMPLETED, step.name))
        record.error = None
        nxt = record.position + 1
        if nxt >= len(definition.order):
            record.state = SagaState.COMPLETED
            record.attempt = 1
            pending.append(self._transition(record, TransitionKind.COMPLETED, None))
            return
        self._enter(definition, record, nxt, data, pending, commands)

    def _compensated_step(
        self,
        definition: AnyDefinition,
        record: SagaRecord,
        data: Any,
        pending: list[Transition],
        commands: list[Event],
    ) -> None:
        step = definition.order[record.position]
        pending.append(self._transition(record, TransitionKind.COMPENSATION_COMPLETED, step.name))
        self._compensate_from(definition, record, record.position - 1, data, pending, commands)

    def _compensate_from(
        self,
        definition: AnyDefinition,
        record: SagaRecord,
        index: int,
        data: Any,
        pending: list[Transition],
        commands: list[Event],
    ) -> None:
        # Pivot-free prefix only: read-only steps have nothing to undo.
        while index >= 0 and not definition.order[index].compensable:
            index -= 1
        if index < 0:
            record.state = SagaState.COMPENSATED
            record.attempt = 1
            pending.append(self._transition(record, TransitionKind.COMPENSATED, None))
            return
        self._enter(definition, record, index, data, pending, commands)

    def _enter(
        self,
        definition: AnyDefinition,
        record: SagaRecord,
        index: int,
        data: Any,
        pending: list[Transition],
        commands: list[Event],
        *,
        fresh: bool = True,
    ) -> None:
        """Move to step ``index`` (forward or compensating, by the record's state); a
        command step's command joins this transition's transaction."""
        step = definition.order[index]
        compensating = record.state is SagaState.COMPENSATING
        record.position = index
        if fresh:
            record.attempt = 1
            kind = (
                TransitionKind.COMPENSATION_STARTED if compensating else TransitionKind.STEP_STARTED
            )
            pending.append(self._transition(record, kind, step.name))
        build = step.compensation_command if compensating else step.command
        if build is None:
            return
        ctx = StepContext(
            record.saga_id, definition.name, step.name, record.attempt, data, compensating
        )
        command = build(ctx)
        command.headers[SAGA_ID] = record.saga_id
        command.headers[SAGA_STEP] = step.name
        command.headers[SAGA_ATTEMPT] = str(record.attempt)
        command.headers[SAGA_COMPENSATION] = "1" if compensating else "0"
        if command.correlation_id is None:
            command.correlation_id = record.saga_id
        commands.append(command)
        record.awaiting = True
        pending.append(self._transition(record, TransitionKind.COMMAND_SENT, step.name))

    def _transition(
        self, record: SagaRecord, kind: TransitionKind, step: str | None, error: str | None = None
    ) -> Transition:
        record.transitions += 1
        return Transition(
            record.saga_id, record.transitions, kind, step, record.attempt, error, self._clock.now()
        )

    async def _commit(
        self, record: SagaRecord, data: Any, pending: list[Transition], commands: list[Event]
    ) -> None:
        record.data = msgspec.json.encode(data)
        record.updated_at = self._clock.now()
        await self._writer.write(PendingWrite(record, pending, commands))
        self._committed(record, pending)

    def _committed(self, record: SagaRecord, pending: Sequence[Transition]) -> None:
        if self.events.has_listeners:
            for t in pending:
                self.events.emit(
                    SagaEvent(
                        t.kind, t.saga_id, record.name, record.state, t.step, t.attempt, t.error
                    )
                )
        if self._on_commit is not None:
            self._on_commit(record, pending)


def _may_retry(retry: Retry | None, attempt: int, error: BaseException | None) -> bool:
    """Whether the step's ``Retry`` would try again after failed attempt ``attempt``."""
    if retry is None or attempt >= retry.max_attempts:
        return False
    if error is None:
        return True  # a failure reply from a participant: no exception to filter on
    return retry._retry_on(error) and not retry._give_up_on(error)


def _is_database(log: object) -> bool:
    # A SagaLog has ``unfinished``; a Database does not.
    return not hasattr(log, "unfinished")
