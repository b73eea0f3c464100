"""Group commit for saga transitions: transitions that queue up while a transaction is
running share the next one.

A commit costs far more than the two small statements of a transition, so when many
sagas move at once their transitions (and the outbox rows of the commands they send) are
written in one transaction. Nothing waits on a timer: a lone transition starts its
transaction at once. Each saga still waits for ITS commit before it sends the next
action, so "persisted before the next action" holds exactly as with one transaction per
transition. If a batch fails (an invalid command event, a database error) it rolls back
and every transition in it is written again alone, so only the culprit fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from shipyard.messaging import Event, Outbox
from shipyard.saga.record import SagaRecord, Transition
from shipyard.saga.store import SagaLog
from shipyard.storage import Database, Transaction


@dataclass(slots=True)
class PendingWrite:
    """One saga's transition: its row, timeline entries and commands. ``create``: insert
    the saga unless its id exists (the future then gets the existing record)."""

    record: SagaRecord
    transitions: Sequence[Transition]
    commands: Sequence[Event]
    create: bool = False
    future: asyncio.Future[SagaRecord | None] = field(init=False, repr=False)


class GroupCommitter:
    """Writes :class:`PendingWrite` s to ``log`` in shared transactions of ``db``."""

    def __init__(self, db: Database, log: SagaLog, outbox: Outbox | None) -> None:
        self._db = db
        self._log = log
        self._outbox = outbox
        self._queue: list[PendingWrite] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0
        """Transactions committed (``written / transactions`` is the mean batch size)."""
        self.written = 0
        """Transitions written."""

    async def write(self, item: PendingWrite) -> SagaRecord | None:
        """Commit ``item`` (with whatever else is queued); for a create, returns the
        already existing record instead when the saga id is taken."""
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()
        self._queue.append(item)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await item.future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._write_batch(batch)
        finally:
            self._flusher = None
            if self._queue:
                # Cancelled while more waited (the loop is closing): tell them.
                waiting, self._queue = self._queue, []
                _fail(waiting, asyncio.CancelledError())

    async def _write_batch(self, batch: list[PendingWrite]) -> None:
        if len(batch) == 1:
            await self._alone(batch[0])
            return
        try:
            async with self._db.transaction() as tx:
                results = await self._apply(tx, batch)
        except Exception:
            # Something in the batch is bad: write each alone so only the culprit fails.
            for item in batch:
                await self._alone(item)
            return
        except BaseException as error:
            _fail(batch, error)
            raise
        self.transactions += 1
        self.written += len(batch)
        for item, existing in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(existing)

    async def _alone(self, item: PendingWrite) -> None:
        try:
            async with self._db.transaction() as tx:
                [existing] = await self._apply(tx, [item])
        except BaseException as error:
            _fail([item], error)
            if not isinstance(error, Exception):
                raise
            return
        self.transactions += 1
        self.written += 1
        if not item.future.done():
            item.future.set_result(existing)

    async def _apply(self, tx: Transaction, batch: list[PendingWrite]) -> list[SagaRecord | None]:
        creates = [(i.record, i.transitions) for i in batch if i.create]
        saves = [(i.record, i.transitions) for i in batch if not i.create]
        existing = await self._log.create_many(tx, creates) if creates else {}
        if saves:
            await self._log.save_many(tx, saves)
        results: list[SagaRecord | None] = []
        commands: list[Event] = []
        for item in batch:
            found = existing.get(item.record.saga_id) if item.create else None
            if found is None:
                commands.extend(item.commands)
            results.append(found)
        if commands:
            assert self._outbox is not None
            await self._outbox.add(tx, *commands)
        return results


def _fail(items: list[PendingWrite], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)
