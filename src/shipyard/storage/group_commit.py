"""Group commit: writes that arrive while a transaction is running share the next one.

A commit's cost is mostly fixed (on SQLite one fsync at ``synchronous=FULL``, on
PostgreSQL one WAL flush and round trips), so when many writers save at once, batching
them multiplies throughput. There is no timer: a lone write starts its transaction at
once; only writes that queue up behind a running transaction are batched. Each caller
still waits for ITS commit, so "durable before the next action" holds exactly as with one
transaction per write.

Each write keeps its own outcome. The batch writer may answer an item with an exception
instead of a value: that item wrote nothing and simply leaves the batch (an event store's
version conflict). Any error the batch writer raises (a bad row, a database error) rolls
the batch back and every item in it runs again in a transaction of its own, so only the
culprit fails.

A lone item can skip the transaction altogether: with ``alone``, an item that finds
nothing queued is written by ``alone(item)`` — on PostgreSQL one statement that is a
transaction by itself, one round trip instead of BEGIN, the write and COMMIT.

An item that arrives while nothing else is in flight, and has found no company for a
while, may be written synchronously by ``now(item)`` (SQLite writes it on the event loop,
skipping two thread hand-offs); ``now`` answers ``None`` when it cannot, and the item takes
the ``alone`` path. Any sign of company — another item arriving in the same loop turn,
or items queued behind a running transaction — turns ``now`` off for
``CONTENDED_FOR`` seconds: under load, a write that waits for its commit off the loop lets
the loop take the next requests and lets those writes share one commit.

A batch writer may also leave an item's work to the commit itself (SQLite's deferred
writes, so a whole batch is one trip to the database thread): it answers that item with a
:class:`DeferredOutcome` that the deferred work fills in, and which is read once the
transaction has committed.

Used by the event store (``shipyard.eventsourcing``) and the saga log (``shipyard.saga``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from shipyard.core import validation
from shipyard.storage.database import Database, Transaction

_monotonic = time.monotonic

T = TypeVar("T")
R = TypeVar("R")


class DeferredOutcome(Generic[R]):
    """An item's outcome that is known only once its transaction has committed: the work
    deferred to the commit sets ``value`` (its result, or the exception it fails with
    having written nothing)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: R | Exception = RuntimeError("the deferred write never ran")


WriteBatch = Callable[
    [Transaction, Sequence[T]], Awaitable[Sequence[R | Exception | DeferredOutcome[R]]]
]
"""``async def write(tx, items) -> outcomes``: writes ``items`` in ``tx`` and returns one
outcome per item, in order — its result, the exception it fails with having written
nothing, or a :class:`DeferredOutcome` read after the commit. Raising rolls the whole
batch back (each item is then retried alone)."""

WriteNow = Callable[[T], R | None]
"""``now(item)``: write ``item`` at once, synchronously, and return its result (never
``None``; raise having written nothing), or return ``None`` when it cannot right now."""

CONTENDED_FOR = 0.05
"""Seconds :class:`GroupCommitter` keeps ``now`` off after it saw concurrent writes."""

WriteAlone = Callable[[T], Awaitable[R] | None]
"""``alone(item)``: an awaitable writing ``item`` on its own, without a transaction of the
committer's (its result, or it raises having written nothing), or ``None`` when ``item``
needs a transaction after all."""


class GroupCommitter(Generic[T, R]):
    """Runs items through ``write`` in at most ``transactions`` concurrent transactions of
    ``db``, each taking up to ``max_batch`` waiting items; a lone item goes through
    ``alone`` when given (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        write: WriteBatch[T, R],
        *,
        transactions: int = 1,
        max_batch: int = 256,
        alone: WriteAlone[T, R] | None = None,
        now: WriteNow[T, R] | None = None,
    ) -> None:
        self._db = db
        self._write = write
        self._alone = alone
        self._now = now
        self._arriving = 0  # lone-path callers yielding their one loop turn
        self._contended_until = 0.0
        self._transactions = validation.at_least("group_commit", transactions, 1)
        self._max_batch = validation.at_least("max_batch", max_batch, 1)
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.transactions = 0
        """Transactions committed (``written / transactions`` is the mean batch size)."""
        self.written = 0
        """Items committed."""

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its outcome: its result or its error."""
        if self._alone is not None and not self._queue and self._running < self._transactions:
            # It would be written alone, and its first round trip commits: yield once
            # first, so a caller cancelled as soon as it started (the moment a BEGIN
            # would be in flight) leaves nothing written, as with a transaction.
            self._arriving += 1
            try:
                await asyncio.sleep(0)
            finally:
                self._arriving -= 1
            if not self._queue and self._running < self._transactions:
                if self._now is not None and not self._running:
                    if self._arriving:
                        self._contended()  # others arrived in the same turn
                    elif _monotonic() >= self._contended_until:
                        result = self._now(item)
                        if result is not None:
                            self.transactions += 1
                            self.written += 1
                            return result
                write = self._alone(item)
                if write is not None:
                    return await self._write_alone(write)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running >= self._transactions:
            if self._now is not None:
                self._contended()
            return await future  # a running transaction takes it next
        # Lead: run batches in this task until our own item is done, so an uncontended
        # write spawns no task; whatever queued up meanwhile goes to a background task.
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

    async def _write_alone(self, write: Awaitable[R]) -> R:
        # Holds a transaction slot like a leader; what queues meanwhile is drained after.
        self._running += 1
        try:
            result = await write
        finally:
            if self._queue:
                self._spawn_drain()  # the running slot passes to the background task
            else:
                self._running -= 1
        self.transactions += 1
        self.written += 1
        return result

    def _contended(self) -> None:
        self._contended_until = _monotonic() + CONTENDED_FOR

    def _spawn_drain(self) -> None:
        task = asyncio.create_task(self._drain())
        self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._next_batch()
        finally:
            self._running -= 1

    async def _next_batch(self) -> None:
        take = min(len(self._queue), self._max_batch)
        # A caller cancelled before its transaction started gets nothing written.
        batch = [
            entry for entry in (self._queue.popleft() for _ in range(take)) if not entry[1].done()
        ]
        try:
            if len(batch) == 1:
                await self._run(batch)
            elif batch and not await self._run(batch):
                for entry in batch:  # the batch rolled back: each alone finds the culprit
                    await self._run([entry])
        except asyncio.CancelledError:
            # The leading caller was cancelled: the others in its batch still want their
            # answer. Put them back in front; the transaction rolled back (if it had
            # already committed, the rerun meets what it wrote, and the writer's keys or
            # version checks must refuse it: the event store's and saga log's do, so a
            # rerun is answered with an error, never written twice).
            for entry in reversed(batch):
                if not entry[1].done():
                    self._queue.appendleft(entry)
            raise

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> bool:
        """One transaction for ``batch``; False when it rolled back with more than one item
        in it (nobody answered yet), True when every item got its outcome."""
        if len(batch) == 1 and self._alone is not None:
            item, future = batch[0]
            write = self._alone(item)
            if write is not None:
                try:
                    result = await write
                except Exception as error:
                    _resolve(future, error)
                    return True
                self.transactions += 1
                self.written += 1
                _resolve(future, result)
                return True
        try:
            async with self._db.transaction() as tx:
                outcomes = await self._write(tx, [item for item, _ in batch])
        except Exception as error:
            if len(batch) > 1:
                return False
            _resolve(batch[0][1], error)
            return True
        self.transactions += 1
        for (_, future), answer in zip(batch, outcomes, strict=True):
            outcome = answer.value if isinstance(answer, DeferredOutcome) else answer
            if not isinstance(outcome, Exception):
                self.written += 1
            _resolve(future, outcome)
        return True


def _resolve(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
