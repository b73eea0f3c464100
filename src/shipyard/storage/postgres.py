"""PostgreSQL adapter over an asyncpg connection pool.

Statements use ``?`` placeholders like the SQLite adapter; they are rewritten to asyncpg's
``$1, $2, ...`` once per distinct statement (cached), skipping quoted strings.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from shipyard.core import validation
from shipyard.storage.database import Dialect, Row
from shipyard.storage.errors import DatabaseClosedError


@functools.lru_cache(maxsize=1024)
def to_numbered_params(sql: str) -> str:
    """Rewrite ``?`` placeholders to ``$1, $2, ...``, leaving quoted text alone."""
    out: list[str] = []
    number = 0
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


class PostgresTransaction:
    """A transaction on a pooled asyncpg connection."""

    __slots__ = ("_callbacks", "_conn")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._callbacks: list[Callable[[], None]] = []

    async def execute(self, sql: str, *params: Any) -> None:
        """Run one statement."""
        await self._conn.execute(to_numbered_params(sql), *params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (pipelined by asyncpg)."""
        await self._conn.executemany(to_numbered_params(sql), list(rows))

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """Run a query and return every row as a tuple."""
        records = await self._conn.fetch(to_numbered_params(sql), *params)
        return [tuple(record) for record in records]

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        """Run a query and return its first row, or ``None``."""
        record = await self._conn.fetchrow(to_numbered_params(sql), *params)
        return None if record is None else tuple(record)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed."""
        self._callbacks.append(callback)


class PostgresDatabase:
    """A PostgreSQL database reached through a pool of ``min_size``..``max_size`` connections."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        validation.at_least("min_size", min_size, 0)
        validation.at_least("max_size", max_size, max(min_size, 1))
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None

    @property
    def url(self) -> str:
        """The connection URL."""
        return self._url

    @property
    def dialect(self) -> Dialect:
        """Always ``"postgresql"``."""
        return "postgresql"

    async def connect(self) -> None:
        """Create the pool (``open_database`` does this)."""
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=self._min_size, max_size=self._max_size
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """Borrow a connection and run one transaction on it."""
        if self._pool is None:
            raise DatabaseClosedError(self._url)
        async with self._pool.acquire() as conn, conn.transaction():
            tx = PostgresTransaction(conn)
            yield tx
        for callback in tx._callbacks:
            callback()

    async def close(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
