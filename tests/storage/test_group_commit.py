"""Group commit: queued writes share a transaction, and each keeps its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence

import pytest

from shipyard import ConfigError
from shipyard.storage import Database, GroupCommitter, Transaction, group_commit, open_database


class Refused(ValueError):
    """The outcome of an item the writer turns away without writing it."""


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE items (id TEXT PRIMARY KEY)")
    yield database
    await database.close()


async def write_items(tx: Transaction, items: Sequence[str]) -> list[str | Exception]:
    """Inserts each item; ``refused-*`` items are answered with an error and not written,
    ``bad-*`` items make the whole batch fail."""
    outcomes: list[str | Exception] = []
    for item in items:
        if item.startswith("refused"):
            outcomes.append(Refused(item))
            continue
        if item.startswith("bad"):
            raise RuntimeError(f"cannot write {item}")
        await tx.execute("INSERT INTO items (id) VALUES (?)", item)
        outcomes.append(f"wrote {item}")
    return outcomes


async def stored(db: Database) -> list[str]:
    async with db.transaction() as tx:
        return [row[0] for row in await tx.fetch("SELECT id FROM items ORDER BY id")]


async def test_a_lone_write_commits_in_its_own_transaction(db: Database) -> None:
    committer = GroupCommitter(db, write_items)

    assert await committer.submit("a") == "wrote a"

    assert await stored(db) == ["a"]
    assert (committer.transactions, committer.written) == (1, 1)


async def test_writes_queued_behind_a_running_transaction_share_the_next_one(
    db: Database,
) -> None:
    committer = GroupCommitter(db, write_items)

    outcomes = await asyncio.gather(*(committer.submit(f"i{n:02}") for n in range(20)))

    assert outcomes == [f"wrote i{n:02}" for n in range(20)]
    assert await stored(db) == [f"i{n:02}" for n in range(20)]
    # The first runs alone; the 19 that queued behind it share the next transaction.
    assert (committer.transactions, committer.written) == (2, 20)


async def test_max_batch_caps_how_many_queued_writes_one_transaction_takes(
    db: Database,
) -> None:
    committer = GroupCommitter(db, write_items, max_batch=5)

    await asyncio.gather(*(committer.submit(f"i{n:02}") for n in range(11)))

    assert (committer.transactions, committer.written) == (3, 11)


@pytest.mark.parametrize(
    ("culprit", "error"),
    [
        ("refused-c", Refused),  # answered with an error: it leaves the batch
        ("bad-c", RuntimeError),  # fails the batch: each item is written again alone
    ],
)
async def test_only_the_culprit_of_a_batch_fails_and_the_rest_commits(
    db: Database, culprit: str, error: type[Exception]
) -> None:
    committer = GroupCommitter(db, write_items)

    outcomes = await asyncio.gather(
        committer.submit("a"),
        committer.submit("b"),
        committer.submit(culprit),
        committer.submit("d"),
        return_exceptions=True,
    )

    assert outcomes[:2] == ["wrote a", "wrote b"]
    assert isinstance(outcomes[2], error)
    assert outcomes[3] == "wrote d"
    assert await stored(db) == ["a", "b", "d"]
    assert committer.written == 3


async def test_a_write_cancelled_while_leading_is_not_written_and_the_others_are(
    db: Database,
) -> None:
    committer = GroupCommitter(db, write_items)
    leader = asyncio.create_task(committer.submit("a"))
    others = [asyncio.create_task(committer.submit(item)) for item in ("b", "c")]
    await asyncio.sleep(0)  # "a" leads into its transaction; "b" and "c" queue behind it
    leader.cancel()

    outcomes = await asyncio.gather(leader, *others, return_exceptions=True)

    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert outcomes[1:] == ["wrote b", "wrote c"]
    assert await stored(db) == ["b", "c"]


async def test_a_write_cancelled_before_its_transaction_started_is_never_written(
    db: Database,
) -> None:
    committer = GroupCommitter(db, write_items)
    first = asyncio.create_task(committer.submit("a"))
    queued = asyncio.create_task(committer.submit("b"))
    await asyncio.sleep(0)  # "b" waits behind "a"'s transaction
    queued.cancel()

    await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.sleep(0.01)  # let a background batch (if any) finish

    assert await stored(db) == ["a"]


@pytest.mark.parametrize("option", ["transactions", "max_batch"])
async def test_limits_below_one_are_refused_naming_the_option(db: Database, option: str) -> None:
    field = "group_commit" if option == "transactions" else option

    with pytest.raises(ConfigError, match=field):
        GroupCommitter(db, write_items, **{option: 0})


class Paths:
    """``alone`` and ``now`` for a committer, recording which one wrote each item."""

    def __init__(self, db: Database, *, now_can: bool = True) -> None:
        self.db = db
        self.now_can = now_can
        self.by_now: list[str] = []

    def alone(self, item: str) -> Awaitable[str]:
        return self._alone(item)

    async def _alone(self, item: str) -> str:
        async with self.db.transaction() as tx:
            await tx.execute("INSERT INTO items (id) VALUES (?)", item)
        return f"alone {item}"

    def now(self, item: str) -> str | None:
        if not self.now_can:
            return None
        self.by_now.append(item)
        return f"now {item}"


async def test_a_lone_write_with_no_company_is_written_now(db: Database) -> None:
    paths = Paths(db)
    committer = GroupCommitter(db, write_items, alone=paths.alone, now=paths.now)

    assert await committer.submit("a") == "now a"
    assert await committer.submit("b") == "now b"

    assert paths.by_now == ["a", "b"]
    assert (committer.transactions, committer.written) == (2, 2)


async def test_when_now_cannot_write_the_item_takes_the_usual_path(db: Database) -> None:
    paths = Paths(db, now_can=False)
    committer = GroupCommitter(db, write_items, alone=paths.alone, now=paths.now)

    assert await committer.submit("a") == "alone a"
    assert await stored(db) == ["a"]


async def test_writes_arriving_together_share_a_transaction_and_keep_now_off_for_a_while(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(group_commit, "_monotonic", lambda: clock[0])
    paths = Paths(db)
    committer = GroupCommitter(db, write_items, alone=paths.alone, now=paths.now)

    outcomes = await asyncio.gather(*(committer.submit(f"i{n:02}") for n in range(20)))

    # Nothing went the synchronous way: the first waited off the loop, the rest shared
    # the next transaction behind it.
    assert paths.by_now == []
    assert outcomes[0] == "alone i00"
    assert outcomes[1:] == [f"wrote i{n:02}" for n in range(1, 20)]
    assert (committer.transactions, committer.written) == (2, 20)
    # Right after company, a lone write still goes off the loop ...
    clock[0] += group_commit.CONTENDED_FOR / 2
    assert await committer.submit("lone") == "alone lone"
    # ... and once it has been quiet for CONTENDED_FOR, the synchronous way is back.
    clock[0] += group_commit.CONTENDED_FOR
    assert await committer.submit("quiet") == "now quiet"
