"""The saga log in a service's PostgreSQL database."""

from __future__ import annotations

from typing import ClassVar

from shipyard.saga.store import SqlSagaLog, ddl


class PostgresSagaLog(SqlSagaLog):
    """Saga records and timelines in PostgreSQL (``BYTEA`` data, double timestamps)."""

    DDL: ClassVar[tuple[str, ...]] = ddl("BYTEA", "DOUBLE PRECISION")
    NUMBER: ClassVar[str] = "DOUBLE PRECISION"
    COLUMNS_QUERY: ClassVar[str] = (
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'shipyard_sagas' AND table_schema = current_schema()"
    )
