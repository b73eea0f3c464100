"""Semantic locks: a saga marks a resource pending so others see the in-between state.

A saga's first step takes the lock in the participant's own transaction (typically
alongside setting a status such as ``PENDING``); its last step or its compensation
releases it. Concurrent requests call :meth:`SemanticLock.holder` (to show "pending") or
:meth:`SemanticLock.acquire` (which refuses with :class:`SemanticLockError`) instead of
acting on dirty, half-done data. Taking and releasing are idempotent per saga, so a step
re-run after a crash is harmless.
"""

from __future__ import annotations

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.saga.errors import SemanticLockError
from shipyard.storage import Database, Transaction

LOCKS = "shipyard_saga_locks"


class SemanticLock:
    """Pending-marks on resources (``"order:42"``) held by saga id, in ``db``."""

    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._clock = clock

    async def install(self) -> None:
        """Create the lock table if missing."""
        async with self._db.transaction() as tx:
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {LOCKS} (resource TEXT PRIMARY KEY,"
                " saga_id TEXT NOT NULL, taken_at DOUBLE PRECISION NOT NULL)"
            )

    async def acquire(self, tx: Transaction, resource: str, saga_id: str) -> None:
        """Mark ``resource`` pending for ``saga_id`` in ``tx``.

        Raises :class:`SemanticLockError` when another saga holds it.
        """
        await tx.execute(
            f"INSERT INTO {LOCKS} (resource, saga_id, taken_at) VALUES (?, ?, ?)"
            " ON CONFLICT (resource) DO NOTHING",
            resource,
            saga_id,
            self._clock.now(),
        )
        row = await tx.fetchone(f"SELECT saga_id FROM {LOCKS} WHERE resource = ?", resource)
        if row is not None and row[0] != saga_id:
            raise SemanticLockError(resource, row[0])

    async def release(self, tx: Transaction, resource: str, saga_id: str) -> None:
        """Clear the mark if ``saga_id`` holds it (no-op otherwise)."""
        await tx.execute(
            f"DELETE FROM {LOCKS} WHERE resource = ? AND saga_id = ?", resource, saga_id
        )

    async def holder(self, resource: str) -> str | None:
        """The saga holding ``resource`` pending, or ``None``."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(f"SELECT saga_id FROM {LOCKS} WHERE resource = ?", resource)
        return None if row is None else str(row[0])
