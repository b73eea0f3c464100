"""``MemoryIdempotencyStore``: keys in a dict, for one process and for tests.

Every method runs without awaiting in between its read and its write, so on one event loop
each call is atomic without a lock. Keys are lost when the process exits.
"""

from __future__ import annotations

import secrets

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.idempotency.store import IdempotencyRecord, Lease, StoredResponse


class MemoryIdempotencyStore:
    """An :class:`~shipyard.idempotency.IdempotencyStore` held in process memory."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        # key -> (record, lease token while in progress)
        self._records: dict[str, tuple[IdempotencyRecord, str | None]] = {}

    async def acquire(
        self, key: str, fingerprint: str, *, lease: float
    ) -> Lease | IdempotencyRecord:
        """Claim ``key`` unless a live record holds it."""
        now = self._clock.now()
        held = self._records.get(key)
        if held is not None and held[0].expires_at > now:
            return held[0]
        token = secrets.token_hex(16)
        record = IdempotencyRecord(key, fingerprint, "in_progress", now + lease)
        self._records[key] = (record, token)
        return Lease(key, fingerprint, token, record.expires_at)

    async def complete(self, lease: Lease, response: StoredResponse, *, ttl: float) -> bool:
        """Store ``response`` if ``lease`` still holds the key."""
        held = self._records.get(lease.key)
        if held is None or held[1] != lease.token:
            return False
        expires_at = self._clock.now() + ttl
        record = IdempotencyRecord(lease.key, lease.fingerprint, "completed", expires_at, response)
        self._records[lease.key] = (record, None)
        return True

    async def release(self, lease: Lease) -> None:
        """Drop the in-progress record if ``lease`` still holds it."""
        held = self._records.get(lease.key)
        if held is not None and held[1] == lease.token:
            del self._records[lease.key]

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``."""
        held = self._records.get(key)
        if held is None or held[0].expires_at <= self._clock.now():
            return None
        return held[0]

    async def purge_expired(self) -> int:
        """Delete every expired record."""
        now = self._clock.now()
        expired = [key for key, (record, _) in self._records.items() if record.expires_at <= now]
        for key in expired:
            del self._records[key]
        return len(expired)
