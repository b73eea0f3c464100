"""Dead letters: events a consumer group gave up on, kept with the error for inspection.

A dead letter is written together with the group's inbox row, so a redelivery of the same
event is skipped rather than dead-lettered twice. Replaying removes that inbox row and
republishes the stored bytes: the group handles the event again, every other group skips
it through its own inbox.
"""

from __future__ import annotations

import msgspec

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.messaging.errors import DeadLetterNotFoundError
from shipyard.messaging.events import WireMessage
from shipyard.messaging.schema import DEAD_LETTERS, INBOX
from shipyard.messaging.transport import Transport
from shipyard.storage import Database, Row, Transaction


class DeadLetter(msgspec.Struct, frozen=True):
    """One event a group could not handle (or decode)."""

    id: int
    group: str
    event_id: str
    name: str
    ordering_key: str | None
    body: bytes
    error: str
    attempts: int
    failed_at: float
    replayed_at: float | None

    @property
    def message(self) -> WireMessage:
        """The original wire message, for republishing."""
        return WireMessage(self.name, self.event_id, self.ordering_key, self.body)


_COLUMNS = (
    "id, group_name, event_id, name, ordering_key, body, error, attempts, failed_at, replayed_at"
)


def _letter(row: Row) -> DeadLetter:
    values = list(row)
    values[5] = bytes(values[5])
    return DeadLetter(*values)


async def record_dead_letter(
    tx: Transaction, group: str, message: WireMessage, error: str, attempts: int, now: float
) -> None:
    """Store ``message`` as dead for ``group`` and mark it handled in the inbox."""
    await tx.execute(
        f"INSERT INTO {DEAD_LETTERS} (group_name, event_id, name, ordering_key, body, error,"
        " attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        group,
        message.event_id,
        message.name,
        message.ordering_key,
        message.body,
        error,
        attempts,
        now,
    )
    await tx.execute(
        f"INSERT INTO {INBOX} (group_name, event_id, handled_at) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        group,
        message.event_id,
        now,
    )


class DeadLetterStore:
    """List, inspect and replay the dead letters in a service's database."""

    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._clock = clock

    async def list(
        self, *, group: str | None = None, include_replayed: bool = False
    ) -> list[DeadLetter]:
        """Dead letters, oldest first (optionally of one group, optionally replayed ones too)."""
        where = [] if include_replayed else ["replayed_at IS NULL"]
        params: list[object] = []
        if group is not None:
            where.append("group_name = ?")
            params.append(group)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM {DEAD_LETTERS}{clause} ORDER BY id", *params
            )
        return [_letter(row) for row in rows]

    async def get(self, letter_id: int) -> DeadLetter:
        """The dead letter with ``letter_id``; raises ``DeadLetterNotFoundError``."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_COLUMNS} FROM {DEAD_LETTERS} WHERE id = ?", letter_id
            )
        if row is None:
            raise DeadLetterNotFoundError(letter_id)
        return _letter(row)

    async def replay(self, letter_id: int, transport: Transport) -> DeadLetter:
        """Republish a dead letter so its group handles it again; returns it."""
        letter = await self.get(letter_id)
        async with self._db.transaction() as tx:
            await tx.execute(
                f"DELETE FROM {INBOX} WHERE group_name = ? AND event_id = ?",
                letter.group,
                letter.event_id,
            )
            await tx.execute(
                f"UPDATE {DEAD_LETTERS} SET replayed_at = ? WHERE id = ?",
                self._clock.now(),
                letter_id,
            )
        # Published after the inbox row is gone, so the group cannot skip the replay.
        try:
            await transport.publish([letter.message])
        except BaseException:
            async with self._db.transaction() as tx:
                await tx.execute(
                    f"UPDATE {DEAD_LETTERS} SET replayed_at = NULL WHERE id = ?", letter_id
                )
                await tx.execute(
                    f"INSERT INTO {INBOX} (group_name, event_id, handled_at) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    letter.group,
                    letter.event_id,
                    self._clock.now(),
                )
            raise
        return letter
