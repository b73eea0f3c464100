"""The saga log contract: every backend (SQLite, PostgreSQL) stores and finds the same."""

from __future__ import annotations

import pytest

from shipyard.saga import (
    LeaseLostError,
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


def owned(
    saga_id: str, owner: str, until: float, state: SagaState = SagaState.RUNNING
) -> SagaRecord:
    leased = record(saga_id, state)
    leased.owner, leased.lease_until = owner, until
    return leased


async def test_a_saga_is_claimed_by_one_owner_until_its_lease_expires(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, owned("s-1", "a", until=10.0), started("s-1"))
    assert await log.claim("s-1", "b", until=20.0, now=5.0) is None
    mine = await log.claim("s-1", "a", until=15.0, now=5.0)
    assert mine is not None
    assert (mine.owner, mine.lease_until) == ("a", 15.0)
    taken = await log.claim("s-1", "b", until=25.0, now=15.0)
    assert taken is not None
    assert (taken.owner, taken.lease_until) == ("b", 25.0)
    assert await log.claim("s-1", "a", until=30.0, now=16.0) is None


async def test_a_finished_saga_cannot_be_claimed(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, record("s-1", SagaState.COMPLETED), started("s-1"))
    assert await log.claim("s-1", "a", until=10.0, now=1.0) is None


async def test_only_the_lease_holder_may_save_a_saga(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, owned("s-1", "a", until=10.0), started("s-1"))
    assert await log.claim("s-1", "b", until=30.0, now=20.0) is not None
    stale = owned("s-1", "a", until=40.0, state=SagaState.COMPLETED)
    stale.transitions = 3
    later = Transition("s-1", 3, TransitionKind.COMPLETED, None, 1, None, 2.0)
    with pytest.raises(LeaseLostError, match="'s-1'") as info:
        async with log_db.transaction() as tx:
            await log.save(tx, stale, [later])
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(LeaseLostError):
        async with log_db.transaction() as tx:
            await log.save_many(tx, [(stale, [later]), (owned("s-2", "a", 1.0), [])])
    assert (await log.get("s-1")).state is SagaState.RUNNING
    assert len(await log.timeline("s-1")) == 2


async def test_claimable_sagas_are_the_unowned_and_the_expired_of_others(
    log_db: Database,
) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, record("free"), started("free"))
        await log.create(tx, owned("expired", "b", until=5.0), started("expired"))
        await log.create(tx, owned("live", "b", until=50.0), started("live"))
        await log.create(tx, owned("mine", "a", until=5.0), started("mine"))
        await log.create(tx, owned("done", "b", 5.0, SagaState.COMPLETED), started("done"))
    assert sorted(r.saga_id for r in await log.claimable("a", now=10.0)) == ["expired", "free"]


async def test_leases_are_renewed_and_released_per_owner(log_db: Database) -> None:
    log = saga_log_for(log_db)
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, owned("s-1", "a", until=5.0), started("s-1"))
        await log.create(tx, owned("s-2", "b", until=5.0), started("s-2"))
    await log.renew("a", until=60.0)
    assert (await log.get("s-1")).lease_until == 60.0
    assert (await log.get("s-2")).lease_until == 5.0
    await log.release("a")
    released = await log.get("s-1")
    assert (released.owner, released.lease_until) == (None, None)


async def test_claiming_a_reply_requires_the_saga_to_await_exactly_that_attempt(
    log_db: Database,
) -> None:
    log = saga_log_for(log_db)
    await log.install()
    waiting = owned("s-1", "a", until=50.0)
    waiting.awaiting, waiting.deadline, waiting.attempt = True, 9.0, 2
    async with log_db.transaction() as tx:
        await log.create(tx, waiting, started("s-1"))
    async with log_db.transaction() as tx:
        shape = {"state": SagaState.RUNNING, "position": 0}
        assert await log.claim_awaiting(tx, "s-1", "b", 60.0, **shape, attempt=1) is None
        claimed = await log.claim_awaiting(tx, "s-1", "b", 60.0, **shape, attempt=2)
    assert claimed is not None
    assert (claimed.owner, claimed.lease_until, claimed.deadline) == ("b", 60.0, 9.0)


async def test_install_adds_the_lease_and_deadline_columns_to_an_older_log(
    log_db: Database,
) -> None:
    async with log_db.transaction() as tx:
        await tx.execute(
            "CREATE TABLE shipyard_sagas (saga_id TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " version INTEGER NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL,"
            " position INTEGER NOT NULL, attempt INTEGER NOT NULL, awaiting INTEGER NOT NULL,"
            f" data {'BYTEA' if log_db.dialect == 'postgresql' else 'BLOB'} NOT NULL,"
            " error TEXT, failed_step TEXT, created_at REAL NOT NULL,"
            " updated_at REAL NOT NULL, transitions INTEGER NOT NULL)"
        )
    log = saga_log_for(log_db)
    await log.install()
    await log.install()
    async with log_db.transaction() as tx:
        await log.create(tx, owned("s-1", "a", until=5.0), started("s-1"))
    assert await log.get("s-1") == owned("s-1", "a", until=5.0)
