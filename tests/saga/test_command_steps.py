"""Command steps: the command goes into the outbox in the transition's transaction, the
participant replies over the bus, and the saga moves on (or compensates) on the reply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from shipyard.core import ManualClock
from shipyard.messaging import (
    Event,
    EventBus,
    MemoryTransport,
    Outbox,
    OutboxRelay,
)
from shipyard.saga import (
    Orchestrator,
    SagaDefinition,
    SagaState,
    Step,
    StepContext,
    StepReply,
    reply_to,
    saga_headers,
)
from shipyard.storage import Transaction, open_database
from tests.saga.payment import ChargeCard, Payment, RefundCard, registry


async def noop(ctx: StepContext[Payment]) -> None:
    return None


async def decline(ctx: StepContext[Payment]) -> None:
    raise RuntimeError("fraud check failed")


def payment_saga(*, confirm_fails: bool = False) -> SagaDefinition[Payment]:
    return SagaDefinition(
        "payment",
        [
            Step("hold", noop, compensation=noop),
            Step(
                "charge",
                command=lambda ctx: ChargeCard(order_id=ctx.data.order_id, amount=ctx.data.amount),
                compensation_command=lambda ctx: RefundCard(order_id=ctx.data.order_id),
            ),
            Step("confirm", decline if confirm_fails else noop, pivot=True),
        ],
        data_type=Payment,
    )


async def test_the_command_is_in_the_outbox_with_the_transition_that_sends_it(
    tmp_path: Path,
) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    outbox = Outbox(registry())
    orch = Orchestrator(db, outbox=outbox, clock=ManualClock())
    orch.register(payment_saga())
    await orch.install()
    record = await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    assert (record.state, record.awaiting, record.position) == (SagaState.RUNNING, True, 1)
    async with db.transaction() as tx:
        rows = await tx.fetch("SELECT name, body FROM shipyard_outbox")
    [(name, body)] = rows
    command = registry().decode(bytes(body))
    assert name == "ChargeCard"
    assert saga_headers(command) == ("p-1", "charge", 1, False)
    assert command.correlation_id == "p-1"
    await db.close()


async def run_with_participant(
    tmp_path: Path, *, declines: bool = False, confirm_fails: bool = False
) -> tuple[SagaState, list[str]]:
    events = registry()
    transport = MemoryTransport()
    orders = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    payments = await open_database(f"sqlite:///{tmp_path / 'payments.db'}")
    orders_outbox, payments_outbox = Outbox(events), Outbox(events)
    clock = ManualClock()
    orch = Orchestrator(orders, outbox=orders_outbox, clock=clock)
    orch.register(payment_saga(confirm_fails=confirm_fails))
    await orch.install()
    orders_bus = EventBus(transport, orders, events, clock=clock, fetch_wait=0.02)
    orders_bus.subscribe(StepReply, group="orders-saga", handler=orch.handle_reply)
    payments_bus = EventBus(transport, payments, events, clock=clock, fetch_wait=0.02)
    seen: list[str] = []

    @payments_bus.subscribe(ChargeCard, group="payments")
    async def charge(command: ChargeCard, tx: Transaction) -> None:
        seen.append(f"charge {command.order_id}")
        reply = (
            reply_to(command, ok=False, error="card declined")
            if declines
            else reply_to(command, data={"charge_id": "ch-1"})
        )
        await payments_outbox.add(tx, reply)

    @payments_bus.subscribe(RefundCard, group="payments")
    async def refund(command: RefundCard, tx: Transaction) -> None:
        seen.append(f"refund {command.order_id}")
        await payments_outbox.add(tx, reply_to(command))

    relays = [
        OutboxRelay(orders, transport, outbox=orders_outbox, poll_interval=0.02),
        OutboxRelay(payments, transport, outbox=payments_outbox, poll_interval=0.02),
    ]
    async with orders_bus, payments_bus, relays[0], relays[1]:
        await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not (await orch.log.get("p-1")).state.finished:
            assert loop.time() < deadline, "the saga never finished"
            await asyncio.sleep(0.005)
        record = await orch.wait("p-1")
    if not declines and not confirm_fails:
        assert msgspec.json.decode(record.data, type=Payment).charge_id == "ch-1"
    await orch.close()
    await orders.close()
    await payments.close()
    return record.state, seen


async def test_a_positive_reply_moves_the_saga_on(tmp_path: Path) -> None:
    state, seen = await run_with_participant(tmp_path, declines=False)
    assert state is SagaState.COMPLETED
    assert seen == ["charge o-1"]


async def test_a_failure_reply_compensates_the_earlier_steps(tmp_path: Path) -> None:
    state, seen = await run_with_participant(tmp_path, declines=True)
    assert state is SagaState.COMPENSATED
    # The failed charge itself is not refunded; only the steps before it are undone.
    assert seen == ["charge o-1"]


async def test_compensation_commands_are_sent_and_their_replies_awaited(tmp_path: Path) -> None:
    state, seen = await run_with_participant(tmp_path, confirm_fails=True)
    assert state is SagaState.COMPENSATED
    assert seen == ["charge o-1", "refund o-1"]


async def test_a_reply_for_another_attempt_or_step_is_ignored(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    orch = Orchestrator(db, outbox=Outbox(registry()), clock=ManualClock())
    orch.register(payment_saga())
    await orch.install()
    await orch.execute("payment", Payment("o-1", 300), saga_id="p-1")
    stale = StepReply(saga_id="p-1", step="charge", attempt=7)
    wrong = StepReply(saga_id="p-1", step="hold", attempt=1)
    async with db.transaction() as tx:
        await orch.handle_reply(stale, tx)
        await orch.handle_reply(wrong, tx)
    record = await orch.log.get("p-1")
    assert (record.state, record.awaiting, record.position) == (SagaState.RUNNING, True, 1)
    await db.close()


async def test_a_saga_whose_command_is_invalid_fails_alone_among_concurrent_sagas(
    tmp_path: Path,
) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    orch = Orchestrator(db, outbox=Outbox(registry()), clock=ManualClock())
    orch.register(payment_saga())
    await orch.install()

    class NotRegistered(Event):
        pass

    bad = SagaDefinition(
        "bad",
        [
            Step("hold", noop, compensation=noop),
            Step("send", command=lambda ctx: NotRegistered(), pivot=True),
        ],
        data_type=Payment,
    )
    orch.register(bad)
    runs = [orch.execute("payment", Payment(f"o-{n}", 1), saga_id=f"p-{n}") for n in range(20)]
    runs.insert(10, orch.execute("bad", Payment("o-bad", 1), saga_id="bad"))
    results = await asyncio.gather(*runs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    assert [type(f).__name__ for f in failures] == ["UnknownEventError"]
    assert all(r.awaiting for r in results if not isinstance(r, Exception))
    assert len(await orch.log.list(name="payment")) == 20
    await db.close()
