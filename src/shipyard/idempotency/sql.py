"""``SqlIdempotencyStore``: keys in the service's own database (SQLite or PostgreSQL).

Built on the :mod:`shipyard.storage` port, so the same statements run on both dialects;
only the byte column type differs. Claiming a key is ONE upsert —
``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now RETURNING token`` — so the
database decides the single winner: SQLite because writers are serialised
(``BEGIN IMMEDIATE``), PostgreSQL because the conflicting row is locked and the ``WHERE``
re-checked against its latest version. Expired rows are taken over in place and deleted
by :meth:`SqlIdempotencyStore.purge_expired`.
"""

from __future__ import annotations

import re
import secrets

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError
from shipyard.idempotency.store import (
    IdempotencyRecord,
    Lease,
    StoredResponse,
    decode_headers,
    encode_headers,
)
from shipyard.storage import Database, Row

_BYTES = {"sqlite": "BLOB", "postgresql": "BYTEA"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_COLUMNS = "idem_key, fingerprint, token, expires_at, status, headers, body"


class SqlIdempotencyStore:
    """An :class:`~shipyard.idempotency.IdempotencyStore` in a SQL table.

    ``table`` is created by :meth:`create_table` (idempotent); call it once at start-up.
    Times are ``clock.now()`` seconds, so every process sharing the table needs a roughly
    synchronised wall clock (a skew shortens or lengthens leases by that much).
    """

    def __init__(
        self, db: Database, *, table: str = "shipyard_idempotency", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not _IDENTIFIER.fullmatch(table):
            raise ConfigError("table", table, "must be a SQL identifier: letters, digits, _")
        self._db = db
        self._table = table
        self._clock = clock
        # Statements are built once here rather than per call.
        self._acquire_sql = (
            f"INSERT INTO {table} (idem_key, fingerprint, token, expires_at)"
            " VALUES (?, ?, ?, ?)"
            " ON CONFLICT (idem_key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " token = excluded.token, expires_at = excluded.expires_at,"
            " status = NULL, headers = NULL, body = NULL"
            f" WHERE {table}.expires_at <= ?"
            " RETURNING token"
        )
        self._select_sql = f"SELECT {_COLUMNS} FROM {table} WHERE idem_key = ?"
        self._complete_sql = (
            f"UPDATE {table} SET token = NULL, status = ?, headers = ?, body = ?, expires_at = ?"
            " WHERE idem_key = ? AND token = ? RETURNING idem_key"
        )
        self._release_sql = f"DELETE FROM {table} WHERE idem_key = ? AND token = ?"
        self._purge_sql = f"DELETE FROM {table} WHERE expires_at <= ? RETURNING idem_key"

    @property
    def table(self) -> str:
        """The table holding the keys."""
        return self._table

    async def create_table(self) -> None:
        """Create the table and its expiry index if they do not exist."""
        blob = _BYTES[self._db.dialect]
        async with self._db.transaction() as tx:
            await tx.execute(
                f"""CREATE TABLE IF NOT EXISTS {self._table} (
                    idem_key TEXT PRIMARY KEY,
                    fingerprint TEXT NOT NULL,
                    token TEXT,
                    expires_at DOUBLE PRECISION NOT NULL,
                    status INTEGER,
                    headers {blob},
                    body {blob}
                )"""
            )
            # purge_expired scans by expiry.
            await tx.execute(
                f"CREATE INDEX IF NOT EXISTS {self._table}_expires ON {self._table} (expires_at)"
            )

    async def drop_table(self) -> None:
        """Drop the table (for tests and teardown)."""
        async with self._db.transaction() as tx:
            await tx.execute(f"DROP TABLE IF EXISTS {self._table}")

    async def acquire(
        self, key: str, fingerprint: str, *, lease: float
    ) -> Lease | IdempotencyRecord:
        """Claim ``key`` unless a live record holds it (one upsert)."""
        token = secrets.token_hex(16)
        while True:
            async with self._db.transaction() as tx:
                now = self._clock.now()
                expires_at = now + lease
                won = await tx.fetchone(self._acquire_sql, key, fingerprint, token, expires_at, now)
                if won is not None:
                    return Lease(key, fingerprint, token, expires_at)
                # The upsert lost, and on PostgreSQL it locked the row, so it is still here;
                # should it have vanished all the same, claiming again is the right answer.
                row = await tx.fetchone(self._select_sql, key)
            if row is not None:
                return _record(row)

    async def complete(self, lease: Lease, response: StoredResponse, *, ttl: float) -> bool:
        """Store ``response`` if ``lease`` still holds the key."""
        async with self._db.transaction() as tx:
            updated = await tx.fetchone(
                self._complete_sql,
                response.status,
                encode_headers(response.headers),
                response.body,
                self._clock.now() + ttl,
                lease.key,
                lease.token,
            )
        return updated is not None

    async def release(self, lease: Lease) -> None:
        """Delete the in-progress row if ``lease`` still holds it."""
        async with self._db.transaction() as tx:
            await tx.execute(self._release_sql, lease.key, lease.token)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(self._select_sql, key)
        if row is None or row[3] <= self._clock.now():
            return None
        return _record(row)

    async def purge_expired(self) -> int:
        """Delete every expired row."""
        async with self._db.transaction() as tx:
            deleted = await tx.fetch(self._purge_sql, self._clock.now())
        return len(deleted)


def _record(row: Row) -> IdempotencyRecord:
    key, fingerprint, token, expires_at, status, headers, body = row
    if token is not None:
        return IdempotencyRecord(key, fingerprint, "in_progress", float(expires_at))
    response = StoredResponse(int(status), decode_headers(bytes(headers)), bytes(body))
    return IdempotencyRecord(key, fingerprint, "completed", float(expires_at), response)
