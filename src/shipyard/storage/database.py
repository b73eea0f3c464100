"""The ``Database`` port: transactions over a service's own database, chosen by URL.

SQL is written once with ``?`` placeholders (SQLite's style); the PostgreSQL adapter
translates them to ``$1, $2, ...``, so the same statement runs on both dialects. Rows come
back as plain tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

from shipyard.core import ConfigError

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

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """Begin a transaction: commits when the block exits, rolls back on an exception."""

    async def close(self) -> None:
        """Close every connection; the database cannot be used afterwards."""


async def open_database(url: str, **options: Any) -> Database:
    """Open the database at ``url``: ``sqlite:///path/to.db`` or ``postgresql://...``.

    Keyword options go to the adapter (:class:`SqliteDatabase` or :class:`PostgresDatabase`).
    """
    if url.startswith("sqlite://"):
        from shipyard.storage.sqlite import SqliteDatabase

        sqlite = SqliteDatabase(sqlite_path(url), **options)
        await sqlite.connect()
        return sqlite
    if url.startswith(("postgresql://", "postgres://")):
        from shipyard.storage.postgres import PostgresDatabase

        postgres = PostgresDatabase(url, **options)
        await postgres.connect()
        return postgres
    raise ConfigError("url", url, "must start with sqlite:/// or postgresql://")


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
