"""Ready-made checks for the dependencies services usually have.

Each factory returns an async check for ``Probes.add_readiness`` (or ``add_liveness`` for
the event-loop lag check). Given a client, pool or connection, a check reuses it; given a
URL, it creates ONE client lazily on the first probe and keeps it (a probe every few
seconds must not mean a connect every few seconds). Checks that own a client have
``aclose()``; ``Probes.aclose()`` calls it.

Failure messages are short and name no host, URL or secret — they are shown in probe
responses (see :mod:`shipyard.health.redaction`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Container, Coroutine
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, validation
from shipyard.health.errors import CheckFailedError
from shipyard.health.redaction import describe_error

T = TypeVar("T")

CONNECT_TIMEOUT = 2.0
"""Seconds a lazily created client may take to connect; the probe budget usually cuts first."""


def _unreachable(what: str, exc: BaseException) -> CheckFailedError:
    return CheckFailedError(f"{what} unreachable ({describe_error(exc)}); check it is running")


# -- SQLite ---------------------------------------------------------------------------


class SqliteCheck:
    """``SELECT 1`` on a SQLite database, in a worker thread (sqlite3 blocks)."""

    def __init__(self, target: str | os.PathLike[str] | Callable[[], sqlite3.Connection]) -> None:
        if callable(target):
            self._factory: Callable[[], sqlite3.Connection] = target
        elif isinstance(target, str | os.PathLike):
            path = os.fspath(target).removeprefix("sqlite://")
            if not path:
                raise ConfigError("path_or_connection_factory", target, "must name a file")
            self._factory = lambda: _open_read_only(path)
        else:
            raise ConfigError(
                "path_or_connection_factory",
                target,
                "must be a path, a sqlite:/// URL or a function returning a sqlite3.Connection",
            )
        self._connection: sqlite3.Connection | None = None
        # A hung query cannot be cancelled from asyncio; refusing to queue behind it keeps
        # probes from piling up threads on a locked database.
        self._busy = threading.Lock()

    async def __call__(self) -> None:
        await asyncio.to_thread(self._select_one)

    def _select_one(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise CheckFailedError("sqlite: the previous check is still running; database locked?")
        try:
            if self._connection is None:
                self._connection = self._factory()
            self._connection.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            self._close()
            raise CheckFailedError(f"sqlite: {describe_error(exc)}") from exc
        finally:
            self._busy.release()

    def _close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    async def aclose(self) -> None:
        """Close the connection this check opened."""
        await asyncio.to_thread(self._close)


def _open_read_only(path: str) -> sqlite3.Connection:
    # Read-only URI: a health check must fail on a missing file, not create an empty one.
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=1.0, check_same_thread=False)


def sqlite_check(
    path_or_connection_factory: str | os.PathLike[str] | Callable[[], sqlite3.Connection],
) -> SqliteCheck:
    """Check a SQLite database: a path / ``sqlite:///`` URL (opened read-only, once) or a
    function returning a connection (called once; the connection must allow use from
    another thread, ``check_same_thread=False``)."""
    return SqliteCheck(path_or_connection_factory)


# -- PostgreSQL -------------------------------------------------------------------------


class _Connecting(Generic[T]):
    """A connect that outlives the probe that started it.

    The probe budget (100 ms by default) can be shorter than a first connect (TLS, a remote
    database). Cancelling the connect with the probe would restart it on every probe and
    never finish, so the connect runs in its own task and the next probe picks it up.
    """

    def __init__(self, connect: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._connect = connect
        self._task: asyncio.Task[T] | None = None

    async def get(self) -> T:
        """The connected client, connecting (or joining the connect in progress) if needed."""
        task = self._task
        stale = task is not None and task.get_loop() is not asyncio.get_running_loop()
        if task is None or stale or (task.done() and task.exception() is not None):
            task = self._task = asyncio.create_task(self._connect())
            task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    def take(self) -> T | None:
        """Forget the client (connected or not) and return it if there is one to close."""
        task, self._task = self._task, None
        if task is None:
            return None
        if not task.done():
            task.cancel()
            return None
        return None if task.cancelled() or task.exception() else task.result()


def _consume_exception(task: asyncio.Task[Any]) -> None:
    # The probe that awaited this connect may have timed out; the next probe sees the
    # failure, so asyncio need not warn that the exception was never retrieved.
    if not task.cancelled():
        task.exception()


class PostgresCheck:
    """``SELECT 1`` through asyncpg, on the user's pool/connection or one of its own."""

    def __init__(self, target: Any) -> None:
        self._executor: Any = None
        self._connecting: _Connecting[Any] | None = None
        if isinstance(target, str):
            if not target.startswith(("postgresql://", "postgres://")):
                raise ConfigError("dsn", "<redacted>", "must be a postgresql:// URL or a pool")
            dsn = target

            async def connect() -> Any:
                import asyncpg

                return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)

            self._connecting = _Connecting(connect)
        elif hasattr(target, "fetchval"):
            self._executor = target
        else:
            raise ConfigError(
                "dsn", target, "must be a postgresql:// URL, asyncpg pool or connection"
            )
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        if self._connecting is None:
            try:
                await self._executor.fetchval("SELECT 1")
            except (TimeoutError, OSError) as exc:
                raise _unreachable("postgres", exc) from exc
            return
        # One query at a time: an asyncpg connection runs one operation at a time.
        async with self._lock:
            try:
                connection = await self._connecting.get()
            except Exception as exc:
                self._connecting.take()
                raise _unreachable("postgres", exc) from exc
            try:
                await connection.fetchval("SELECT 1")
            except BaseException as exc:
                # Broken, or cancelled mid-query (the protocol state is then unknown):
                # reconnect on the next probe.
                self._connecting.take()
                connection.terminate()
                if isinstance(exc, Exception):
                    raise _unreachable("postgres", exc) from exc
                raise

    async def aclose(self) -> None:
        """Close the connection this check opened (a pool passed in is left alone)."""
        if self._connecting is not None:
            connection = self._connecting.take()
            if connection is not None:
                await connection.close()


def postgres_check(dsn_or_pool: Any) -> PostgresCheck:
    """Check PostgreSQL with ``SELECT 1``: a ``postgresql://`` DSN (one connection, opened on
    the first probe and reopened after a failure) or an asyncpg pool/connection to reuse."""
    return PostgresCheck(dsn_or_pool)


# -- Redis --------------------------------------------------------------------------------


class RedisCheck:
    """``PING`` through ``redis.asyncio``."""

    def __init__(self, target: Any) -> None:
        if isinstance(target, str):
            if not target.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError("url", "<redacted>", "must be a redis:// URL or a client")
            self._url: str | None = target
            self._client: Any = None
        elif hasattr(target, "ping"):
            self._url, self._client = None, target
        else:
            raise ConfigError("url", target, "must be a redis:// URL or a redis.asyncio client")

    async def __call__(self) -> None:
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.from_url(
                str(self._url),
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=CONNECT_TIMEOUT,
            )
        try:
            await self._client.ping()
        except Exception as exc:
            raise _unreachable("redis", exc) from exc

    async def aclose(self) -> None:
        """Close the client this check created (a client passed in is left alone)."""
        if self._url is not None and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def redis_check(url_or_client: Any) -> RedisCheck:
    """Check Redis with ``PING``: a ``redis://`` URL (one lazily created client with its
    own reconnecting pool) or a ``redis.asyncio.Redis`` to reuse."""
    return RedisCheck(url_or_client)


# -- NATS -----------------------------------------------------------------------------------


class NatsCheck:
    """Connection state plus a ``flush`` round-trip (PING/PONG) to the NATS server."""

    def __init__(self, target: Any) -> None:
        self._client: Any = None
        self._connecting: _Connecting[Any] | None = None
        self._last_error: BaseException | None = None
        if isinstance(target, str):
            if not target.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ConfigError("url", "<redacted>", "must be a nats:// URL or a client")
            url = target

            async def connect() -> Any:
                return await self._connect(url)

            self._connecting = _Connecting(connect)
        elif hasattr(target, "flush") and hasattr(target, "is_connected"):
            self._client = target
        else:
            raise ConfigError("url", target, "must be a nats:// URL or a connected nats client")

    async def __call__(self) -> None:
        client = self._client
        if self._connecting is not None:
            try:
                client = await self._connecting.get()
            except Exception as exc:
                self._connecting.take()
                raise _unreachable("nats", self._last_error or exc) from exc
            if client.is_closed:
                # It gave up reconnecting: replace it on the next probe.
                self._connecting.take()
        if not client.is_connected:
            raise CheckFailedError("nats: not connected (reconnecting); check the server")
        try:
            await client.flush(timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise _unreachable("nats", exc) from exc

    async def _connect(self, url: str) -> Any:
        import nats

        async def remember(exc: Exception) -> None:
            # nats-py reports connect errors here (and would log each attempt at ERROR);
            # the last one says better than "no servers available" what went wrong.
            self._last_error = exc

        self._last_error = None
        # max_reconnect_attempts=1: with 0 nats-py retries forever, and a health check must
        # answer, not wait.
        return await nats.connect(
            url,
            connect_timeout=CONNECT_TIMEOUT,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            error_cb=remember,
        )

    async def aclose(self) -> None:
        """Close the client this check created (a client passed in is left alone)."""
        if self._connecting is not None:
            client = self._connecting.take()
            if client is not None and not client.is_closed:
                await client.close()


def nats_check(url_or_client: Any) -> NatsCheck:
    """Check NATS: a ``nats://`` URL (one lazily connected client) or a connected
    ``nats.aio.client.Client`` to reuse; fails when disconnected or a flush gets no PONG."""
    return NatsCheck(url_or_client)


# -- HTTP ---------------------------------------------------------------------------------------


class HttpCheck:
    """``GET url`` through one aiohttp session; the status must be in ``expect_status``."""

    def __init__(
        self,
        url: str,
        expect_status: Container[int],
        session: aiohttp.ClientSession | None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError("url", url, "must be an http:// or https:// URL")
        self._url = url
        self._expect = expect_status
        self._owns_session = session is None
        self._session = session

    async def __call__(self) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT)
            )
        try:
            async with self._session.get(self._url, allow_redirects=False) as response:
                status = response.status
                await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _unreachable("http", exc) from exc
        if status not in self._expect:
            raise CheckFailedError(f"http: got status {status}, which is not an expected status")
        return f"status {status}"

    async def aclose(self) -> None:
        """Close the session this check created (a session passed in is left alone)."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()


def http_check(
    url: str,
    *,
    expect_status: Container[int] = range(200, 400),
    session: aiohttp.ClientSession | None = None,
) -> HttpCheck:
    """Check an HTTP dependency: ``GET url`` (redirects not followed) must answer with a
    status in ``expect_status``. One session is created on the first probe and kept."""
    return HttpCheck(url, expect_status, session)


# -- disk space ---------------------------------------------------------------------------------


class DiskSpaceCheck:
    """Free space on the filesystem holding ``path`` must stay above the minimum."""

    def __init__(
        self, path: str | os.PathLike[str], min_free_bytes: int | None, min_free_ratio: float | None
    ) -> None:
        if min_free_bytes is None and min_free_ratio is None:
            raise ConfigError(
                "min_free_bytes", None, "give min_free_bytes or min_free_ratio (or both)"
            )
        if min_free_bytes is not None:
            validation.at_least("min_free_bytes", min_free_bytes, 1)
        if min_free_ratio is not None:
            validation.fraction("min_free_ratio", min_free_ratio)
        self._path = os.fspath(path)
        self._min_bytes = min_free_bytes
        self._min_ratio = min_free_ratio

    async def __call__(self) -> str:
        # statvfs on a network filesystem can block: keep it off the event loop.
        try:
            usage = await asyncio.to_thread(shutil.disk_usage, self._path)
        except OSError as exc:
            raise CheckFailedError(f"disk: cannot stat the path ({describe_error(exc)})") from exc
        ratio = usage.free / usage.total if usage.total else 0.0
        summary = f"{_mib(usage.free)} free ({ratio:.1%})"
        if self._min_bytes is not None and usage.free < self._min_bytes:
            raise CheckFailedError(
                f"disk: {summary}, below the {_mib(self._min_bytes)} minimum; free some space"
            )
        if self._min_ratio is not None and ratio < self._min_ratio:
            raise CheckFailedError(
                f"disk: {summary}, below the {self._min_ratio:.1%} minimum; free some space"
            )
        return summary


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def disk_space_check(
    path: str | os.PathLike[str],
    *,
    min_free_bytes: int | None = None,
    min_free_ratio: float | None = None,
) -> DiskSpaceCheck:
    """Check free disk space where ``path`` lives: at least ``min_free_bytes`` and/or a
    ``min_free_ratio`` (0-1] of the filesystem."""
    return DiskSpaceCheck(path, min_free_bytes, min_free_ratio)


# -- event-loop lag (liveness) --------------------------------------------------------------------


class EventLoopLagCheck:
    """Fails when the event loop was blocked longer than ``max_lag`` recently.

    A sampler task (started on the first probe) sleeps ``interval`` seconds again and again
    and records how late it woke up. The check reports the worst lag since the previous
    probe, so a loop that freezes now and then is caught even if it is free at probe time.
    """

    def __init__(self, max_lag: float, interval: float, clock: Clock) -> None:
        self.max_lag = validation.positive("max_lag", max_lag)
        self.interval = validation.positive("interval", interval)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._worst = 0.0

    async def __call__(self) -> str:
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.create_task(self._sample(), name="shipyard-health-loop-lag")
        worst, self._worst = self._worst, 0.0
        if worst > self.max_lag:
            raise CheckFailedError(
                f"event loop blocked for {worst * 1000:.0f} ms (max {self.max_lag * 1000:.0f} ms);"
                " look for blocking calls in async code"
            )
        return f"worst lag {worst * 1000:.1f} ms"

    async def _sample(self) -> None:
        clock, interval = self._clock, self.interval
        while True:
            before = clock.monotonic()
            await clock.sleep(interval)
            self._worst = max(self._worst, clock.monotonic() - before - interval)

    async def aclose(self) -> None:
        """Stop the sampler task."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def event_loop_lag_check(
    max_lag: float, *, interval: float = 0.25, clock: Clock = SYSTEM_CLOCK
) -> EventLoopLagCheck:
    """A liveness check: fail when the event loop was blocked more than ``max_lag`` seconds
    since the previous probe (measured every ``interval`` seconds)."""
    return EventLoopLagCheck(max_lag, interval, clock)
