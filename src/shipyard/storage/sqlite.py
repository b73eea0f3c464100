"""SQLite adapter: connections owned by dedicated worker threads.

sqlite3 blocks, so every statement runs on its connection's own thread and the event loop
only awaits the result. Writes go through one writer connection: transactions in this
process queue on an ``asyncio.Lock`` (SQLite has a single writer anyway); other processes
sharing the file wait on ``busy_timeout``. Write transactions start with
``BEGIN IMMEDIATE`` so the write lock is taken up front instead of failing half-way with
``SQLITE_BUSY``.

Pools (:mod:`shipyard.storage.pools`) are bulkheads on concurrency. A transaction opened
with ``readonly=True`` runs on a read-only connection of its pool's own (up to ``size``
of them, opened on first use, each with its own thread), so in WAL mode a slow
``analytics`` report blocks neither ``api`` reads nor the writer. Write transactions of
every pool still share the one writer: a slow write holds up other writes whatever
its pool. ``:memory:`` databases are private to a connection, so there every
transaction uses the writer.

A round trip to the worker thread costs far more than a small SQLite statement, so trips
are saved wherever no caller waits for an answer: the ``BEGIN`` travels with the
transaction's first statement; :meth:`SqliteTransaction.defer` queues writes whose result
nobody needs and sends them with the next awaited statement or with the ``COMMIT`` (a
transaction made only of deferred writes is ONE trip); :meth:`SqliteTransaction.defer_call`
defers a function of several statements that keeps its own outcome (an event store's
append: insert, check, skip the rest on conflict), and :meth:`SqliteDatabase.write` runs
one as a whole transaction; and a read-only transaction's ``COMMIT`` is posted without
waiting (the worker runs jobs in order, so the connection's next user queues behind it).
A one-trip transaction whose caller is cancelled before the worker reaches it is dropped:
nothing of it was written. The thread hand-off is a bare queue plus
``call_soon_threadsafe`` rather than a general executor.

On a fast disk even one trip (two thread hand-offs, ~70 µs) costs about as much as the
commit itself, so :meth:`SqliteDatabase.write_now` may commit a LONE write on the event
loop: only when the writer connection is idle (the worker holds a lock while it runs
anything, and answers its callers only after letting go of it), the pool has room, no
other process holds the write lock (no waiting out ``busy_timeout`` on the loop), and
commits are fast (``inline_write_budget``). The event store uses it for a save that has
no other save in flight; concurrent saves keep going to the thread and share commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.storage.database import Dialect, Row
from shipyard.storage.errors import DatabaseClosedError
from shipyard.storage.monitor import DatabaseHealth
from shipyard.storage.pools import PoolConfig, PoolMetrics, Pools, PoolView

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
OnConnect = Callable[[sqlite3.Connection], None]
"""Called with each new connection on its own thread (register functions, collations)."""

# Transactions without a pool share this many connections' worth of concurrency.
DEFAULT_POOL_SIZE = 10

_Job = tuple[
    Callable[..., Any],
    tuple[Any, ...],
    asyncio.AbstractEventLoop | None,
    "asyncio.Future[Any] | None",
]
# A deferred write: (sql, params) for execute, (sql, rows) with many=True for executemany,
# or (fn, args) with many=None for ``fn(conn, *args)`` (see ``SqliteTransaction.defer_call``).
_Deferred = tuple[Any, Any, bool | None]


def _resolve(future: asyncio.Future[Any] | None, ok: bool, value: Any) -> None:
    if future is None or future.done():  # the awaiting task was cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# At most this many queued one-trip write transactions share one SQLite commit.
_MAX_GROUP = 64
# Commits on the loop are judged by a moving average (so one slow fsync does not send
# every write to the thread, a slow disk does), and while it is over budget writes stay
# off the loop for this long before one is tried there again.
_COST_WEIGHT = 0.1
_INLINE_BACKOFF = 1.0
_monotonic = time.monotonic
_perf_counter = time.perf_counter


# Outcomes to send to the loop once the connection is free: (loop, future, ok, value).
_Answers = list[tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any] | None", bool, Any]]


def _run(job: _Job, answers: _Answers) -> None:
    fn, args, loop, future = job
    try:
        result = fn(*args)
    except BaseException as error:
        if loop is not None:
            answers.append((loop, future, False, error))
    else:
        # Posted jobs (no future) need no answer, so they cost the loop no wake-up.
        if loop is not None:
            answers.append((loop, future, True, result))


def _work(jobs: queue.SimpleQueue[_Job | None], busy: threading.Lock) -> None:
    held: list[_Job | None] = []
    answers: _Answers = []
    while True:
        job = held.pop() if held else jobs.get()
        if job is None:
            return
        # ``busy`` marks the connection in use: the loop may run a write on it itself
        # (``SqliteDatabase.write_now``) only while this thread holds nothing. It is
        # released before the callers hear their outcome, so a caller that goes on to
        # write finds the connection free.
        with busy:
            _handle(job, jobs, held, answers)
        for loop, future, ok, value in answers:
            loop.call_soon_threadsafe(_resolve, future, ok, value)
        answers.clear()


def _handle(
    job: _Job, jobs: queue.SimpleQueue[_Job | None], held: list[_Job | None], answers: _Answers
) -> None:
    if _one_trip(job):
        if _withdrawn(job):
            return
        group = [job]
        # One-trip transactions queued behind this one commit with it (see
        # ``_commit_group``); the first job of another kind waits for the next turn.
        while len(group) < _MAX_GROUP:
            try:
                follower = jobs.get_nowait()
            except queue.Empty:
                break
            if follower is not None and _one_trip(follower, job[1][1]):
                if not _withdrawn(follower):
                    group.append(follower)
            else:
                held.append(follower)
                break
        if len(group) > 1:
            _commit_group(group, answers)
            return
    _run(job, answers)


def _one_trip(job: _Job, begin: str | None = None) -> bool:
    """Whether ``job`` is a whole transaction in one trip (BEGIN, deferred writes, COMMIT),
    with the same BEGIN as ``begin`` when given."""
    fn, args = job[0], job[1]
    if getattr(fn, "__func__", None) is not _COMMIT or args[1] is None:
        return False
    return begin is None or args[1] == begin


def _withdrawn(job: _Job) -> bool:
    """Whether a one-trip transaction's caller was cancelled before the worker got to it:
    nothing of it has reached the database, so it is dropped instead of committed."""
    future = job[3]
    return future is not None and future.cancelled()


def _commit_group(group: list[_Job], answers: _Answers) -> None:
    """Group commit: several queued one-trip write transactions in ONE SQLite transaction.

    Each was complete when queued (nothing of it waits on the loop), so running them back
    to back under one BEGIN/COMMIT changes nothing any caller can observe, except that
    the file writes its WAL once instead of once each. Every caller hears of success only
    after the shared COMMIT. If anything fails, the group rolls back and each transaction
    runs again on its own, so a failure stays with the transaction that caused it.
    """
    conn: sqlite3.Connection = group[0][1][0]
    try:
        conn.execute(group[0][1][1])
    except BaseException as error:
        # BEGIN failed (busy): each would have failed alone the same way.
        for _, _, loop, future in group:
            if loop is not None:
                answers.append((loop, future, False, error))
        return
    try:
        for _, (_, _, queued), _, _ in group:
            _apply(conn, queued)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        for job in group:
            _run(job, answers)
        return
    for _, _, loop, future in group:
        if loop is not None:
            answers.append((loop, future, True, None))


def apply_write(conn: sqlite3.Connection, write: _Deferred) -> None:
    """Run one deferred write on ``conn``: ``(sql, params, False)`` executes,
    ``(sql, rows, True)`` executes many, ``(fn, args, None)`` calls ``fn(conn, *args)``."""
    op, params, many = write
    if many is None:
        op(conn, *params)
    elif many:
        conn.executemany(op, params)
    else:
        conn.execute(op, params)


def _apply(conn: sqlite3.Connection, queued: list[_Deferred]) -> None:
    """Run deferred writes (and deferred calls) in order on ``conn``."""
    for write in queued:
        apply_write(conn, write)


class _Worker:
    """One sqlite3 connection and the thread that runs every statement on it, in order."""

    __slots__ = ("_busy", "_jobs", "_url", "conn")

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._jobs: queue.SimpleQueue[_Job | None] | None = queue.SimpleQueue()
        self._busy = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        threading.Thread(
            target=_work, args=(self._jobs, self._busy), name=name, daemon=True
        ).start()

    def hold_if_idle(self) -> sqlite3.Connection | None:
        """The connection, held away from the thread, if nothing is queued or running on
        it now; ``None`` otherwise. Give it back with :meth:`unhold`."""
        jobs, conn = self._jobs, self.conn
        if jobs is None or conn is None or not jobs.empty():
            return None
        if not self._busy.acquire(blocking=False):
            return None
        return conn

    def unhold(self) -> None:
        """End a :meth:`hold_if_idle` (the thread may run jobs again)."""
        self._busy.release()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on the worker thread."""
        return await self.submit(fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(conn, *args)`` now; the future gets its result."""
        if self._jobs is None:
            raise DatabaseClosedError(self._url)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, (self.conn, *args), loop, future))
        return future

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """``fn(conn, *args)`` on the worker thread, without waiting (``fn`` must not raise)."""
        if self._jobs is not None:
            self._jobs.put((fn, (self.conn, *args), None, None))

    async def stop(self) -> None:
        """Close the connection and end the thread."""
        if self._jobs is None:
            return
        if self.conn is not None:
            await self.call(_close)
        jobs, self._jobs, self.conn = self._jobs, None, None
        jobs.put(None)


class SqliteTransaction:
    """A transaction on a :class:`SqliteDatabase` (see :class:`~shipyard.storage.Transaction`)."""

    __slots__ = (
        "_begin",
        "_begun",
        "_callbacks",
        "_failed",
        "_lock",
        "_locked",
        "_queued",
        "_worker",
    )

    def __init__(
        self, worker: _Worker, begin: str = "BEGIN IMMEDIATE", lock: asyncio.Lock | None = None
    ) -> None:
        self._worker = worker
        self._begin = begin
        # The writer's lock is taken at the first statement sent, not at ``transaction()``,
        # and handed on as soon as the COMMIT is queued (see ``_finish``).
        self._lock = lock
        self._locked = False
        self._begun = False
        self._callbacks: list[Callable[[], None]] = []
        self._queued: list[_Deferred] = []
        # The first deferred write that failed: the transaction can then only roll back.
        self._failed: BaseException | None = None

    def _prologue(self) -> tuple[str | None, list[_Deferred]]:
        """What must run before the next statement: BEGIN (once) and the deferred writes."""
        begin = None if self._begun else self._begin
        queued, self._queued = self._queued, []
        # Even on failure or cancellation the BEGIN may have run: end it at exit.
        self._begun = True
        return begin, queued

    async def _take_lock(self) -> None:
        if self._lock is not None and not self._locked:
            await self._lock.acquire()
            self._locked = True

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            assert self._lock is not None
            self._lock.release()

    async def _finish(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue the COMMIT or ROLLBACK, hand the lock on, then wait for the outcome.

        The worker runs jobs in order, so the next transaction's statements queue behind
        this end and see its outcome; meanwhile the worker never idles waiting for the
        loop to hand the lock over.
        """
        await self._take_lock()
        try:
            future = self._worker.submit(fn, *args)
        finally:
            self._unlock()
        await future

    async def _run(self, fn: Callable[..., T], sql: Any, params: Any) -> T:
        # ``fn(conn, sql, params)``: a statement, or (``_invoke``) a caller's function.
        await self._take_lock()
        begin, queued = self._prologue()
        if begin is None and not queued:
            return await self._worker.call(fn, sql, params)
        # BEGIN and deferred writes ride along with this statement: one round trip.
        return await self._worker.call(self._then, begin, queued, fn, sql, params)

    def _then(
        self,
        conn: sqlite3.Connection,
        begin: str | None,
        queued: list[_Deferred],
        fn: Callable[..., T],
        sql: Any,
        params: Any,
    ) -> T:
        self._flush(conn, begin, queued)
        return fn(conn, sql, params)

    def _flush(self, conn: sqlite3.Connection, begin: str | None, queued: list[_Deferred]) -> None:
        # Runs on the worker thread; the loop reads ``_failed`` only after this job ends.
        if begin is not None:
            conn.execute(begin)
        try:
            _apply(conn, queued)
        except BaseException as error:
            if self._failed is None:
                self._failed = error
            raise

    def _commit(self, conn: sqlite3.Connection, begin: str | None, queued: list[_Deferred]) -> None:
        try:
            self._flush(conn, begin, queued)
            conn.execute("COMMIT")
        except BaseException:
            # Leave the connection clean for the next transaction whatever failed.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def defer(self, sql: str, *params: Any) -> None:
        """Queue one statement whose result nobody needs (an ``INSERT``/``UPDATE``).

        It runs, in order, with the next awaited statement or at commit, sparing a thread
        round trip. If it fails, the error is raised from that awaited statement or from
        the ``async with`` block's commit, and the whole transaction rolls back (commit
        refuses even if the caller caught the error).
        """
        self._queued.append((sql, params, False))

    def defer_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """:meth:`defer` for one statement run once per parameter row."""
        self._queued.append((sql, list(rows), True))

    def defer_call(self, fn: Callable[..., object], *args: Any) -> None:
        """:meth:`defer` for ``fn(conn, *args)``: a step of several statements run on the
        connection's thread, in order with the deferred writes, that keeps its own outcome.

        ``fn`` runs inside the transaction (and, within a group commit, may run a second
        time if the group is rolled back and replayed, so it must start from scratch each
        time). What it returns is dropped; it reports back by setting state on an object
        the caller reads after the commit. Raising fails the transaction like a failed
        :meth:`defer`. An error ``fn`` catches leaves the transaction usable: SQLite undoes
        just the failed statement.
        """
        self._queued.append((fn, args, None))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on the connection's thread, after the deferred writes; its
        result (or error). Several statements for one round trip."""
        return await self._run(_invoke, fn, args)

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


_COMMIT = SqliteTransaction._commit


class SqliteDatabase:
    """A SQLite file in WAL mode, used from asyncio.

    ``synchronous="NORMAL"`` (default) survives process crashes without losing committed
    transactions; ``"FULL"`` also survives power loss at the cost of an fsync per commit.
    ``busy_timeout`` is how long a transaction waits for another process's write lock.
    ``pools`` configures named pools (default: one pool, ``default``, of
    ``DEFAULT_POOL_SIZE`` where callers wait as long as it takes); ``clock`` times their
    ``max_wait``. ``on_connect`` runs on every new connection, writer and readers.
    ``inline_write_budget`` (seconds; ``0`` turns it off) bounds how long a commit may
    take for :meth:`write_now` to run lone writes on the event loop.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
        pools: PoolConfig | None = None,
        on_connect: OnConnect | None = None,
        clock: Clock = SYSTEM_CLOCK,
        inline_write_budget: float = 0.002,
    ) -> None:
        validation.one_of("synchronous", synchronous, ("OFF", "NORMAL", "FULL", "EXTRA"))
        self._busy_ms = int(validation.positive("busy_timeout", busy_timeout) * 1000)
        self._inline_budget = validation.non_negative("inline_write_budget", inline_write_budget)
        # What commits on the loop take (a moving average); while it is over the budget,
        # writes go to the thread until ``_inline_resume``, then one more is tried there.
        self._inline_cost = 0.0
        self._inline_resume = 0.0
        self._path = path
        self._synchronous = synchronous
        self._on_connect = on_connect
        self._pools = Pools.build(self.url, pools, default_size=DEFAULT_POOL_SIZE, clock=clock)
        self._writer: _Worker | None = None
        self._lock = asyncio.Lock()
        # Idle read-only connections per pool, and every one opened (to close them).
        self._idle: dict[str, list[_Worker]] = {name: [] for name in self._pools.settings}
        self._readers: list[_Worker] = []

    @property
    def url(self) -> str:
        """``sqlite:///`` followed by the path."""
        return f"sqlite:///{self._path}"

    @property
    def dialect(self) -> Dialect:
        """Always ``"sqlite"``."""
        return "sqlite"

    async def connect(self) -> None:
        """Open the writer connection on its thread (``open_database`` does this)."""
        if self._writer is not None:
            return
        writer = _Worker(self.url, f"shipyard-sqlite {self._path}")
        try:
            writer.conn = await writer.call(self._open, False)
        except BaseException:
            await writer.stop()
            raise
        self._writer = writer

    def _open(self, _conn: object, readonly: bool) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        if readonly:
            # A reader that tries to write fails at once instead of racing the writer.
            conn.execute("PRAGMA query_only=ON")
        else:
            if self._path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        if self._on_connect is not None:
            self._on_connect(conn)
        return conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on the writer's thread."""
        if self._writer is None:
            raise DatabaseClosedError(self.url)
        return await self._writer.call(fn, *args)

    async def _take_reader(self, pool: str) -> _Worker:
        idle = self._idle[pool]
        if idle:
            return idle.pop()
        # The pool's bulkhead caps how many run at once, so at most ``size`` get opened.
        reader = _Worker(self.url, f"shipyard-sqlite {self._path} {pool} reader")
        try:
            reader.conn = await reader.call(self._open, True)
        except BaseException:
            await reader.stop()
            raise
        self._readers.append(reader)
        return reader

    def pool(self, name: str) -> PoolView:
        """The named pool as a ``Database`` of its own."""
        return PoolView(self, self._pools.name(name))

    def pool_metrics(self) -> dict[str, PoolMetrics]:
        """Size, in use, waiting and rejected, per pool."""
        return self._pools.metrics()

    def health(self) -> DatabaseHealth:
        """Pool metrics (a local file has no breaker)."""
        return DatabaseHealth(self.url, "sqlite", None, self._pools.metrics())

    @asynccontextmanager
    async def transaction(
        self, *, pool: str | None = None, readonly: bool = False
    ) -> AsyncIterator[SqliteTransaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` when the block raises) in
        ``pool`` (default: the first configured). ``readonly=True``: a read-only snapshot
        on one of the pool's reader connections, beside the writer.

        Raises ``PoolExhaustedError`` when the pool has no room within its ``max_wait``.
        """
        name = self._pools.name(pool)
        if self._writer is None:
            raise DatabaseClosedError(self.url)
        async with self._pools.slot(name):
            writer = self._writer
            if writer is None:  # closed while this caller waited for the pool
                raise DatabaseClosedError(self.url)
            reader: _Worker | None = None
            if readonly and self._path != ":memory:":
                reader = await self._take_reader(name)
                tx = SqliteTransaction(reader, "BEGIN")
            else:
                tx = SqliteTransaction(writer, lock=self._lock)
            # The commit/rollback scope is inlined rather than a nested context manager:
            # this runs once per transaction, and each generator layer costs the loop time.
            try:
                try:
                    yield tx
                except BaseException:
                    await _abort(tx)
                    raise
                await _end(tx)
            finally:
                tx._unlock()
                if reader is not None and reader.conn is not None:  # not closed meanwhile
                    self._idle[name].append(reader)
        for callback in tx._callbacks:
            callback()

    async def write(
        self, fn: Callable[[sqlite3.Connection], object], *, pool: str | None = None
    ) -> None:
        """Run ``fn(conn)`` as a write transaction of its own on the writer's thread:
        ``BEGIN IMMEDIATE``, ``fn``, ``COMMIT`` — ONE round trip (``ROLLBACK`` and the
        error raised here if ``fn`` raises). What ``fn`` returns is dropped: it reports by
        setting state on an object the caller reads afterwards.

        The cheapest write there is, for work that needs no answer before it commits. It
        may share a group commit with the one-trip transactions queued with it, so ``fn``
        must start from scratch if it runs a second time (a failed group is replayed one
        transaction at a time). Pools work as for :meth:`transaction`.
        """
        name = self._pools.name(pool)
        async with self._pools.slot(name):
            writer = self._writer
            if writer is None:
                raise DatabaseClosedError(self.url)
            tx = SqliteTransaction(writer, lock=self._lock)
            await tx._finish(tx._commit, tx._begin, [(fn, (), None)])

    def write_now(
        self, fn: Callable[[sqlite3.Connection], object], *, pool: str | None = None
    ) -> bool:
        """Run ``fn(conn)`` as a write transaction of its own right here, on the event
        loop — ``BEGIN IMMEDIATE``, ``fn``, ``COMMIT`` — if that needs no waiting at all;
        ``False`` (nothing done) when it would: then use :meth:`write`.

        It runs only when the writer connection is idle (nothing queued or running on its
        thread, no transaction open), ``pool`` has a free slot, no other process holds
        the file's write lock, and commits made here take ``inline_write_budget`` or less
        on average (when they take longer, writes go to the thread for a second before
        one is tried here again). It raises what ``fn`` raises, after ``ROLLBACK``.

        For a LONE write: it saves :meth:`write`'s two thread hand-offs, which on a fast
        disk cost more than the commit, but it blocks the loop for the commit, and writes
        made this way share no group commit. The event store uses it only for a save that
        arrives with no other save in flight (see ``GroupCommitter``).
        """
        writer = self._writer
        if writer is None or not self._inline_budget or self._lock.locked():
            return False
        if self._inline_resume and _monotonic() < self._inline_resume:
            return False
        name = self._pools.name(pool)
        if not self._pools.try_take(name):
            return False
        try:
            conn = writer.hold_if_idle()
            if conn is None:
                return False
            try:
                return self._commit_here(conn, fn)
            finally:
                writer.unhold()
        finally:
            self._pools.give_back(name)

    def _commit_here(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], object]
    ) -> bool:
        if conn.in_transaction:  # cannot happen while the lock is free; never risk it
            return False
        started = _perf_counter()
        # Another process holding the write lock must not make the loop wait out the busy
        # timeout: try once, and on "locked" leave the write to the thread.
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        finally:
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        try:
            fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        cost = _perf_counter() - started
        if self._inline_resume:  # the first try after backing off: start afresh
            self._inline_resume = 0.0
            self._inline_cost = cost
        else:
            self._inline_cost += (cost - self._inline_cost) * _COST_WEIGHT
        if self._inline_cost > self._inline_budget:
            self._inline_resume = _monotonic() + _INLINE_BACKOFF
        return True

    async def close(self) -> None:
        """Close every connection and stop their threads."""
        readers, self._readers = self._readers, []
        for idle in self._idle.values():
            idle.clear()
        for reader in readers:
            await reader.stop()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()


async def _abort(tx: SqliteTransaction) -> None:
    """The block raised: drop the deferred writes and roll back what was sent."""
    tx._queued.clear()
    if tx._begun:
        # The worker runs jobs in order, so the rollback lands before any later
        # BEGIN even if this task is cancelled again while awaiting it.
        await tx._finish(_rollback_if_open)


async def _end(tx: SqliteTransaction) -> None:
    """The block completed: commit (or roll back if a deferred write failed)."""
    if tx._failed is not None:
        # A deferred write failed and the caller carried on: nothing of it may commit.
        await tx._finish(_rollback_if_open)
        raise tx._failed
    begin, queued = tx._prologue()
    if queued:
        # BEGIN, the deferred writes and COMMIT in one trip (which may share a group
        # commit with the one-trip transactions queued behind it: see ``_work``).
        await tx._finish(tx._commit, begin, queued)
    elif begin is None:
        if tx._lock is None and tx._begin == "BEGIN":
            # A read-only snapshot has nothing to lose at COMMIT: post it, do not wait.
            tx._worker.post(_end_read)
        else:
            await tx._finish(tx._commit, None, queued)


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    # BEGIN itself may have failed (busy timeout): then there is nothing to roll back.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _end_read(conn: sqlite3.Connection) -> None:
    # Posted, so nobody hears an error: leave the connection usable whatever happens.
    try:
        conn.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def _close(conn: sqlite3.Connection) -> None:
    conn.close()


def _invoke(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    return fn(conn, *args)


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> None:
    conn.execute(sql, params)


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    conn.executemany(sql, rows)


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _fetchone(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Row | None:
    row: Row | None = conn.execute(sql, params).fetchone()
    return row
