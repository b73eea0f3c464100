"""Per-service databases: one ``Database`` port, SQLite (embedded) and PostgreSQL adapters,
bulkheaded pools, a database breaker, and schema migrations.

Open by URL — ``await open_database("sqlite:///var/orders.db")`` or
``await open_database("postgresql://...", pools={"api": {}, "analytics": {}},
migrations="migrations/")`` — and write SQL with ``?`` placeholders. Run a transaction in
a pool with ``db.transaction(pool="analytics", readonly=True)`` or
``db.pool("analytics").transaction()``. :class:`GroupCommitter` lets writes that queue up
behind a running transaction share the next one.
"""

from shipyard.storage.database import (
    Database,
    Dialect,
    PooledDatabase,
    Row,
    Transaction,
    open_database,
    redacted_url,
)
from shipyard.storage.errors import (
    DatabaseClosedError,
    DatabaseUnavailableError,
    MigrationChecksumError,
    MigrationError,
    PoolExhaustedError,
    StorageError,
    UnknownPoolError,
)
from shipyard.storage.group_commit import (
    DeferredOutcome,
    GroupCommitter,
    WriteAlone,
    WriteBatch,
    WriteNow,
)
from shipyard.storage.migrations import Migration, load_migrations, migrate
from shipyard.storage.monitor import DatabaseHealth, database_breaker
from shipyard.storage.pools import DEFAULT_POOLS, PoolConfig, PoolMetrics, PoolSettings, PoolView
from shipyard.storage.sqlite import SqliteDatabase

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shipyard.storage.postgres import PostgresDatabase


def __getattr__(name: str) -> object:
    # asyncpg is an optional extra: import the PostgreSQL adapter only when it is asked for.
    if name == "PostgresDatabase":
        from shipyard.storage.postgres import PostgresDatabase

        return PostgresDatabase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # the port
    "Database",
    "PooledDatabase",
    "Transaction",
    "Dialect",
    "Row",
    "open_database",
    "redacted_url",
    # adapters
    "SqliteDatabase",
    "PostgresDatabase",
    # bulkheaded pools
    "PoolSettings",
    "PoolConfig",
    "DEFAULT_POOLS",
    "PoolMetrics",
    "PoolView",
    # breaker and health
    "DatabaseHealth",
    "database_breaker",
    # group commit
    "GroupCommitter",
    "WriteBatch",
    "WriteAlone",
    "WriteNow",
    "DeferredOutcome",
    # migrations
    "migrate",
    "load_migrations",
    "Migration",
    # errors
    "StorageError",
    "DatabaseClosedError",
    "PoolExhaustedError",
    "UnknownPoolError",
    "DatabaseUnavailableError",
    "MigrationError",
    "MigrationChecksumError",
]
