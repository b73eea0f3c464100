"""Command steps with ``timeout=``: the reply deadline is stored with the command, a
missing reply fails the attempt (resend or compensate), late replies are stale, and a
restarted orchestrator re-arms the deadline from the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shipyard.core import ManualClock
from shipyard.messaging import Outbox
from shipyard.resilience import Retry
from shipyard.saga import (
    Orchestrator,
    SagaDefinition,
    SagaEvent,
    SagaRecord,
    SagaState,
    Step,
    StepContext,
    StepReply,
    TransitionKind,
    saga_headers,
)
from shipyard.storage import Database, open_database
from tests.saga.payment import ChargeCard, Payment, RefundCard, registry

TIMEOUT = 5.0


class Ledger:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def hold(self, ctx: StepContext[Payment]) -> None:
        self.calls.append("hold")

    async def release(self, ctx: StepContext[Payment]) -> None:
        self.calls.append("release")

    async def confirm(self, ctx: StepContext[Payment]) -> None:
        self.calls.append("confirm")


def payment_saga(ledger: Ledger, *, retry: Retry | None = None) -> SagaDefinition[Payment]:
    return SagaDefinition(
        "payment",
        [
            Step("hold", ledger.hold, compensation=ledger.release),
            Step(
                "charge",
                command=lambda ctx: ChargeCard(order_id=ctx.data.order_id, amount=ctx.data.amount),
                compensation_command=lambda ctx: RefundCard(order_id=ctx.data.order_id),
                retry=retry,
                timeout=TIMEOUT,
            ),
            Step("confirm", ledger.confirm, pivot=True),
        ],
        data_type=Payment,
    )


async def start(
    db: Database, clock: ManualClock, ledger: Ledger, *, retry: Retry | None = None
) -> Orchestrator:
    orch = Orchestrator(db, outbox=Outbox(registry()), clock=clock, backoff_base=1.0)
    orch.register(payment_saga(ledger, retry=retry))
    await orch.install()
    return orch


async def sent(db: Database) -> list[tuple[str, int, bool]]:
    """``(command, attempt, compensation)`` of every command in the outbox, in order."""
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT body FROM shipyard_outbox ORDER BY seq")
    commands = [registry().decode(bytes(row[0])) for row in rows]
    return [(c.event_name, *saga_headers(c)[2:]) for c in commands]


async def settled(orch: Orchestrator, saga_id: str, done: object) -> SagaRecord:
    """Let background work run until ``done(record)`` holds (bounded, not timed)."""
    for _ in range(5000):
        record = await orch.log.get(saga_id)
        if done(record):  # type: ignore[operator]
            return record
        await asyncio.sleep(0.001)
    raise AssertionError(f"saga {saga_id} never settled: {await orch.log.get(saga_id)}")


def awaiting(attempt: int, state: SagaState = SagaState.RUNNING) -> object:
    return lambda r: r.awaiting and r.attempt == attempt and r.state is state


async def reply(orch: Orchestrator, db: Database, message: StepReply) -> None:
    async with db.transaction() as tx:
        await orch.handle_reply(message, tx)


async def test_the_reply_deadline_is_stored_with_the_transition_that_sends_the_command(
    sqlite_db: Database,
) -> None:
    clock = ManualClock()
    orch = await start(sqlite_db, clock, Ledger())
    record = await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    stored = await orch.log.get("p-1")
    assert record.awaiting
    assert stored.deadline == clock.now() + TIMEOUT
    await orch.close()


async def test_a_missing_reply_fails_the_attempt_and_the_retry_sends_the_command_again(
    sqlite_db: Database,
) -> None:
    clock = ManualClock()
    retry = Retry(max_attempts=3, base_delay=1.0, jitter=None, clock=clock)
    orch = await start(sqlite_db, clock, Ledger(), retry=retry)
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    clock.advance(TIMEOUT - 0.5)
    await asyncio.sleep(0.01)
    assert (await orch.log.get("p-1")).attempt == 1  # not yet due
    clock.advance(0.5)
    record = await settled(orch, "p-1", awaiting(2))
    assert record.deadline is not None
    assert record.deadline > clock.now()
    assert await sent(sqlite_db) == [("ChargeCard", 1, False), ("ChargeCard", 2, False)]
    [failed] = [
        t for t in await orch.log.timeline("p-1") if t.kind is TransitionKind.STEP_ATTEMPT_FAILED
    ]
    assert (failed.step, failed.attempt) == ("charge", 1)
    assert "ReplyTimeoutError" in (failed.error or "")
    await orch.close()


async def test_a_reply_to_an_attempt_that_timed_out_is_ignored(sqlite_db: Database) -> None:
    clock = ManualClock()
    ledger = Ledger()
    retry = Retry(max_attempts=3, base_delay=1.0, jitter=None, clock=clock)
    orch = await start(sqlite_db, clock, ledger, retry=retry)
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    clock.advance(TIMEOUT)
    await settled(orch, "p-1", awaiting(2))
    await reply(orch, sqlite_db, StepReply(saga_id="p-1", step="charge", attempt=1))
    assert (await orch.log.get("p-1")).awaiting
    await reply(orch, sqlite_db, StepReply(saga_id="p-1", step="charge", attempt=2))
    record = await settled(orch, "p-1", lambda r: r.state.finished)
    assert record.state is SagaState.COMPLETED
    assert ledger.calls == ["hold", "confirm"]
    await orch.close()


async def test_an_answered_command_does_not_time_out(sqlite_db: Database) -> None:
    clock = ManualClock()
    orch = await start(sqlite_db, clock, Ledger())
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    await reply(orch, sqlite_db, StepReply(saga_id="p-1", step="charge", attempt=1))
    await settled(orch, "p-1", lambda r: r.state.finished)
    clock.advance(TIMEOUT * 2)
    await asyncio.sleep(0.01)
    kinds = [t.kind for t in await orch.log.timeline("p-1")]
    assert TransitionKind.STEP_ATTEMPT_FAILED not in kinds
    assert (await orch.log.get("p-1")).state is SagaState.COMPLETED
    await orch.close()


async def test_when_retries_are_exhausted_a_timeout_compensates_the_step_itself_too(
    sqlite_db: Database,
) -> None:
    clock = ManualClock()
    ledger = Ledger()
    orch = await start(sqlite_db, clock, ledger)  # no retry: one attempt
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    clock.advance(TIMEOUT)
    record = await settled(orch, "p-1", awaiting(1, SagaState.COMPENSATING))
    assert record.failed_step == "charge"
    assert "ReplyTimeoutError" in (record.error or "")
    # The charge may have happened without its reply reaching us: it is refunded.
    assert await sent(sqlite_db) == [("ChargeCard", 1, False), ("RefundCard", 1, True)]
    await reply(
        orch, sqlite_db, StepReply(saga_id="p-1", step="charge", attempt=1, compensation=True)
    )
    record = await settled(orch, "p-1", lambda r: r.state.finished)
    assert record.state is SagaState.COMPENSATED
    assert ledger.calls == ["hold", "release"]
    await orch.close()


async def test_an_unanswered_compensation_command_is_sent_again_until_answered(
    sqlite_db: Database,
) -> None:
    clock = ManualClock()
    orch = await start(sqlite_db, clock, Ledger())
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    clock.advance(TIMEOUT)
    await settled(orch, "p-1", awaiting(1, SagaState.COMPENSATING))
    clock.advance(TIMEOUT)
    await settled(orch, "p-1", awaiting(2, SagaState.COMPENSATING))
    assert (await sent(sqlite_db))[-2:] == [("RefundCard", 1, True), ("RefundCard", 2, True)]
    await orch.close()


async def test_a_restarted_orchestrator_re_arms_the_deadline_from_the_log(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    retry = Retry(max_attempts=2, base_delay=1.0, jitter=None, clock=clock)
    first_db = await open_database(url)
    first = await start(first_db, clock, Ledger(), retry=retry)
    await first.execute("payment", Payment("o-1", 300), saga_id="p-1")
    await first.close(release=False)  # killed: nothing but the log survives
    await first_db.close()
    clock.advance(TIMEOUT / 2)

    db = await open_database(url)
    second = await start(db, clock, Ledger(), retry=retry)
    [record] = await second.recover()
    assert record.awaiting
    clock.advance(TIMEOUT / 2)
    await settled(second, "p-1", awaiting(2))
    assert await sent(db) == [("ChargeCard", 1, False), ("ChargeCard", 2, False)]
    # The second attempt times out too: retries are exhausted, so the saga compensates.
    clock.advance(TIMEOUT)
    await settled(second, "p-1", awaiting(1, SagaState.COMPENSATING))
    await second.close()
    await db.close()


async def test_a_deadline_that_passed_while_no_orchestrator_ran_fails_at_recovery(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    events: list[SagaEvent] = []
    first_db = await open_database(url)
    first = await start(first_db, clock, Ledger())
    await first.execute("payment", Payment("o-1", 300), saga_id="p-1")
    await first.close(release=False)
    await first_db.close()
    clock.advance(TIMEOUT * 10)

    db = await open_database(url)
    second = await start(db, clock, Ledger())
    second.events.subscribe(events.append)
    await second.recover()
    record = await settled(second, "p-1", awaiting(1, SagaState.COMPENSATING))
    assert record.failed_step == "charge"
    assert [e.kind for e in events][:1] == [TransitionKind.STEP_FAILED]
    await second.close()
    await db.close()
