"""The ``Database`` port: transactions over a service's own database, chosen by URL.

SQL is written once with ``?`` placeholders (SQLite's style); the PostgreSQL adapter
translates them to ``$1, $2, ...``, so the same statement runs on both dialects. Rows come
back as plain tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from shipyard.core import ConfigError

if TYPE_CHECKING:
    from shipyard.storage.monitor import DatabaseHealth
    from shipyard.storage.pools import PoolMetrics, PoolView

Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]


class Transaction(Protocol):
    """One open transaction; every statement run through it commits or rolls back together."""

    async def execute(self, sql: str, *params: Any) -> None:
        """Run one statement."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """Run a query and return every row."""

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        """Run a query and return its first row, or ``None``."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed (never on rollback)."""


class Database(Protocol):
    """A service's database: ``async with db.transaction() as tx: await tx.execute(...)``."""

    @property
    def url(self) -> str:
        """The URL the database was opened with."""

    @property
    def dialect(self) -> Dialect:
        """``"sqlite"`` or ``"postgresql"`` — for the rare DDL that differs."""

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """Begin a transaction: commits when the block exits, rolls back on an exception.
        ``readonly=True`` promises it only reads (it may then run beside writers)."""

    async def close(self) -> None:
        """Close every connection; the database cannot be used afterwards."""


class PooledDatabase(Database, Protocol):
    """A :class:`Database` with named, bulkheaded pools and a health snapshot — what
    :func:`open_database` returns."""

    def transaction(
        self, *, pool: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[Transaction]:
        """Begin a transaction in ``pool`` (default: the first pool configured);
        ``readonly=True`` promises it only reads (it may then run beside writers)."""

    def pool(self, name: str) -> PoolView:
        """The named pool as a ``Database`` of its own."""

    def pool_metrics(self) -> dict[str, PoolMetrics]:
        """Size, in use, waiting and rejected, per pool."""

    def health(self) -> DatabaseHealth:
        """Breaker state and pool metrics, for health checks and dashboards."""


async def open_database(
    url: str, *, migrations: str | PathLike[str] | None = None, **options: Any
) -> PooledDatabase:
    """Open the database at ``url``: ``sqlite:///path/to.db`` or ``postgresql://...``.

    Keyword options go to the adapter (:class:`SqliteDatabase` or :class:`PostgresDatabase`),
    e.g. ``pools={"api": {}, "analytics": {"size": 3}}``. With ``migrations`` (a folder of
    ``0001_name.sql`` files) the pending migrations are applied before it is returned; if
    that fails the database is closed again and the error raised.
    """
    db: PooledDatabase
    if url.startswith("sqlite://"):
        from shipyard.storage.sqlite import SqliteDatabase

        sqlite = SqliteDatabase(sqlite_path(url), **options)
        await sqlite.connect()
        db = sqlite
    elif url.startswith(("postgresql://", "postgres://")):
        from shipyard.storage.postgres import PostgresDatabase

        postgres = PostgresDatabase(url, **options)
        await postgres.connect()
        db = postgres
    else:
        raise ConfigError("url", url, "must start with sqlite:/// or postgresql://")
    if migrations is not None:
        from shipyard.storage.migrations import migrate

        try:
            await migrate(db, migrations)
        except BaseException:
            await db.close()
            raise
    return db


def sqlite_path(url: str) -> str:
    """The file path in ``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` URLs.

    ``sqlite:///:memory:`` gives a private in-memory database.
    """
    if not url.startswith("sqlite:///"):
        raise ConfigError("url", url, "must look like sqlite:///path/to/file.db")
    path = url.removeprefix("sqlite:///")
    if not path:
        raise ConfigError("url", url, "must name a file: sqlite:///path/to/file.db")
    return path


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages, logs and metrics."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
