"""The saga log contract: every backend (SQLite, PostgreSQL) stores and finds the same."""

from __future__ import annotations

import pytest

from shipyard.saga import (
    SagaNotFound,
    SagaRecord,
    SagaState,
    StepShape,
    Transition,
    TransitionKind,
    UnknownSagaError,
    saga_log_for,
)
from shipyard.storage import Database


def record(saga_id: str, state: SagaState = SagaState.RUNNING, at: float = 1.0) -> SagaRecord:
    return SagaRecord(
        saga_id=saga_id,
        name="order",
        version=1,
        fingerprint="f" * 64,
        state=state,
        position=0,
        attempt=1,
        awaiting=False,
        data=b'{"order_id":"o-1"}',
        error=None,
        created_at=at,
        updated_at=at,
        transitions=2,
    )


def started(saga_id: str) -> list[Transition]:
    return [
        Transition(saga_id, 1, TransitionKind.STARTED, None, 1, None, 1.0),
        Transition(saga_id, 2, TransitionKind.STEP_STARTED, "create", 1, None, 1.0),
    ]


async def test_a_created_saga_reads_back_with_its_timeline(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, record("s-1"), started("s-1"))
    assert await log.get("s-1") == record("s-1")
    assert await log.timeline("s-1") == started("s-1")


async def test_a_saved_transition_updates_the_row_and_appends_to_the_timeline(
    log_db: Database,
) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, record("s-1"), started("s-1"))
    moved = record("s-1", SagaState.COMPENSATING)
    moved.position, moved.attempt, moved.awaiting = 2, 3, True
    moved.error, moved.failed_step, moved.transitions = "boom", "charge", 3
    failed = Transition("s-1", 3, TransitionKind.STEP_FAILED, "charge", 3, "boom", 2.0)
    async with log_db.transaction() as tx:
        await log.save(tx, moved, [failed])
    assert await log.get("s-1") == moved
    assert (await log.timeline("s-1"))[-1] == failed


async def test_a_rolled_back_transition_leaves_no_trace(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()

    async def create_then_fail() -> None:
        async with log_db.transaction() as tx:
            await log.create(tx, record("s-1"), started("s-1"))
            raise RuntimeError("the outbox write failed")

    with pytest.raises(RuntimeError):
        await create_then_fail()
    with pytest.raises(SagaNotFound):
        await log.get("s-1")


async def test_sagas_are_listed_by_state_and_unfinished_ones_found(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, record("a", SagaState.COMPLETED, at=1.0), started("a"))
        await log.create(tx, record("b", SagaState.RUNNING, at=2.0), started("b"))
        await log.create(tx, record("c", SagaState.COMPENSATING, at=3.0), started("c"))
    assert [r.saga_id for r in await log.list()] == ["c", "b", "a"]
    assert [r.saga_id for r in await log.list(state=SagaState.COMPLETED)] == ["a"]
    assert [r.saga_id for r in await log.list(name="refund")] == []
    assert [r.saga_id for r in await log.unfinished()] == ["b", "c"]


async def test_an_unknown_saga_id_is_a_clear_lookup_error(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    with pytest.raises(SagaNotFound, match="no saga with id 'nope'") as info:
        await log.get("nope")
    assert isinstance(info.value, LookupError)
    with pytest.raises(SagaNotFound):
        await log.timeline("nope")


async def test_definitions_are_recorded_once_per_version(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    v1 = [StepShape("create", "call", True, False, False, False)]
    v2 = [*v1, StepShape("confirm", "call", False, True, False, False)]
    await log.record_definition("order", 1, "a", v1)
    await log.record_definition("order", 1, "a", v1)
    await log.record_definition("order", 2, "b", v2)
    assert await log.definition("order") == (2, v2)
    assert await log.definition("order", 1) == (1, v1)
    with pytest.raises(UnknownSagaError, match="'refund'"):
        await log.definition("refund")


async def test_creating_many_at_once_skips_ids_already_in_the_log(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, record("a"), started("a"))
    async with log_db.transaction() as tx:
        taken = await log.create_many(
            tx, [(record("a", SagaState.COMPLETED), started("a")), (record("b"), started("b"))]
        )
        await log.save_many(
            tx, [(record("a", SagaState.COMPENSATING), []), (record("b", SagaState.COMPLETED), [])]
        )
    assert list(taken) == ["a"]
    assert taken["a"].state is SagaState.RUNNING
    assert (await log.get("a")).state is SagaState.COMPENSATING
    assert (await log.get("b")).state is SagaState.COMPLETED
    assert len(await log.timeline("b")) == 2
