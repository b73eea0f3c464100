"""The messaging tables in a service's own database: outbox, inbox and dead letters."""

from __future__ import annotations

from shipyard.storage import Database

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
    """Create the outbox, inbox and dead-letter tables if they do not exist (idempotent)."""
    async with db.transaction() as tx:
        for statement in _statements(db.dialect):
            await tx.execute(statement)
