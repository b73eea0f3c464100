"""SQLite adapter: one connection owned by a dedicated worker thread.

sqlite3 blocks, so every statement runs on the connection's own thread and the event loop
only awaits the result. One connection per ``SqliteDatabase`` means transactions in this
process queue on an ``asyncio.Lock`` (SQLite has a single writer anyway); other processes
sharing the file wait on ``busy_timeout``. Transactions start with ``BEGIN IMMEDIATE`` so
the write lock is taken up front instead of failing half-way with ``SQLITE_BUSY``.

A round trip to the worker thread costs far more than a small SQLite statement, so the
``BEGIN`` travels with the transaction's first statement, and the thread hand-off is a
bare queue plus ``call_soon_threadsafe`` rather than a general executor.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from shipyard.core import validation
from shipyard.storage.database import Dialect, Row
from shipyard.storage.errors import DatabaseClosedError

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the awaiting task was cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        fn, args, loop, future = job
        try:
            result = fn(*args)
        except BaseException as error:
            loop.call_soon_threadsafe(_resolve, future, False, error)
        else:
            loop.call_soon_threadsafe(_resolve, future, True, result)


def _begin_then(conn: sqlite3.Connection, fn: Callable[..., T], sql: str, params: Any) -> T:
    conn.execute("BEGIN IMMEDIATE")
    return fn(conn, sql, params)


class SqliteTransaction:
    """A transaction on a :class:`SqliteDatabase` (see :class:`~shipyard.storage.Transaction`)."""

    __slots__ = ("_begun", "_callbacks", "_db")

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._begun = False
        self._callbacks: list[Callable[[], None]] = []

    async def _run(self, fn: Callable[..., T], sql: str, params: Any) -> T:
        if self._begun:
            return await self._db._call(fn, sql, params)
        # BEGIN rides along with the first statement: one thread round trip, not two.
        try:
            return await self._db._call(_begin_then, fn, sql, params)
        finally:
            # Even on failure or cancellation the BEGIN may have run: end it at exit.
            self._begun = True

    async def execute(self, sql: str, *params: Any) -> None:
        """Run one statement."""
        await self._run(_execute, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""
        await self._run(_executemany, sql, list(rows))

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """Run a query and return every row."""
        return await self._run(_fetch, sql, params)

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        """Run a query and return its first row, or ``None``."""
        return await self._run(_fetchone, sql, params)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed."""
        self._callbacks.append(callback)


class SqliteDatabase:
    """A SQLite file in WAL mode, used from asyncio.

    ``synchronous="NORMAL"`` (default) survives process crashes without losing committed
    transactions; ``"FULL"`` also survives power loss at the cost of an fsync per commit.
    ``busy_timeout`` is how long a transaction waits for another process's write lock.
    """

    def __init__(
        self, path: str, *, synchronous: Synchronous = "NORMAL", busy_timeout: float = 5.0
    ) -> None:
        validation.one_of("synchronous", synchronous, ("OFF", "NORMAL", "FULL", "EXTRA"))
        self._busy_ms = int(validation.positive("busy_timeout", busy_timeout) * 1000)
        self._path = path
        self._synchronous = synchronous
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """``sqlite:///`` followed by the path."""
        return f"sqlite:///{self._path}"

    @property
    def dialect(self) -> Dialect:
        """Always ``"sqlite"``."""
        return "sqlite"

    async def connect(self) -> None:
        """Open the connection on the worker thread (``open_database`` does this)."""
        if self._jobs is not None:
            return
        self._jobs = queue.SimpleQueue()
        threading.Thread(
            target=_work, args=(self._jobs,), name=f"shipyard-sqlite {self._path}", daemon=True
        ).start()
        self._conn = await self._call(self._open)

    def _open(self, _conn: object = None) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        if self._path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._jobs is None:
            raise DatabaseClosedError(self.url)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, (self._conn, *args), loop, future))
        return await future

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` when the block raises)."""
        if self._jobs is None:
            raise DatabaseClosedError(self.url)
        async with self._lock:
            tx = SqliteTransaction(self)
            try:
                yield tx
            except BaseException:
                if tx._begun:
                    # The worker runs jobs in order, so the rollback lands before any later
                    # BEGIN even if this task is cancelled again while awaiting it.
                    await self._call(_rollback_if_open)
                raise
            if tx._begun:
                await self._call(_commit)
        for callback in tx._callbacks:
            callback()

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        if self._jobs is None:
            return
        if self._conn is not None:
            await self._call(_close)
        jobs, self._jobs, self._conn = self._jobs, None, None
        jobs.put(None)  # ends the worker thread


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    # BEGIN itself may have failed (busy timeout): then there is nothing to roll back.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _close(conn: sqlite3.Connection) -> None:
    conn.close()


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> None:
    conn.execute(sql, params)


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    conn.executemany(sql, rows)


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _fetchone(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Row | None:
    row: Row | None = conn.execute(sql, params).fetchone()
    return row
