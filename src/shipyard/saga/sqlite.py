"""The saga log in a service's SQLite database (the embedded default)."""

from __future__ import annotations

from typing import ClassVar

from shipyard.saga.store import SqlSagaLog, ddl


class SqliteSagaLog(SqlSagaLog):
    """Saga records and timelines in SQLite (``BLOB`` data, ``REAL`` timestamps)."""

    DDL: ClassVar[tuple[str, ...]] = ddl("BLOB", "REAL")
    NUMBER: ClassVar[str] = "REAL"
    COLUMNS_QUERY: ClassVar[str] = "SELECT name FROM pragma_table_info('shipyard_sagas')"
