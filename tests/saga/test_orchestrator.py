"""The orchestrator runs steps in order, persists every transition, compensates in
reverse, retries on the fake clock, and picks up where it stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import pytest

from shipyard.core import ConfigError, ManualClock
from shipyard.resilience import Retry
from shipyard.saga import (
    Orchestrator,
    SagaDefinition,
    SagaEvent,
    SagaRecord,
    SagaState,
    SagaVersionMismatchError,
    Step,
    StepContext,
    Transition,
    TransitionKind,
    UnknownSagaError,
)
from shipyard.storage import Database


class Trip(msgspec.Struct):
    trip_id: str
    booked: list[str] = []


class Crash(BaseException):
    pass


class Agency:
    """Participants that record every call and fail on demand."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, int] = {}  # step -> failures left (-1: always)
        self.hang: set[str] = set()
        self.hanging = asyncio.Event()

    def action(self, name: str, undo: bool = False) -> object:
        label = f"{'undo ' if undo else ''}{name}"

        async def call(ctx: StepContext[Trip]) -> Trip | None:
            self.calls.append(f"{label}#{ctx.attempt}")
            if label in self.hang:
                self.hanging.set()
                await asyncio.Event().wait()
            left = self.fail.get(label, 0)
            if left:
                self.fail[label] = left - 1 if left > 0 else -1
                raise ConnectionError(f"{label} is down")
            if undo:
                return None
            return msgspec.structs.replace(ctx.data, booked=[*ctx.data.booked, name])

        return call


def trip_saga(agency: Agency, *, version: int = 1, **step_options: object) -> SagaDefinition[Trip]:
    def step(name: str, **options: object) -> Step[Trip]:
        merged = {**step_options.get(name, {}), **options}  # type: ignore[dict-item]
        return Step(name, agency.action(name), **merged)  # type: ignore[arg-type]

    return SagaDefinition(
        "trip",
        [
            step("flight", compensation=agency.action("flight", undo=True)),
            step("hotel", compensation=agency.action("hotel", undo=True)),
            step("check_visa", read_only=True),
            step("car", compensation=agency.action("car", undo=True)),
            step("ticket", pivot=True),
            step("email"),
        ],
        data_type=Trip,
        version=version,
    )


def kinds(timeline: Sequence[Transition]) -> list[str]:
    return [f"{t.kind.value}:{t.step}" if t.step else t.kind.value for t in timeline]


async def orchestrator(
    db: Database, *definitions: SagaDefinition[Trip], **options: object
) -> Orchestrator:
    options.setdefault("clock", ManualClock())
    orch = Orchestrator(db, **options)  # type: ignore[arg-type]
    orch.register(*definitions)
    await orch.install()
    return orch


async def test_a_saga_runs_every_step_in_order_and_completes(log_db: Database) -> None:
    agency = Agency()
    orch = await orchestrator(log_db, trip_saga(agency))
    record = await orch.execute("trip", Trip("t-1"), saga_id="t-1")
    assert record.state is SagaState.COMPLETED
    assert agency.calls == ["flight#1", "hotel#1", "check_visa#1", "car#1", "ticket#1", "email#1"]
    stored = await orch.log.get("t-1")
    assert msgspec.json.decode(stored.data, type=Trip).booked == [
        "flight",
        "hotel",
        "check_visa",
        "car",
        "ticket",
        "email",
    ]
    assert kinds(await orch.log.timeline("t-1"))[:3] == [
        "started",
        "step_started:flight",
        "step_completed:flight",
    ]


async def test_a_failed_step_compensates_completed_steps_in_reverse_order(
    log_db: Database,
) -> None:
    agency = Agency()
    agency.fail["car"] = -1
    orch = await orchestrator(log_db, trip_saga(agency))
    record = await orch.execute("trip", Trip("t-1"), saga_id="t-1")
    assert record.state is SagaState.COMPENSATED
    assert record.failed_step == "car"
    assert "car is down" in (record.error or "")
    # check_visa is read-only: nothing to undo there.
    assert agency.calls[4:] == ["undo hotel#1", "undo flight#1"]
    assert kinds(await orch.log.timeline("t-1"))[-6:] == [
        "step_failed:car",
        "compensation_started:hotel",
        "compensation_completed:hotel",
        "compensation_started:flight",
        "compensation_completed:flight",
        "compensated",
    ]


async def test_a_step_retries_with_backoff_on_the_fake_clock_before_failing() -> None:
    clock = ManualClock()
    agency = Agency()
    agency.fail["hotel"] = 2
    retry = Retry(max_attempts=3, base_delay=1.0, jitter=None, clock=clock)
    saga = trip_saga(agency, hotel={"retry": retry})
    db = await _memory_db()
    orch = await orchestrator(db, saga, clock=clock)
    record = await orch.execute("trip", Trip("t-1"), saga_id="t-1")
    assert record.state is SagaState.COMPLETED
    assert agency.calls[1:4] == ["hotel#1", "hotel#2", "hotel#3"]
    assert clock.slept == [1.0, 2.0]
    failed = [
        t for t in await orch.log.timeline("t-1") if t.kind is TransitionKind.STEP_ATTEMPT_FAILED
    ]
    assert [(t.step, t.attempt) for t in failed] == [("hotel", 1), ("hotel", 2)]
    await db.close()


async def test_a_step_that_exhausts_its_retries_fails_the_saga() -> None:
    agency = Agency()
    agency.fail["hotel"] = -1
    saga = trip_saga(agency, hotel={"retry": Retry(max_attempts=2, clock=ManualClock())})
    db = await _memory_db()
    orch = await orchestrator(db, saga)
    record = await orch.execute("trip", Trip("t-1"))
    assert (record.state, record.failed_step) == (SagaState.COMPENSATED, "hotel")
    assert agency.calls == ["flight#1", "hotel#1", "hotel#2", "undo flight#1"]
    await db.close()


async def test_a_step_error_its_retry_would_not_retry_fails_at_once() -> None:
    agency = Agency()
    agency.fail["hotel"] = -1  # ConnectionError, which this retry does not cover
    retry = Retry(max_attempts=5, retry_on=TimeoutError, clock=ManualClock())
    db = await _memory_db()
    orch = await orchestrator(db, trip_saga(agency, hotel={"retry": retry}))
    record = await orch.execute("trip", Trip("t-1"))
    assert (record.state, record.failed_step) == (SagaState.COMPENSATED, "hotel")
    assert agency.calls == ["flight#1", "hotel#1", "undo flight#1"]
    await db.close()


async def test_a_step_attempt_that_times_out_counts_as_a_failure() -> None:
    clock = ManualClock()
    agency = Agency()
    agency.hang.add("hotel")
    saga = trip_saga(agency, hotel={"timeout": 5.0})
    db = await _memory_db()
    orch = await orchestrator(db, saga, clock=clock)
    run = asyncio.create_task(orch.execute("trip", Trip("t-1"), saga_id="t-1"))
    await agency.hanging.wait()
    clock.advance(5.0)
    record = await run
    assert (record.state, record.failed_step) == (SagaState.COMPENSATED, "hotel")
    assert "CallTimeoutError" in (record.error or "")
    await db.close()


async def test_compensations_are_retried_until_they_succeed_and_alert_after_a_limit() -> None:
    clock = ManualClock()
    agency = Agency()
    agency.fail["car"] = -1
    agency.fail["undo hotel"] = 4
    alerts: list[SagaEvent] = []
    db = await _memory_db()
    orch = await orchestrator(
        db, trip_saga(agency), clock=clock, alert_after=3, backoff_base=1.0, backoff_max=4.0
    )
    orch.events.subscribe(lambda e: alerts.append(e) if e.kind is TransitionKind.ALERT else None)
    record = await orch.execute("trip", Trip("t-1"), saga_id="t-1")
    assert record.state is SagaState.COMPENSATED
    assert [c for c in agency.calls if c.startswith("undo hotel")] == [
        f"undo hotel#{n}" for n in range(1, 6)
    ]
    assert len(clock.slept) == 4
    assert all(0.5 <= delay <= 4.0 for delay in clock.slept)
    assert [(a.step, a.attempt) for a in alerts] == [("hotel", 3)]
    assert record.error is not None
    assert "car is down" in record.error
    await db.close()


async def test_a_step_after_the_pivot_is_retried_instead_of_compensating() -> None:
    agency = Agency()
    agency.fail["email"] = 3
    db = await _memory_db()
    orch = await orchestrator(db, trip_saga(agency))
    record = await orch.execute("trip", Trip("t-1"))
    assert record.state is SagaState.COMPLETED
    assert not [c for c in agency.calls if c.startswith("undo")]
    assert agency.calls[-4:] == ["email#1", "email#2", "email#3", "email#4"]
    await db.close()


async def test_a_restarted_orchestrator_resumes_exactly_where_the_last_commit_left_it(
    log_db: Database,
) -> None:
    agency = Agency()
    commits = 0

    def crash_after_third(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        nonlocal commits
        commits += 1
        if commits == 3:
            raise Crash

    first = await orchestrator(log_db, trip_saga(agency), on_commit=crash_after_third)
    with pytest.raises(Crash):
        await first.execute("trip", Trip("t-1"), saga_id="t-1")
    assert agency.calls == ["flight#1", "hotel#1"]
    assert (await first.log.get("t-1")).state is SagaState.RUNNING
    second = await orchestrator(log_db, trip_saga(agency))
    [record] = await second.recover()
    assert record.state is SagaState.COMPLETED
    # hotel's completion had committed: the resumed saga starts at check_visa.
    assert agency.calls[2:] == ["check_visa#1", "car#1", "ticket#1", "email#1"]


async def test_recovery_resumes_a_compensation_in_progress(log_db: Database) -> None:
    agency = Agency()
    agency.fail["car"] = -1

    def crash_when_compensating(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        if any(t.kind is TransitionKind.COMPENSATION_COMPLETED for t in transitions):
            raise Crash

    first = await orchestrator(log_db, trip_saga(agency), on_commit=crash_when_compensating)
    with pytest.raises(Crash):
        await first.execute("trip", Trip("t-1"), saga_id="t-1")
    second = await orchestrator(log_db, trip_saga(agency))
    [record] = await second.recover()
    assert record.state is SagaState.COMPENSATED
    assert [c for c in agency.calls if c.startswith("undo")] == ["undo hotel#1", "undo flight#1"]


async def test_starting_twice_with_the_same_saga_id_runs_the_saga_once() -> None:
    agency = Agency()
    db = await _memory_db()
    orch = await orchestrator(db, trip_saga(agency))
    await orch.execute("trip", Trip("t-1"), saga_id="same")
    again = await orch.execute("trip", Trip("t-1"), saga_id="same")
    assert again.state is SagaState.COMPLETED
    assert agency.calls.count("flight#1") == 1
    await db.close()


async def test_in_flight_sagas_finish_on_the_version_they_started_with(log_db: Database) -> None:
    agency = Agency()
    old = trip_saga(agency, version=1)
    commits = 0

    def crash_after_first(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        nonlocal commits
        commits += 1
        if commits == 1:
            raise Crash

    first = await orchestrator(log_db, old, on_commit=crash_after_first)
    with pytest.raises(Crash):
        await first.execute("trip", Trip("t-old"), saga_id="t-old")

    new_agency = Agency()
    new = SagaDefinition(
        "trip",
        [Step("train", new_agency.action("train"), pivot=True)],
        data_type=Trip,
        version=2,
    )
    second = await orchestrator(log_db, old, new)
    [resumed] = await second.recover()
    fresh = await second.execute("trip", Trip("t-new"), saga_id="t-new")
    assert (resumed.version, resumed.state) == (1, SagaState.COMPLETED)
    assert "flight#1" in agency.calls
    assert "train#1" not in agency.calls
    assert (fresh.version, new_agency.calls) == (2, ["train#1"])


async def test_a_saga_whose_version_is_no_longer_registered_is_a_clear_error(
    log_db: Database,
) -> None:
    agency = Agency()

    def crash(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        raise Crash

    first = await orchestrator(log_db, trip_saga(agency, version=1), on_commit=crash)
    with pytest.raises(Crash):
        await first.execute("trip", Trip("t-1"), saga_id="t-1")
    second = await orchestrator(log_db, trip_saga(agency, version=2))
    with pytest.raises(UnknownSagaError, match="trip v1"):
        await second.resume("t-1")


async def test_changing_steps_without_a_new_version_is_caught_on_resume() -> None:
    agency = Agency()
    db = await _memory_db()

    def crash(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        raise Crash

    first = await orchestrator(db, trip_saga(agency), on_commit=crash)
    with pytest.raises(Crash):
        await first.execute("trip", Trip("t-1"), saga_id="t-1")
    changed = SagaDefinition(
        "trip", [Step("train", agency.action("train"), pivot=True)], data_type=Trip
    )
    second = await orchestrator(db, changed)
    with pytest.raises(SagaVersionMismatchError, match="new version"):
        await second.resume("t-1")
    await db.close()


async def test_start_returns_at_once_and_the_saga_finishes_in_the_background() -> None:
    agency = Agency()
    db = await _memory_db()
    orch = await orchestrator(db, trip_saga(agency))
    saga_id = await orch.start("trip", Trip("t-1"))
    record = await orch.wait(saga_id)
    assert record.state is SagaState.COMPLETED
    await db.close()


async def test_data_of_the_wrong_type_is_rejected_before_anything_is_stored() -> None:
    db = await _memory_db()
    orch = await orchestrator(db, trip_saga(Agency()))
    with pytest.raises(ConfigError, match="must be a Trip"):
        await orch.execute("trip", msgspec.Struct())
    assert await orch.log.list() == []
    await db.close()


async def test_orchestrator_settings_are_validated() -> None:
    db = await _memory_db()
    with pytest.raises(ConfigError, match="backoff_max"):
        Orchestrator(db, backoff_base=2.0, backoff_max=1.0)
    with pytest.raises(ConfigError, match="alert_after"):
        Orchestrator(db, alert_after=0)
    await db.close()


async def _memory_db() -> Database:
    from shipyard.storage import open_database

    return await open_database("sqlite:///:memory:")
