"""PostgreSQL adapter over asyncpg connection pools.

Statements use ``?`` placeholders like the SQLite adapter; they are rewritten to asyncpg's
``$1, $2, ...`` once per distinct statement (cached), skipping quoted strings. A statement
without parameters is sent as is (simple query protocol), so it may hold several
statements — that is how migration scripts run.

Each named pool (see :mod:`shipyard.storage.pools`) has its own connections, at most
``size`` of them, so a saturated ``analytics`` pool holds none of ``api``'s connections;
its bulkhead makes callers wait at most ``max_wait`` for one. Taking a connection goes
through the database breaker (:mod:`shipyard.storage.monitor`).

Round trips are most of a short transaction's cost, so the session reset a pooled
connection needs before its next user (``RESET ALL``, ``UNLISTEN *``, advisory locks,
cursors: asyncpg's reset query) travels with the transaction's ``COMMIT`` or
``ROLLBACK``, in one simple query, instead of costing a trip of its own: a transaction is
BEGIN, its statements, and the end. Giving the connection back is then plain bookkeeping
(:class:`_Connections`), where asyncpg's own pool spends a task, a timer and two turns of
the event loop on every release — about as much as a round trip.
A transaction that needs only one statement can be :meth:`PostgresDatabase.statement`:
PostgreSQL runs a lone statement as a transaction of its own, so that is ONE trip.
"""

from __future__ import annotations

import asyncio
import functools
import time
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


# Idle connections beyond a pool's minimum are closed after this long (asyncpg's default).
_MAX_IDLE = 300.0


class _Connections:
    """The connections behind one named pool.

    The pool's bulkhead already caps how many are in use at ``size``, so taking one never
    waits for another to come back: it is the most recently used idle one, or a new one.
    A connection comes back with its session already reset (see :func:`_end`), so giving
    it back is bookkeeping only; one that may not be clean (closed, still in a
    transaction, or an operation on it failed half-way) is dropped instead. Idle
    connections beyond ``min_size`` are closed after ``_MAX_IDLE`` seconds.
    """

    __slots__ = (
        "_closing",
        "_connect",
        "_database",
        "_drained",
        "_idle",
        "_in_use",
        "_min",
        "_timer",
    )

    def __init__(self, database: str, connect: Callable[[], Any], min_size: int) -> None:
        self._database = database
        self._connect = connect
        self._min = min_size
        self._idle: list[tuple[Any, float]] = []  # (connection, idle since), oldest first
        self._in_use = 0
        self._closing = False
        self._drained: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        """Open the ``min_size`` connections kept ready."""
        now = time.monotonic()
        for _ in range(self._min):
            self._idle.append((await self._connect(), now))

    async def acquire(self) -> Any:
        """An idle connection, or a new one."""
        if self._closing:
            raise DatabaseClosedError(self._database)
        idle = self._idle
        while idle:
            conn = idle.pop()[0]
            if not conn.is_closed():
                self._in_use += 1
                return conn
        conn = await self._connect()
        self._in_use += 1
        return conn

    def release(self, conn: Any, *, clean: bool = True) -> None:
        """Take ``conn`` back; ``clean=False`` when an operation on it did not finish."""
        self._in_use -= 1
        if self._closing or not clean or conn.is_closed() or conn.is_in_transaction():
            conn.terminate()
            if self._closing and self._in_use == 0 and self._drained is not None:
                self._drained.set()
            return
        self._idle.append((conn, time.monotonic()))
        if self._timer is None and len(self._idle) + self._in_use > self._min:
            self._timer = asyncio.get_running_loop().call_later(_MAX_IDLE, self._expire)

    def _expire(self) -> None:
        self._timer = None
        idle = self._idle
        cutoff = time.monotonic() - _MAX_IDLE
        while idle and len(idle) + self._in_use > self._min and idle[0][1] <= cutoff:
            idle.pop(0)[0].terminate()
        if idle and len(idle) + self._in_use > self._min:
            wait = max(idle[0][1] - cutoff, 0.0)
            self._timer = asyncio.get_running_loop().call_later(wait, self._expire)

    async def close(self) -> None:
        """Close the idle connections, then wait for the ones in use to come back."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()
        if self._in_use:
            self._drained = asyncio.Event()
            await self._drained.wait()


async def _begin(connections: _Connections, readonly: bool) -> Any:
    """Borrow a connection from ``connections`` and start a transaction on it."""
    conn = await connections.acquire()
    try:
        await conn.execute("BEGIN READ ONLY" if readonly else "BEGIN")
    except BaseException:
        connections.release(conn, clean=False)
        raise
    return conn


async def _end(conn: Any, statement: str) -> None:
    """``COMMIT`` or ``ROLLBACK`` with the session reset in the same trip (see the module
    docstring), so the pool has nothing left to reset when the connection comes back."""
    reset = conn.get_reset_query()
    try:
        await conn.execute(f"{statement};\n{reset}" if reset else statement)
    except asyncpg.PostgresError:
        # The server refused the end (the transaction is over) and skipped the reset.
        if reset:
            try:
                await conn.execute(reset)
            except BaseException:
                conn.terminate()
                raise
        raise
    except BaseException:
        # Cancelled or cut off half-way: the session's state is unknown, so it is not
        # handed to anyone else (the pool opens a fresh connection instead).
        conn.terminate()
        raise


async def _fetch_alone(connections: _Connections, sql: str, params: tuple[Any, ...]) -> Any:
    """Borrow a connection, run one statement outside any transaction block, give it back."""
    conn = await connections.acquire()
    clean = False
    try:
        rows = await conn.fetch(sql, *params)
        clean = True
        return rows
    except asyncpg.PostgresError:
        clean = True  # the server refused the statement; the session is fine
        raise
    finally:
        connections.release(conn, clean=clean)


class PostgresDatabase:
    """A PostgreSQL database reached through asyncpg connections, pooled per named pool.

    Without ``pools`` there is one pool, ``default``, of ``min_size``..``max_size``
    connections where callers wait as long as it takes. With ``pools`` each gets up to
    ``size`` connections of its own (at least ``min(min_size, size)`` kept open).
    ``connect_timeout`` bounds each connection attempt. ``breaker`` guards connection
    attempts (default: :func:`database_breaker`).
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
        self._connections: dict[str, _Connections] | None = None

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
        if self._connections is not None:
            return
        connect = functools.partial(asyncpg.connect, self._url, timeout=self._connect_timeout)
        created: dict[str, _Connections] = {}
        try:
            for name, settings in self._pools.settings.items():
                connections = created[name] = _Connections(
                    self._guard.database, connect, min(self._min_size, settings.size)
                )
                await self._guard.connect(connections.open)
        except BaseException:
            for connections in created.values():
                await connections.close()
            raise
        self._connections = created

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
        if self._connections is None:
            raise DatabaseClosedError(self._guard.database)
        connections = self._connections[name]
        async with self._pools.slot(name):
            # BEGIN is part of the guarded step: a pooled connection the outage cut shows
            # up there, and counts toward the breaker like a refused connect.
            conn = await self._guard.connect(functools.partial(_begin, connections, readonly))
            try:
                tx = PostgresTransaction(conn)
                try:
                    yield tx
                except BaseException:
                    if not conn.is_closed():
                        await _end(conn, "ROLLBACK")
                    raise
                await _end(conn, "COMMIT")
            finally:
                # _end left it reset, or terminated it (release drops it then).
                connections.release(conn)
        for callback in tx._callbacks:
            callback()

    async def statement(self, sql: str, *params: Any, pool: str | None = None) -> list[Row]:
        """Run ONE statement as a transaction of its own and return its rows (a query's, or
        an ``INSERT``/``UPDATE ... RETURNING``'s): all of it commits, or none of it.

        One round trip instead of the three of BEGIN, the statement and COMMIT — for work
        that fits one statement (a ``WITH`` can chain several writes). The connection goes
        back to the pool without a session reset, so the statement must leave no session
        state behind (no ``SET``, ``LISTEN``, session advisory locks or ``set_config``).
        Pools, the breaker and their errors are as for :meth:`transaction`.
        """
        name = self._pools.name(pool)
        if self._connections is None:
            raise DatabaseClosedError(self._guard.database)
        connections = self._connections[name]
        async with self._pools.slot(name):
            # Guarded as a whole, like BEGIN: it is the connection's first use.
            records = await self._guard.connect(
                functools.partial(_fetch_alone, connections, to_numbered_params(sql), params)
            )
        return [tuple(record) for record in records]

    async def close(self) -> None:
        """Close every pool."""
        pools, self._connections = self._connections, None
        for connections in (pools or {}).values():
            await connections.close()
