"""Several orchestrators share one saga log: each saga is leased to one of them, runs
exactly once, and a dead orchestrator's sagas are taken over after its lease expires."""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
import pytest

from shipyard.core import ConfigError, ManualClock
from shipyard.messaging import Event, EventRegistry, Outbox
from shipyard.saga import (
    Orchestrator,
    SagaDefinition,
    SagaRecord,
    SagaState,
    Step,
    StepContext,
    StepReply,
    Transition,
    TransitionKind,
)
from shipyard.storage import Database, open_database

LEASE = 30.0


class Parcel(msgspec.Struct):
    parcel_id: str


class Crash(BaseException):
    pass


class Depot:
    """Participants that count every call; ``hold`` makes a step wait until released."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.hold: set[str] = set()
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def action(self, name: str) -> Callable[[StepContext[Parcel]], object]:
        async def call(ctx: StepContext[Parcel]) -> None:
            self.calls[(ctx.saga_id, name)] += 1
            if name in self.hold and self.calls[(ctx.saga_id, name)] == 1:
                self.held.set()
                await self.release.wait()

        return call


def delivery(depot: Depot) -> SagaDefinition[Parcel]:
    return SagaDefinition(
        "delivery",
        [
            Step("pick", depot.action("pick"), compensation=depot.action("unpick")),  # type: ignore[arg-type]
            Step("pack", depot.action("pack"), compensation=depot.action("unpack")),  # type: ignore[arg-type]
            Step("ship", depot.action("ship"), pivot=True),  # type: ignore[arg-type]
        ],
        data_type=Parcel,
    )


@pytest.fixture
async def second_db(log_db: Database) -> AsyncIterator[Database]:
    """Another connection to the same saga log, as a second process would open."""
    db = await open_database(log_db.url)
    yield db
    await db.close()


async def orchestrator(
    db: Database, owner: str, depot: Depot, clock: ManualClock, **options: object
) -> Orchestrator:
    orch = Orchestrator(db, owner=owner, lease=LEASE, clock=clock, **options)  # type: ignore[arg-type]
    orch.register(delivery(depot))
    await orch.install()
    return orch


async def settle(predicate: Callable[[], object]) -> None:
    """Let background tasks run until ``predicate()`` holds (bounded, not timed)."""
    for _ in range(5000):
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("background work never settled")


async def completions(orch: Orchestrator, saga_id: str) -> int:
    return [t.kind for t in await orch.log.timeline(saga_id)].count(TransitionKind.COMPLETED)


async def test_two_orchestrators_recovering_one_log_run_every_saga_exactly_once(
    log_db: Database, second_db: Database
) -> None:
    clock = ManualClock()
    depot = Depot()

    def crash(record: SagaRecord, transitions: Sequence[Transition]) -> None:
        raise Crash

    dead = await orchestrator(log_db, "dead", depot, clock, on_commit=crash)
    ids = [f"d-{n}" for n in range(12)]
    for saga_id in ids:
        with pytest.raises(Crash):
            await dead.execute("delivery", Parcel(saga_id), saga_id=saga_id)
    a = await orchestrator(log_db, "a", depot, clock)
    b = await orchestrator(second_db, "b", depot, clock)

    # The dead orchestrator's leases still run: nobody touches its sagas yet.
    await asyncio.gather(a.recover(), b.recover())
    assert not depot.calls
    clock.advance(LEASE)
    await asyncio.gather(a.recover(), b.recover())

    for saga_id in ids:
        record = await a.log.get(saga_id)
        assert record.state is SagaState.COMPLETED
        assert record.owner in ("a", "b")
        assert await completions(a, saga_id) == 1
    assert set(depot.calls.values()) == {1}
    assert len(depot.calls) == 3 * len(ids)


async def test_a_killed_orchestrators_sagas_are_taken_over_after_its_lease(
    log_db: Database, second_db: Database
) -> None:
    clock = ManualClock()
    depot = Depot()
    depot.hold.add("pack")
    a = await orchestrator(log_db, "a", depot, clock)
    b = await orchestrator(second_db, "b", depot, clock)
    b.start_heartbeat()
    saga_id = await a.start("delivery", Parcel("p-1"), saga_id="p-1")
    await depot.held.wait()
    await a.close(release=False)  # killed in the middle of "pack": no cleanup

    for _ in range(2):  # b's heartbeats within a's lease leave the saga alone
        clock.advance(LEASE / 3)
        await asyncio.sleep(0.005)
    assert (await b.log.get(saga_id)).owner == "a"
    clock.advance(LEASE / 3)  # the lease has expired: b's next heartbeat takes over
    await settle(lambda: depot.calls[(saga_id, "ship")] == 1)
    record = await b.wait(saga_id)
    assert (record.state, record.owner) == (SagaState.COMPLETED, "b")
    # "pack" ran again under b (participants deduplicate on the idempotency key).
    assert depot.calls[(saga_id, "pick")] == 1
    assert depot.calls[(saga_id, "pack")] == 2
    assert await completions(b, saga_id) == 1
    await b.close()


async def test_a_live_orchestrator_keeps_its_sagas_by_renewing_its_leases(
    log_db: Database, second_db: Database
) -> None:
    clock = ManualClock()
    depot = Depot()
    depot.hold.add("pack")
    a = await orchestrator(log_db, "a", depot, clock)
    b = await orchestrator(second_db, "b", depot, clock)
    a.start_heartbeat()
    b.start_heartbeat()
    saga_id = await a.start("delivery", Parcel("p-1"), saga_id="p-1")
    await depot.held.wait()

    async def renewed() -> bool:
        return (await a.log.get(saga_id)).lease_until == clock.now() + LEASE

    for _ in range(9):  # three leases long, in heartbeat-sized steps
        clock.advance(LEASE / 3)
        await settle(renewed)
    assert (await b.log.get(saga_id)).owner == "a"
    depot.release.set()
    record = await a.wait(saga_id)
    assert (record.state, record.owner) == (SagaState.COMPLETED, "a")
    assert depot.calls[(saga_id, "pack")] == 1
    await a.close()
    await b.close()


async def test_an_orchestrator_that_lost_its_lease_stops_driving_the_saga(
    log_db: Database, second_db: Database
) -> None:
    clock = ManualClock()
    depot = Depot()
    depot.hold.add("pack")
    a = await orchestrator(log_db, "a", depot, clock)
    b = await orchestrator(second_db, "b", depot, clock)
    run = asyncio.create_task(a.execute("delivery", Parcel("p-1"), saga_id="p-1"))
    await depot.held.wait()  # a is stuck in "pack" and does not renew its lease
    clock.advance(LEASE)
    assert await b.heartbeat() == ["p-1"]
    finished = await b.wait("p-1")
    assert finished.state is SagaState.COMPLETED
    depot.release.set()  # a wakes up: its write is refused and it stops
    record = await run
    assert (record.state, record.owner) == (SagaState.COMPLETED, "b")
    assert depot.calls[("p-1", "ship")] == 1
    assert await completions(b, "p-1") == 1
    await a.close()
    await b.close()


async def test_closing_releases_the_leases_so_another_orchestrator_resumes_at_once(
    log_db: Database, second_db: Database
) -> None:
    clock = ManualClock()
    depot = Depot()
    depot.hold.add("pack")
    a = await orchestrator(log_db, "a", depot, clock)
    b = await orchestrator(second_db, "b", depot, clock)
    await a.start("delivery", Parcel("p-1"), saga_id="p-1")
    await depot.held.wait()
    await a.close()
    assert await b.heartbeat() == ["p-1"]
    assert (await b.wait("p-1")).state is SagaState.COMPLETED
    await b.close()


class Ping(Event):
    parcel_id: str


async def test_any_orchestrator_may_record_the_reply_a_saga_awaits(
    log_db: Database, second_db: Database
) -> None:
    clock = ManualClock()
    events = EventRegistry()
    for event_type in (Ping, StepReply):
        events.register(event_type)
    saga = SagaDefinition(
        "ping",
        [Step("ping", command=lambda ctx: Ping(parcel_id=ctx.data.parcel_id), pivot=True)],
        data_type=Parcel,
    )
    a = Orchestrator(log_db, outbox=Outbox(events), owner="a", clock=clock)
    b = Orchestrator(second_db, outbox=Outbox(events), owner="b", clock=clock)
    for orch in (a, b):
        orch.register(saga)
        await orch.install()
    await a.execute("ping", Parcel("p-1"), saga_id="p-1")
    # The reply reaches b (another member of the consumer group); a's lease still runs.
    async with second_db.transaction() as tx:
        await b.handle_reply(StepReply(saga_id="p-1", step="ping", attempt=1), tx)
    record = await b.log.get("p-1")
    assert (record.state, record.owner) == (SagaState.COMPLETED, "b")
    await a.close()
    await b.close()


async def test_lease_settings_are_validated(log_db: Database) -> None:
    with pytest.raises(ConfigError, match="lease"):
        Orchestrator(log_db, lease=0)
    with pytest.raises(ConfigError, match="owner"):
        Orchestrator(log_db, owner="")
    with pytest.raises(ConfigError, match="every"):
        Orchestrator(log_db, lease=3.0).start_heartbeat(every=5.0)
