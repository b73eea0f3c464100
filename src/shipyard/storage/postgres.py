"""PostgreSQL adapter over asyncpg connection pools.

Statements use ``?`` placeholders like the SQLite adapter; they are rewritten to asyncpg's
``$1, $2, ...`` once per distinct statement (cached), skipping quoted strings. A statement
without parameters is sent as is (simple query protocol), so it may hold several
statements — that is how migration scripts run.

Each named pool (see :mod:`shipyard.storage.pools`) is its own asyncpg pool of at most
``size`` connections, so a saturated ``analytics`` pool holds none of ``api``'s
connections; its bulkhead makes callers wait at most ``max_wait`` for one. Taking a
connection goes through the database breaker (:mod:`shipyard.storage.monitor`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.resilience import CircuitBreaker
from shipyard.storage.database import Dialect, Row
from shipyard.storage.errors import DatabaseClosedError
from shipyard.storage.monitor import ConnectionGuard, DatabaseHealth, database_breaker
from shipyard.storage.pools import PoolConfig, PoolMetrics, Pools, PoolView


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
        """Run one statement (without ``params``: one or more statements, sent as is)."""
        if params:
            await self._conn.execute(to_numbered_params(sql), *params)
        else:
            await self._conn.execute(sql)

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


def is_connection_failure(error: BaseException) -> bool:
    """Could not reach PostgreSQL: a network error, a dropped connection, or a server that
    is starting up, shutting down or out of connection slots."""
    return isinstance(
        error,
        OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError,
    )


async def _begin(connections: Any, readonly: bool) -> tuple[Any, Any]:
    """Borrow a connection from ``connections`` and start a transaction on it."""
    conn = await connections.acquire()
    try:
        transaction = conn.transaction(readonly=readonly)
        await transaction.start()
    except BaseException:
        await connections.release(conn)
        raise
    return conn, transaction


class PostgresDatabase:
    """A PostgreSQL database reached through one asyncpg pool per named pool.

    Without ``pools`` there is one pool, ``default``, of ``min_size``..``max_size``
    connections where callers wait as long as it takes (asyncpg's own behaviour). With
    ``pools`` each gets its own asyncpg pool of up to ``size`` connections (at least
    ``min(min_size, size)`` kept open). ``connect_timeout`` bounds each connection
    attempt. ``breaker`` guards connection attempts (default: :func:`database_breaker`).
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        pools: PoolConfig | None = None,
        connect_timeout: float = 10.0,
        breaker: CircuitBreaker | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        validation.at_least("min_size", min_size, 0)
        validation.at_least("max_size", max_size, max(min_size, 1))
        self._connect_timeout = validation.positive("connect_timeout", connect_timeout)
        self._url = url
        self._min_size = min_size
        self._pools = Pools.build(url, pools, default_size=max_size, clock=clock)
        if breaker is None:
            breaker = database_breaker(url, record=is_connection_failure, clock=clock)
        self._guard = ConnectionGuard(url, breaker, is_connection_failure)
        self._asyncpg: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        """The connection URL."""
        return self._url

    @property
    def dialect(self) -> Dialect:
        """Always ``"postgresql"``."""
        return "postgresql"

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker around connection attempts (its ``state``, ``metrics``, ``events``)."""
        return self._guard.breaker

    async def connect(self) -> None:
        """Create the pools (``open_database`` does this); ``DatabaseUnavailableError``
        when the first connections cannot be made."""
        if self._asyncpg is not None:
            return
        created: dict[str, Any] = {}
        try:
            for name, settings in self._pools.settings.items():
                created[name] = await self._guard.connect(
                    functools.partial(
                        asyncpg.create_pool,
                        self._url,
                        min_size=min(self._min_size, settings.size),
                        max_size=settings.size,
                        timeout=self._connect_timeout,
                    )
                )
        except BaseException:
            for pool in created.values():
                await pool.close()
            raise
        self._asyncpg = created

    def pool(self, name: str) -> PoolView:
        """The named pool as a ``Database`` of its own."""
        return PoolView(self, self._pools.name(name))

    def pool_metrics(self) -> dict[str, PoolMetrics]:
        """Size, in use, waiting and rejected, per pool."""
        return self._pools.metrics()

    def health(self) -> DatabaseHealth:
        """Breaker state and pool metrics."""
        return DatabaseHealth(
            self._guard.database, "postgresql", self._guard.breaker.state, self._pools.metrics()
        )

    @asynccontextmanager
    async def transaction(
        self, *, pool: str | None = None, readonly: bool = False
    ) -> AsyncIterator[PostgresTransaction]:
        """Borrow a connection from ``pool`` (default: the first configured) and run one
        transaction on it; ``readonly=True`` makes it a ``READ ONLY`` transaction.

        Raises ``PoolExhaustedError`` when the pool has no connection for the caller within
        its ``max_wait``, ``DatabaseUnavailableError`` when connecting fails or the breaker
        is open.
        """
        name = self._pools.name(pool)
        if self._asyncpg is None:
            raise DatabaseClosedError(self._guard.database)
        connections = self._asyncpg[name]
        async with self._pools.slot(name):
            # BEGIN is part of the guarded step: a pooled connection the outage cut shows
            # up there, and counts toward the breaker like a refused connect.
            conn, transaction = await self._guard.connect(
                functools.partial(_begin, connections, readonly)
            )
            try:
                tx = PostgresTransaction(conn)
                try:
                    yield tx
                except BaseException:
                    if not conn.is_closed():
                        await transaction.rollback()
                    raise
                await transaction.commit()
            finally:
                await connections.release(conn)
        for callback in tx._callbacks:
            callback()

    async def close(self) -> None:
        """Close every pool."""
        pools, self._asyncpg = self._asyncpg, None
        for pool in (pools or {}).values():
            await pool.close()
