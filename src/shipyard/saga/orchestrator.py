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

Reply timeouts. A command step with ``timeout=`` waits that long for its reply. The
deadline is stored with the transition that sends the command, so an orchestrator that
restarts (or takes the saga over) re-arms it from the log. When it passes, the attempt
fails with :class:`ReplyTimeoutError`: the step's retry sends the command again as the
next attempt (a late reply to the timed-out attempt is then stale and ignored), or the
saga compensates — starting with the timed-out step itself, since its participant may
have acted without the reply reaching us (compensations must tolerate "never done").

Leases. Several orchestrators may share one saga log: each unfinished saga's row names
its ``owner`` and ``lease_until``. An orchestrator writes a saga only while it holds the
lease (every write renews it; :meth:`Orchestrator.start_heartbeat` renews the leases of
sagas in long steps or awaiting replies, and takes over sagas whose lease expired —
those of a dead orchestrator — without a restart). A saga awaiting a reply is driven by
nobody, so whichever orchestrator receives the reply (or sees its deadline pass) takes
the lease and moves it on.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, EventPublisher, get_logger, validation
from shipyard.core.clock import TimerHandle
from shipyard.messaging import Event, Outbox, install_schema
from shipyard.resilience import Backoff, Retry, Timeout, backoff_delay
from shipyard.saga.definition import SagaDefinition, Step, StepContext
from shipyard.saga.errors import (
    LeaseLostError,
    ReplyTimeoutError,
    SagaDefinitionError,
    SagaVersionMismatchError,
    UnknownSagaError,
)
from shipyard.saga.record import SagaRecord, SagaState, StepFailure, Transition, TransitionKind
from shipyard.saga.reply import SAGA_ATTEMPT, SAGA_COMPENSATION, SAGA_ID, SAGA_STEP, StepReply
from shipyard.saga.store import SagaLog, saga_log_for
from shipyard.saga.writes import PendingWrite, saga_writer
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
    ``alert_after`` failures. ``clock`` drives every backoff, step timeout, reply
    deadline and lease.

    ``owner`` names this orchestrator in the saga log's leases. The default, the host
    name, is stable across restarts, so a restarted orchestrator's ``recover()`` resumes
    its predecessor's sagas at once, as with a single orchestrator. Processes sharing one
    log must each pass their own stable ``owner`` (a pod name) and call
    :meth:`start_heartbeat`: then each saga is driven by one of them, and another takes
    over a dead one's sagas after ``lease`` seconds without renewal.
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
        owner: str | None = None,
        lease: float = 30.0,
    ) -> None:
        self.log: SagaLog = (
            saga_log_for(cast(Database, log)) if _is_database(log) else cast(SagaLog, log)
        )
        self._db = self.log.db
        self._outbox = outbox
        self._backoff = Backoff.checked(
            "backoff_base", backoff_base, "backoff_max", backoff_max, random_source
        )
        self._alert_after = validation.at_least("alert_after", alert_after, 1)
        self._clock = clock
        self._on_commit = on_commit
        self._random = random_source
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ConfigError("owner", owner, "must be a non-empty string")
        self.owner = owner or socket.gethostname() or "orchestrator"
        """This orchestrator's name in the saga log's leases."""
        self._lease = validation.positive("lease", lease)
        self._timers: dict[str, TimerHandle] = {}
        self._heartbeat: TimerHandle | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._definitions: dict[tuple[str, int], AnyDefinition] = {}
        self._latest: dict[str, AnyDefinition] = {}
        self._timeouts: dict[int, Timeout] = {}
        self._tasks: dict[str, asyncio.Task[SagaRecord]] = {}
        self._writer = saga_writer(self._db, self.log, outbox)
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
        if record.owner != self.owner or record.lease_until is None:
            return await self.resume(saga_id)  # started before (maybe by another)
        return await self._drive_once(definition, record, data)

    async def start(
        self, saga: str | AnyDefinition, data: msgspec.Struct, *, saga_id: str | None = None
    ) -> str:
        """Persist a new saga and run it in the background; returns its id at once
        (after the first transition committed)."""
        definition = self._resolve(saga)
        saga_id = saga_id or str(uuid.uuid4())
        record = await self._create(definition, saga_id, data)
        if record.owner != self.owner or record.lease_until is None:
            # Started before, maybe by another orchestrator: drive it only if ours now.
            now = self._clock.now()
            claimed = await self.log.claim(saga_id, self.owner, now + self._lease, now)
            if claimed is None:
                return saga_id
            record = claimed
        self._resume_later(record)
        return saga_id

    async def resume(self, saga_id: str) -> SagaRecord:
        """Drive one saga on from its last committed transition, after taking its lease;
        a saga whose lease another live orchestrator holds is returned as it stands."""
        record = await self.log.get(saga_id)
        if record.state.finished:
            return record
        definition = self._definition_of(record)
        if saga_id in self._tasks:
            return await self._drive_once(definition, record, None)
        now = self._clock.now()
        claimed = await self.log.claim(saga_id, self.owner, now + self._lease, now)
        if claimed is None:
            return await self.log.get(saga_id)
        if claimed.awaiting:
            self._arm(claimed)
            return claimed
        return await self._drive_once(definition, claimed, definition.decode(claimed.data))

    async def recover(self) -> list[SagaRecord]:
        """Resume every unfinished saga of the log that is unowned, this orchestrator's,
        or whose lease expired (concurrently); returns their records as they stand
        afterwards (finished, waiting for a reply, or held by another orchestrator)."""
        unfinished = await self.log.unfinished()
        return list(await asyncio.gather(*(self.resume(r.saga_id) for r in unfinished)))

    async def heartbeat(self) -> list[str]:
        """Renew this orchestrator's leases, then take over every unfinished saga that is
        unowned or whose lease expired (they run in the background); returns their ids."""
        now = self._clock.now()
        await self.log.renew(self.owner, now + self._lease)
        taken: list[str] = []
        for record in await self.log.claimable(self.owner, now):
            claimed = await self.log.claim(record.saga_id, self.owner, now + self._lease, now)
            if claimed is None:
                continue  # another orchestrator was quicker
            _log.info("saga taken over", saga_id=claimed.saga_id, previous_owner=record.owner)
            taken.append(claimed.saga_id)
            self._resume_later(claimed)
        return taken

    def start_heartbeat(self, every: float | None = None) -> None:
        """Run :meth:`heartbeat` every ``every`` seconds on the clock (default: a third of
        the lease) until :meth:`close`. Needed when orchestrators share a saga log;
        calling it again while it runs changes nothing."""
        if self._heartbeat is not None:
            return
        interval = self._lease / 3 if every is None else validation.positive("every", every)
        if interval >= self._lease:
            raise ConfigError("every", every, f"must be shorter than the lease ({self._lease}s)")

        previous: asyncio.Task[Any] | None = None

        async def after(earlier: asyncio.Task[Any] | None) -> None:
            if earlier is not None:
                await asyncio.wait([earlier])  # a slow beat delays the next, never doubles it
            await self.heartbeat()

        def beat() -> None:
            nonlocal previous
            # Re-armed at once, so beats keep to the clock however long each one takes.
            self._heartbeat = self._clock.call_later(interval, beat)
            previous = self._background(after(previous))

        self._heartbeat = self._clock.call_later(interval, beat)

    async def wait(self, saga_id: str) -> SagaRecord:
        """Wait for the saga's background run (if any) and return its record."""
        task = self._tasks.get(saga_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.log.get(saga_id)

    async def close(self, *, release: bool = True) -> None:
        """Cancel background runs, reply timers and the heartbeat; with ``release`` give
        up this orchestrator's leases so others resume its sagas at once (without, they
        wait for the leases to expire — as after a crash)."""
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = [*self._tasks.values(), *self._side_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if release:
            await self.log.release(self.owner)

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
        claimed = await self._claim_awaiting(tx, record)
        if claimed is None:
            return  # timed out or answered meanwhile
        record = claimed
        data = definition.decode(record.data)
        if reply.data:
            merged = {**msgspec.to_builtins(data), **reply.data}
            data = msgspec.convert(merged, definition.data_type)
        record.awaiting = False
        record.deadline = None
        pending: list[Transition] = []
        commands: list[Event] = []
        if reply.ok:
            if compensating:
                self._compensated_step(definition, record, data, pending, commands)
            else:
                self._completed_step(definition, record, data, pending, commands)
        else:
            # Stored as "<type>: <message>" like a raised error, so StepFailure can split it.
            error = f"StepRejected: {reply.error or 'participant replied with a failure'}"
            self._failed_attempt(definition, record, step, error, pending, commands, data)
        await self._save_outcome(tx, definition, record, data, pending, commands)

    # -- reply deadlines ---------------------------------------------------------------

    def _arm(self, record: SagaRecord) -> None:
        """Start (or restart) the timer of the reply ``record`` waits for, if it has a
        deadline; a deadline already past is handled at once."""
        old = self._timers.pop(record.saga_id, None)
        if old is not None:
            old.cancel()
        if not record.awaiting or record.deadline is None or record.state.finished:
            return
        saga_id, state, position, attempt = (
            record.saga_id,
            record.state,
            record.position,
            record.attempt,
        )

        def expire() -> None:
            self._timers.pop(saga_id, None)
            self._background(self._time_out(saga_id, state, position, attempt))

        delay = record.deadline - self._clock.now()
        if delay <= 0:
            expire()
        else:
            self._timers[saga_id] = self._clock.call_later(delay, expire)

    async def _time_out(self, saga_id: str, state: SagaState, position: int, attempt: int) -> None:
        """The awaited reply did not come in time: fail the attempt (retry or compensate)."""
        async with self._db.transaction() as tx:
            now = self._clock.now()
            record = await self.log.claim_awaiting(
                tx,
                saga_id,
                self.owner,
                now + self._lease,
                state=state,
                position=position,
                attempt=attempt,
            )
            if record is None or record.deadline is None:
                return  # the reply came first
            if record.deadline > now:
                self._arm(record)  # fired early by another orchestrator's clock: wait on
                return
            definition = self._definition_of(record)
            step = definition.order[record.position]
            timeout = step.timeout if step.timeout is not None else 0.0
            error = ReplyTimeoutError(saga_id, step.name, attempt, timeout)
            data = definition.decode(record.data)
            record.awaiting = False
            record.deadline = None
            pending: list[Transition] = []
            commands: list[Event] = []
            self._failed_attempt(
                definition,
                record,
                step,
                _describe(error),
                pending,
                commands,
                data,
                error,
                uncertain=True,
            )
            await self._save_outcome(tx, definition, record, data, pending, commands)

    async def _claim_awaiting(self, tx: Transaction, record: SagaRecord) -> SagaRecord | None:
        return await self.log.claim_awaiting(
            tx,
            record.saga_id,
            self.owner,
            self._clock.now() + self._lease,
            state=record.state,
            position=record.position,
            attempt=record.attempt,
        )

    async def _save_outcome(
        self,
        tx: Transaction,
        definition: AnyDefinition,
        record: SagaRecord,
        data: Any,
        pending: list[Transition],
        commands: list[Event],
    ) -> None:
        """Write a reply's (or a timeout's) transition in ``tx``; drive on after commit."""
        record.data = msgspec.json.encode(data)
        record.updated_at = self._clock.now()
        record.lease_until = record.updated_at + self._lease
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

    def _resume_later(self, record: SagaRecord) -> None:
        """Drive a saga this orchestrator holds in the background (or arm its timer)."""
        if record.state.finished:
            return
        if record.awaiting:
            self._arm(record)
            return
        definition = self._definition_of(record)
        self._spawn(definition, record, definition.decode(record.data))

    def _background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)
        return task

    def _side_done(self, task: asyncio.Task[Any]) -> None:
        self._side_tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, Exception):
            _log.error("saga timer or heartbeat failed", error=_describe(error))

    def _forget(self, task: asyncio.Task[SagaRecord]) -> None:
        for saga_id, running in list(self._tasks.items()):
            if running is task:
                del self._tasks[saga_id]
        error = None if task.cancelled() else task.exception()
        if isinstance(error, LeaseLostError):
            _log.warning("saga taken over by another orchestrator", error=str(error))
        elif isinstance(error, Exception):
            _log.error("saga run stopped; recover() resumes it", error=_describe(error))

    async def _drive_once(
        self, definition: AnyDefinition, record: SagaRecord, data: Any
    ) -> SagaRecord:
        running = self._tasks.get(record.saga_id)
        if running is not None:
            await asyncio.shield(running)
            return await self.log.get(record.saga_id)
        try:
            return await self._drive(definition, record, data)
        except LeaseLostError:
            # Another orchestrator took the saga over: it is theirs to finish.
            return await self.log.get(record.saga_id)

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
            owner=self.owner,
            lease_until=now + self._lease,
        )
        pending = [self._transition(record, TransitionKind.STARTED, None)]
        commands: list[Event] = []
        self._enter(definition, record, 0, data, pending, commands)
        existing = await self._writer.submit(PendingWrite(record, pending, commands, create=True))
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
                failure=_failure(record, step.name, compensating),
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
            delay = self._backoff.delay(attempt)
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
        *,
        uncertain: bool = False,
    ) -> float:
        """Record a failed attempt; returns the backoff before the next one (0: none).

        ``uncertain``: the participant may have acted (its reply timed out), so if the
        saga compensates, the step itself is compensated too."""
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
        first = record.position if uncertain else record.position - 1
        self._compensate_from(definition, record, first, data, pending, commands)
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
        record.deadline = None
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
            record.saga_id,
            definition.name,
            step.name,
            record.attempt,
            data,
            compensating,
            _failure(record, step.name, compensating),
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
        if step.timeout is not None:
            # Stored with this transition: whoever drives the saga next re-arms it.
            record.deadline = self._clock.now() + step.timeout
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
        record.lease_until = record.updated_at + self._lease
        await self._writer.submit(PendingWrite(record, pending, commands))
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
        if record.deadline is not None or record.saga_id in self._timers:
            self._arm(record)  # arms the new deadline; an answered one's timer is dropped


def _failure(record: SagaRecord, step: str, compensating: bool) -> StepFailure | None:
    """What a step's context reports as the failure (see ``StepContext.failure``)."""
    if record.error is None:
        return None
    if compensating:
        return StepFailure.parse(record.failed_step or step, record.error)
    if record.attempt > 1:  # the previous attempt's error, kept until the step completes
        return StepFailure.parse(step, record.error)
    return None


def _may_retry(retry: Retry | None, attempt: int, error: BaseException | None) -> bool:
    """Whether the step's ``Retry`` would try again after failed attempt ``attempt``."""
    if retry is None or attempt >= retry.max_attempts:
        return False
    if error is None:
        return True  # a failure reply from a participant: no exception to filter on
    return retry.should_retry(error, attempt=attempt)


def _is_database(log: object) -> bool:
    # A SagaLog has ``unfinished``; a Database does not.
    return not hasattr(log, "unfinished")
