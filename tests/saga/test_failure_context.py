"""Compensations and retried steps see why a step failed; the saga log and `saga show` say it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shipyard.core import ManualClock
from shipyard.messaging import Outbox
from shipyard.resilience import Retry
from shipyard.saga import (
    Orchestrator,
    SagaDefinition,
    SagaState,
    Step,
    StepContext,
    StepFailure,
    reply_to,
    show_saga,
)
from shipyard.storage import Database, open_database
from tests.saga.payment import ChargeCard, Payment, RefundCard, registry


class Booking(msgspec.Struct):
    booking_id: str


class SoldOutError(Exception):
    pass


class Seen:
    def __init__(self) -> None:
        self.failures: list[tuple[str, StepFailure | None]] = []

    def action(self, label: str, *, fails: int = 0) -> object:
        left = [fails]

        async def call(ctx: StepContext[Booking]) -> None:
            self.failures.append((f"{label}#{ctx.attempt}", ctx.failure))
            if left[0]:
                left[0] -= 1
                raise SoldOutError(f"no seats left on {ctx.data.booking_id}")

        return call


def booking_saga(seen: Seen, *, seat_fails: int = 1, seat_retry: Retry | None = None) -> object:
    return SagaDefinition(
        "booking",
        [
            Step("hold", seen.action("hold"), compensation=seen.action("undo hold")),
            Step(
                "seat",
                seen.action("seat", fails=seat_fails),
                compensation=seen.action("undo seat"),
                retry=seat_retry,
            ),
            Step("confirm", seen.action("confirm"), pivot=True),
        ],
        data_type=Booking,
    )


async def run(db: Database, saga: object) -> Orchestrator:
    orch = Orchestrator(db, clock=ManualClock())
    orch.register(saga)  # type: ignore[arg-type]
    await orch.install()
    await orch.execute("booking", Booking("b-1"), saga_id="b-1")
    return orch


async def test_a_compensation_sees_the_step_error_type_and_message(log_db: Database) -> None:
    seen = Seen()
    orch = await run(log_db, booking_saga(seen))
    record = await orch.log.get("b-1")
    assert record.state is SagaState.COMPENSATED
    expected = StepFailure("seat", "SoldOutError", "no seats left on b-1")
    assert seen.failures == [("hold#1", None), ("seat#1", None), ("undo hold#1", expected)]
    assert str(expected) == "SoldOutError: no seats left on b-1"


async def test_a_retried_step_sees_why_its_previous_attempt_failed(log_db: Database) -> None:
    seen = Seen()
    await run(log_db, booking_saga(seen, seat_retry=Retry(max_attempts=3, base_delay=0.01)))
    previous = StepFailure("seat", "SoldOutError", "no seats left on b-1")
    assert seen.failures[1:] == [
        ("seat#1", None),
        ("seat#2", previous),
        ("confirm#1", None),  # the step completed: later steps start without a failure
    ]


async def test_saga_show_reports_the_failure_split_into_type_and_message(
    log_db: Database,
) -> None:
    orch = await run(log_db, booking_saga(Seen()))
    shown = await show_saga(orch.log, "b-1")
    assert shown["failure"] == {
        "step": "seat",
        "error_type": "SoldOutError",
        "message": "no seats left on b-1",
    }
    failed = [t for t in shown["timeline"] if t["kind"] == "step_failed"]
    assert [(t["step"], t["error"]) for t in failed] == [
        ("seat", "SoldOutError: no seats left on b-1")
    ]


async def test_a_completed_saga_shows_no_failure(log_db: Database) -> None:
    orch = await run(log_db, booking_saga(Seen(), seat_fails=0))
    assert (await show_saga(orch.log, "b-1"))["failure"] is None


async def test_a_participants_failure_reply_reaches_the_compensation(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    failures: list[StepFailure | None] = []

    async def hold(ctx: StepContext[Payment]) -> None:
        return None

    async def release(ctx: StepContext[Payment]) -> None:
        failures.append(ctx.failure)

    saga = SagaDefinition(
        "payment",
        [
            Step("hold", hold, compensation=release),
            Step(
                "charge",
                command=lambda ctx: ChargeCard(order_id=ctx.data.order_id, amount=ctx.data.amount),
                compensation_command=lambda ctx: RefundCard(order_id=ctx.data.order_id),
            ),
            Step("confirm", hold, pivot=True),
        ],
        data_type=Payment,
    )
    orch = Orchestrator(db, outbox=Outbox(registry()), clock=ManualClock())
    orch.register(saga)
    await orch.install()
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    async with db.transaction() as tx:
        [(body,)] = await tx.fetch("SELECT body FROM shipyard_outbox")
    command = registry().decode(bytes(body))
    async with db.transaction() as tx:
        await orch.handle_reply(reply_to(command, ok=False, error="card declined"), tx)
    record = await orch.wait("p-1")
    await orch.close()
    await db.close()
    assert record.state is SagaState.COMPENSATED
    assert failures == [StepFailure("charge", "StepRejected", "card declined")]
