"""Prove a saga: every step failing, and the orchestrator dying at every commit.

:class:`SagaHarness` runs a saga definition on a fake clock (backoffs and timeouts skip
ahead) once per step with that step failing for good, and once per crash point: the
orchestrator is stopped dead right after its n-th committed transition, a fresh
orchestrator recovers from the saga log, and the saga is driven to its end. After every
run the user's invariants are checked (stock and money conserved, the order CONFIRMED
or CANCELLED, ...).

Crashes are simulated in process by default (a ``BaseException`` from the commit hook,
so nothing after the commit runs). For real crashes pass ``spawn=``: each run happens in
a child process that SIGKILLs itself after the n-th commit (see :func:`child_main`), and
recovery runs in another fresh child.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, TypeVar

import msgspec

from shipyard.core import Clock, ManualClock, validation
from shipyard.saga.definition import Action, SagaDefinition, Step, StepContext
from shipyard.saga.errors import SagaError
from shipyard.saga.orchestrator import Orchestrator
from shipyard.saga.record import SagaRecord, SagaState, Transition
from shipyard.storage import Database

D = TypeVar("D", bound=msgspec.Struct)

PLAN_ENV = "SHIPYARD_SAGA_PLAN"
"""Environment variable carrying the :class:`RunPlan` (JSON) to a child process."""
HARNESS_OWNER = "saga-harness"
"""The lease owner of every orchestrator the harness starts (unless options name one)."""
COMMITS_MARKER = "SHIPYARD_SAGA_COMMITS"
"""A child prints ``SHIPYARD_SAGA_COMMITS <n>`` after a run that was not crashed."""

Invariant = Callable[[SagaRecord], Awaitable[None] | None]
"""Raises ``AssertionError`` when the world is wrong after the saga ``record`` finished."""
Prepare = Callable[["RunPlan"], Awaitable[Database]]
"""Resets the participants for a run and opens a fresh saga log database for it."""
Spawn = Callable[["RunPlan", str], Awaitable[tuple[int, str]]]
"""Runs ``child_main`` in a new process for ``(plan, phase)`` (phase ``"run"`` or
``"recover"``) with :data:`PLAN_ENV` set from ``plan.to_env()``; returns its exit status
and standard output."""


class InjectedFailure(SagaError, RuntimeError):
    """Raised by a step the harness makes fail (expected; not a bug in the saga)."""


class SimulatedCrash(BaseException):
    """Stops the orchestrator dead in process (a ``BaseException``: nothing catches it)."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """One harness run: which step fails, how often compensations fail first, and after
    which commit the orchestrator dies (``None``: it does not)."""

    label: str
    saga_id: str
    fail_step: str | None = None
    compensation_failures: int = 0
    crash_after: int | None = None

    def to_env(self) -> dict[str, str]:
        """Environment for a child process running this plan."""
        return {PLAN_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> RunPlan:
        """The plan a parent passed in :data:`PLAN_ENV`."""
        return cls(**json.loads(os.environ[PLAN_ENV]))


@dataclass(slots=True)
class RunResult:
    """What one run ended with, and any invariant it broke."""

    plan: RunPlan
    record: SagaRecord | None
    timeline: list[Transition] = field(default_factory=list)
    commits: int = 0
    crashed: bool = False
    problem: str | None = None


@dataclass(slots=True)
class HarnessReport:
    """Every run of a harness; ``failures`` are the runs whose invariants broke."""

    results: list[RunResult]

    @property
    def failures(self) -> list[RunResult]:
        """Runs that broke an invariant (or did not finish)."""
        return [r for r in self.results if r.problem is not None]

    @property
    def crash_runs(self) -> list[RunResult]:
        """Runs in which the orchestrator was killed."""
        return [r for r in self.results if r.crashed]

    def raise_for_failures(self) -> None:
        """``AssertionError`` listing every failed run."""
        if self.failures:
            lines = [f"{len(self.failures)} of {len(self.results)} saga runs broke invariants:"]
            lines += [f"  {r.plan.label}: {r.problem}" for r in self.failures]
            raise AssertionError("\n".join(lines))


def inject_failures(definition: SagaDefinition[D], plan: RunPlan) -> SagaDefinition[D]:
    """``definition`` with ``plan.fail_step`` failing on every attempt (a step after the
    pivot fails its first two attempts only, since it is retried until it succeeds) and
    every compensation failing its first ``plan.compensation_failures`` attempts."""
    failures: dict[str, int] = {}

    def wrap(step: Step[D], fn: Action[D] | None, compensating: bool) -> Action[D] | None:
        if fn is None:
            return None
        call = fn
        index = definition.order.index(step)
        if compensating:
            budget = plan.compensation_failures
        elif step.name == plan.fail_step:
            budget = 2 if definition.is_retriable(index) else -1
        else:
            return fn
        key = f"{step.name}:{compensating}"

        async def failing(ctx: StepContext[D]) -> D | None:
            seen = failures.get(key, 0)
            if budget < 0 or seen < budget:
                failures[key] = seen + 1
                what = "compensation" if compensating else "step"
                raise InjectedFailure(f"injected failure of {what} {step.name!r}")
            return await call(ctx)

        return failing

    steps = [
        replace(
            step,
            action=wrap(step, step.action, False),
            compensation=wrap(step, step.compensation, True),
        )
        for step in definition.order
    ]
    return definition.replace_steps(steps)


class SagaHarness(Generic[D]):
    """Runs ``definition`` through every failure and crash scenario.

    ``data(saga_id)`` builds the saga's input; ``prepare(plan)`` resets the participants
    and returns a fresh saga log database for the run (the harness closes it);
    ``invariants`` are checked after each run with the final record.
    ``compensation_failures`` makes every compensation fail that often before it
    succeeds (exercising their retries). ``orchestrator_options`` go to each
    :class:`Orchestrator` (e.g. ``alert_after``).
    """

    def __init__(
        self,
        definition: SagaDefinition[D],
        *,
        data: Callable[[str], D],
        prepare: Prepare,
        invariants: Sequence[Invariant],
        compensation_failures: int = 1,
        clock_factory: Callable[[], Clock] = ManualClock,
        orchestrator_options: dict[str, Any] | None = None,
    ) -> None:
        self.definition = definition
        self._data = data
        self._prepare = prepare
        self._invariants = list(invariants)
        self._compensation_failures = compensation_failures
        self._clock_factory = clock_factory
        # One owner for every orchestrator of a run, so recovery may take the crashed
        # one's leases at once (as a restarted process with a stable owner id does).
        self._options = {"owner": HARNESS_OWNER, **(orchestrator_options or {})}

    def scenarios(self) -> list[RunPlan]:
        """The happy path, then each step failing (no crashes yet)."""
        plans = [RunPlan("happy path", "happy")]
        for step in self.definition.order:
            plans.append(
                RunPlan(
                    f"{step.name} fails",
                    f"fail-{step.name}",
                    fail_step=step.name,
                    compensation_failures=self._compensation_failures,
                )
            )
        return plans

    async def run(
        self, *, spawn: Spawn | None = None, crashes: bool = True, concurrency: int = 1
    ) -> HarnessReport:
        """Every scenario once without a crash and (``crashes=True``) once per crash point.

        With ``spawn`` each run happens in child processes killed with SIGKILL.
        ``concurrency`` runs that many at once — only when ``prepare`` gives every run
        its own participants (the saga ids differ per run).
        """
        validation.at_least("concurrency", concurrency, 1)
        gate = asyncio.Semaphore(concurrency)

        async def limited(plan: RunPlan) -> RunResult:
            async with gate:
                return await self._run_one(plan, spawn)

        clean_runs = await asyncio.gather(*(limited(plan) for plan in self.scenarios()))
        crash_plans: list[RunPlan] = []
        for clean in clean_runs:
            if not crashes or clean.record is None:
                continue
            crash_plans += [
                replace(
                    clean.plan,
                    label=f"{clean.plan.label}, crash after commit {n}",
                    saga_id=f"{clean.plan.saga_id}-crash-{n}",
                    crash_after=n,
                )
                for n in range(1, clean.commits)
            ]
        crash_runs = await asyncio.gather(*(limited(plan) for plan in crash_plans))
        return HarnessReport([*clean_runs, *crash_runs])

    async def _run_one(self, plan: RunPlan, spawn: Spawn | None) -> RunResult:
        db = await self._prepare(plan)
        try:
            if spawn is None:
                commits, crashed = await self._in_process(db, plan)
            else:
                commits, crashed = await self._in_children(plan, spawn)
            result = RunResult(plan, None, commits=commits, crashed=crashed)
            orchestrator = Orchestrator(db)
            try:
                result.record = await orchestrator.log.get(plan.saga_id)
                result.timeline = await orchestrator.log.timeline(plan.saga_id)
            except LookupError:
                result.problem = "the saga is not in the log"
                return result
            if not result.record.state.finished:
                result.problem = f"the saga did not finish: {result.record.state}"
                return result
            result.problem = self._unexpected(plan, result.record)
            if result.problem is not None:
                return result
            for invariant in self._invariants:
                try:
                    outcome = invariant(result.record)
                    if inspect.isawaitable(outcome):
                        await outcome
                except AssertionError as error:
                    result.problem = f"invariant {_name(invariant)} broken: {error}"
                    break
            return result
        finally:
            await db.close()

    def _unexpected(self, plan: RunPlan, record: SagaRecord) -> str | None:
        """The built-in invariant: the saga ends the way its plan says it must."""
        fails = plan.fail_step
        if fails is None or self.definition.is_retriable(
            self.definition.order.index(self.definition.step(fails))
        ):
            if record.state is not SagaState.COMPLETED:
                return f"expected COMPLETED, got {record.state} ({record.error})"
            return None
        if record.state is not SagaState.COMPENSATED or record.failed_step != fails:
            return (
                f"expected COMPENSATED after {fails!r} failed, got {record.state} "
                f"(failed step {record.failed_step!r}: {record.error})"
            )
        return None

    async def _in_process(self, db: Database, plan: RunPlan) -> tuple[int, bool]:
        definition = inject_failures(self.definition, plan)
        commits = 0

        def count(record: SagaRecord, transitions: Sequence[Transition]) -> None:
            nonlocal commits
            commits += 1
            if commits == plan.crash_after:
                raise SimulatedCrash(f"orchestrator killed after commit {commits}")

        clock = self._clock_factory()
        first = Orchestrator(db, clock=clock, on_commit=count, **self._options)
        first.register(definition)
        await first.install()
        try:
            await first.execute(definition, self._data(plan.saga_id), saga_id=plan.saga_id)
        except SimulatedCrash:
            # A fresh orchestrator over the same log: nothing survives but what committed.
            second = Orchestrator(db, clock=clock, **self._options)
            second.register(inject_failures(self.definition, plan))
            await second.recover()
            return commits, True
        return commits, False

    async def _in_children(self, plan: RunPlan, spawn: Spawn) -> tuple[int, bool]:
        status, output = await spawn(plan, "run")
        if plan.crash_after is None:
            if status != 0:
                raise AssertionError(f"child run of {plan.label} failed ({status}):\n{output}")
            return _commits(output), False
        if status != -signal.SIGKILL:
            raise AssertionError(
                f"child of {plan.label} was not killed at commit {plan.crash_after} "
                f"(exit status {status}):\n{output}"
            )
        status, output = await spawn(plan, "recover")
        if status != 0:
            raise AssertionError(f"recovery of {plan.label} failed ({status}):\n{output}")
        return plan.crash_after, True


def _commits(output: str) -> int:
    for line in output.splitlines():
        if line.startswith(COMMITS_MARKER):
            return int(line.split()[1])
    raise AssertionError(f"the child printed no {COMMITS_MARKER} line:\n{output}")


def _name(invariant: Invariant) -> str:
    return getattr(invariant, "__name__", repr(invariant))


async def child_main(
    definition: SagaDefinition[D],
    db: Database,
    data: Callable[[str], D],
    phase: str,
    *,
    clock: Clock | None = None,
    orchestrator_options: dict[str, Any] | None = None,
) -> None:
    """Run the :data:`PLAN_ENV` plan in this process: ``phase="run"`` starts the saga and
    SIGKILLs the process right after commit ``crash_after``; ``phase="recover"`` recovers
    every unfinished saga. Prints :data:`COMMITS_MARKER` after an uncrashed run."""
    plan = RunPlan.from_env()
    options = {"owner": HARNESS_OWNER, **(orchestrator_options or {})}
    commits = 0

    def count(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        nonlocal commits
        commits += 1
        if phase == "run" and commits == plan.crash_after:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # no finally blocks, no flush, no goodbye

    orchestrator = Orchestrator(db, clock=clock or ManualClock(), on_commit=count, **options)
    orchestrator.register(inject_failures(definition, plan))
    await orchestrator.install()
    if phase == "run":
        await orchestrator.execute(definition.name, data(plan.saga_id), saga_id=plan.saga_id)
    else:
        await orchestrator.recover()
    print(f"{COMMITS_MARKER} {commits}", flush=True)
