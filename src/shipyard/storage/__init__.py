"""Per-service databases: one ``Database`` port, SQLite (embedded) and PostgreSQL adapters.

Open by URL — ``await open_database("sqlite:///var/orders.db")`` or
``await open_database("postgresql://...")`` — and write SQL with ``?`` placeholders.
"""

from shipyard.storage.database import Database, Dialect, Row, Transaction, open_database
from shipyard.storage.errors import DatabaseClosedError, StorageError
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
    "Transaction",
    "Dialect",
    "Row",
    "open_database",
    # adapters
    "SqliteDatabase",
    "PostgresDatabase",
    # errors
    "StorageError",
    "DatabaseClosedError",
]
