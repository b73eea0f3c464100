"""The messaging tables in a service's own database: outbox, inbox and dead letters.

Several processes install the same tables at once (two instances starting together, or a
relay and a bus in one process). On PostgreSQL two concurrent ``CREATE TABLE IF NOT
EXISTS`` can both see "missing" and one then fails with a unique violation on the catalog,
so the install takes a transaction-scoped advisory lock first and installs run one after
the other. SQLite write transactions begin with ``BEGIN IMMEDIATE`` (see
``shipyard.storage``), which serializes them the same way.
"""

from __future__ import annotations

from shipyard.core import get_logger
from shipyard.storage import Database, redacted_url

_log = get_logger("shipyard.messaging.schema")

# Any fixed 64-bit number works; this one spells nothing and is shared by every process
# installing the messaging tables in the same database.
SCHEMA_LOCK = 0x5348_4950_4D53_4701
"""The PostgreSQL advisory-lock key held while the messaging tables are installed."""

_AUTO_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}
_BYTES = {"sqlite": "BLOB", "postgresql": "BYTEA"}
_FLOAT = "DOUBLE PRECISION"

OUTBOX = "shipyard_outbox"
INBOX = "shipyard_inbox"
DEAD_LETTERS = "shipyard_dead_letters"


def _statements(dialect: str) -> list[str]:
    auto_id, blob = _AUTO_ID[dialect], _BYTES[dialect]
    return [
        f"""CREATE TABLE IF NOT EXISTS {OUTBOX} (
            seq {auto_id},
            event_id TEXT NOT NULL,
            name TEXT NOT NULL,
            ordering_key TEXT,
            body {blob} NOT NULL,
            created_at {_FLOAT} NOT NULL,
            sent_at {_FLOAT}
        )""",
        # The relay only ever scans unsent rows; a partial index keeps that scan small
        # however many sent rows accumulate.
        f"CREATE INDEX IF NOT EXISTS {OUTBOX}_unsent ON {OUTBOX} (seq) WHERE sent_at IS NULL",
        f"""CREATE TABLE IF NOT EXISTS {INBOX} (
            group_name TEXT NOT NULL,
            event_id TEXT NOT NULL,
            handled_at {_FLOAT} NOT NULL,
            PRIMARY KEY (group_name, event_id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (
            id {auto_id},
            group_name TEXT NOT NULL,
            event_id TEXT NOT NULL,
            name TEXT NOT NULL,
            ordering_key TEXT,
            body {blob} NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            failed_at {_FLOAT} NOT NULL,
            replayed_at {_FLOAT}
        )""",
    ]


async def install_schema(db: Database) -> None:
    """Create the outbox, inbox and dead-letter tables if they do not exist.

    Idempotent and safe to run concurrently from several processes. A failure (the
    database is unreachable, or refuses DDL) is logged as an error and raised.
    """
    try:
        async with db.transaction() as tx:
            if db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(?)", SCHEMA_LOCK)
            for statement in _statements(db.dialect):
                await tx.execute(statement)
    except Exception as error:
        _log.error(
            "cannot install the messaging tables; check that the database is reachable"
            " and that its user may create tables",
            database=redacted_url(db.url),
            error=repr(error),
        )
        raise
