"""Group commit: appends that arrive while a transaction is running share the next one.

A commit's cost is mostly fixed (on SQLite one fsync at ``synchronous=FULL``, on
PostgreSQL one WAL flush and round trips), so when many commands save at once, batching
them multiplies throughput. There is no timer: a lone append starts its transaction at
once; only appends that queue up behind a running transaction are batched.

Each append keeps its own outcome. The version check runs before anything is written, so
a stale append is answered with ``ConcurrencyError`` and simply leaves the batch. Any other
failure inside a batch (a bad snapshot, an outbox validation error, a database error)
rolls the batch back and every append in it runs again in a transaction of its own, so
only the culprit fails.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shipyard.core import validation
from shipyard.eventsourcing.errors import ConcurrencyError
from shipyard.storage import Database, Transaction

if TYPE_CHECKING:
    from shipyard.eventsourcing.store import NewEvent

Extra = Callable[[Transaction], Awaitable[None]]
AppendIn = Callable[[Transaction, str, "Sequence[NewEvent]", int], Awaitable[int]]


@dataclass(slots=True, frozen=True)
class Commit:
    """One append: ``events`` to ``stream_id`` at ``expected_version``, plus ``extra`` writes
    (snapshot, outbox) that must commit or roll back together with the events."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int
    extra: Extra | None = None


_Item = tuple[Commit, "asyncio.Future[int]"]


def _resolve(future: asyncio.Future[int], value: int | BaseException) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class GroupCommitter:
    """Runs :class:`Commit` s through at most ``transactions`` concurrent transactions."""

    def __init__(
        self, db: Database, append_in: AppendIn, *, transactions: int = 1, max_batch: int = 256
    ) -> None:
        self._db = db
        self._append_in = append_in
        self._transactions = validation.at_least("group_commit", transactions, 1)
        self._max_batch = validation.at_least("max_batch", max_batch, 1)
        self._queue: deque[_Item] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Transactions run so far (fewer than appends when batching happened)."""

    async def submit(self, commit: Commit) -> int:
        """Queue ``commit`` and wait for its outcome: the new version or its error."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((commit, future))
        if self._running >= self._transactions:
            return await future  # a running transaction takes it next
        # Lead: run batches in this task until our own commit is done, so an uncontended
        # append spawns no task; whatever queued up meanwhile goes to a background task.
        self._running += 1
        try:
            while not future.done() and self._queue:
                await self._next_batch()
            if not future.done():  # another transaction took it: wait for that one
                await asyncio.wait([future])
        except asyncio.CancelledError:
            future.cancel()  # requeued by _next_batch; now skipped, never written
            raise
        finally:
            if self._queue:
                self._spawn_drain()  # the running slot passes to the background task
            else:
                self._running -= 1
        return future.result()

    def _spawn_drain(self) -> None:
        task = asyncio.create_task(self._drain())
        self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    async def _next_batch(self) -> None:
        take = min(len(self._queue), self._max_batch)
        # A caller cancelled before its transaction started gets nothing written.
        batch = [
            item for item in (self._queue.popleft() for _ in range(take)) if not item[1].done()
        ]
        try:
            if len(batch) == 1:
                await self._alone(batch[0])
            elif batch:
                await self._together(batch)
        except asyncio.CancelledError:
            # The leading caller was cancelled: the others in its batch still want their
            # answer. Put them back in front; the transaction rolled back (or, if it had
            # already committed, the version check turns the rerun into ConcurrencyError,
            # never a duplicate).
            for item in reversed(batch):
                if not item[1].done():
                    self._queue.appendleft(item)
            raise

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._next_batch()
        finally:
            self._running -= 1

    async def _alone(self, item: _Item) -> None:
        commit, future = item
        self.batches += 1
        try:
            async with self._db.transaction() as tx:
                version = await self._write(tx, commit)
        except Exception as error:
            _resolve(future, error)
        else:
            _resolve(future, version)

    async def _together(self, batch: list[_Item]) -> None:
        # One lock order for every batch, so two PostgreSQL batches never deadlock on rows
        # of the same streams; sort is stable, so one stream's appends keep arrival order.
        batch.sort(key=lambda item: item[0].stream_id)
        outcomes: list[tuple[asyncio.Future[int], int | BaseException]] = []
        self.batches += 1
        try:
            async with self._db.transaction() as tx:
                for commit, future in batch:
                    try:
                        version = await self._write(tx, commit)
                    except ConcurrencyError as error:
                        outcomes.append((future, error))  # wrote nothing: the batch goes on
                    else:
                        outcomes.append((future, version))
        except Exception:
            for item in batch:
                await self._alone(item)
            return
        for future, value in outcomes:
            _resolve(future, value)

    async def _write(self, tx: Transaction, commit: Commit) -> int:
        version = await self._append_in(
            tx, commit.stream_id, commit.events, commit.expected_version
        )
        if commit.extra is not None:
            await commit.extra(tx)
        return version
