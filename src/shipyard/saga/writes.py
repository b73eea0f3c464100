"""What one saga transition writes, and how a batch of them is written in one transaction.

A commit costs far more than the two small statements of a transition, so when many
sagas move at once their transitions (and the outbox rows of the commands they send) share
a transaction through the storage package's :class:`~shipyard.storage.GroupCommitter`. A
lone transition starts its transaction at once, and each saga still waits for ITS commit
before it sends the next action, so "persisted before the next action" holds exactly as
with one transaction per transition. If a batch fails (an invalid command event, a lost
lease, a database error) every transition in it is written again alone, so only the
culprit fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shipyard.messaging import Event, Outbox
from shipyard.saga.record import SagaRecord, Transition
from shipyard.saga.store import SagaLog
from shipyard.storage import Database, GroupCommitter, Transaction


@dataclass(slots=True)
class PendingWrite:
    """One saga's transition: its row, timeline entries and commands. ``create``: insert
    the saga unless its id exists (the outcome is then the existing record)."""

    record: SagaRecord
    transitions: Sequence[Transition]
    commands: Sequence[Event]
    create: bool = False


def saga_writer(
    db: Database, log: SagaLog, outbox: Outbox | None
) -> GroupCommitter[PendingWrite, SagaRecord | None]:
    """A group committer of :class:`PendingWrite` s to ``log`` (commands to ``outbox``);
    each outcome is ``None``, or for a create whose id is taken, the existing record."""

    async def write(
        tx: Transaction, batch: Sequence[PendingWrite]
    ) -> list[SagaRecord | Exception | None]:
        creates = [(i.record, i.transitions) for i in batch if i.create]
        saves = [(i.record, i.transitions) for i in batch if not i.create]
        existing = await log.create_many(tx, creates) if creates else {}
        if saves:
            await log.save_many(tx, saves)
        results: list[SagaRecord | Exception | None] = []
        commands: list[Event] = []
        for item in batch:
            found = existing.get(item.record.saga_id) if item.create else None
            if found is None:  # a saga that already existed sends nothing again
                commands.extend(item.commands)
            results.append(found)
        if commands:
            assert outbox is not None, "a saga with command steps needs an outbox"
            await outbox.add(tx, *commands)
        return results

    return GroupCommitter(db, write)
