"""Per-service schema migrations: versioned SQL files applied in order at start-up.

A folder holds ``0001_create_orders.sql``, ``0002_add_status.sql``, ... Each pending file
runs in its own transaction together with its row in ``schema_migrations`` (version,
name, checksum, applied_at), so a migration is either fully applied and recorded or not
at all. Applied ones are skipped; an applied file whose content changed since is an
error naming the file (history is append-only: write a new migration instead).

Several instances may start at once: each migration's transaction first takes a lock —
``pg_advisory_xact_lock`` on PostgreSQL, the write lock ``BEGIN IMMEDIATE`` takes on
SQLite — and then checks whether it is still pending, so none runs twice.

Statements that PostgreSQL refuses inside a transaction (``CREATE INDEX CONCURRENTLY``,
``VACUUM``) cannot be migrations here.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path

from shipyard.core import ConfigError, get_logger
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.storage.database import Database, Dialect, Transaction
from shipyard.storage.errors import MigrationChecksumError, MigrationError

_log = get_logger("shipyard.storage.migrations")

_FILE = re.compile(r"(\d+)_(\w+)\.sql")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# One fixed advisory-lock key per migrations table ("shipyard" folded into 31 bits plus
# the table's CRC), so unrelated advisory locks in the same database do not collide.
_LOCK_BASE = 0x5348_4950 << 32


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version and name (from the file name), SQL and checksum."""

    version: int
    name: str
    path: Path
    sql: str
    checksum: str


def load_migrations(folder: str | PathLike[str]) -> list[Migration]:
    """The ``.sql`` files in ``folder`` ordered by version; a badly named file or two files
    with one version raise ``MigrationError`` naming them."""
    root = Path(folder)
    if not root.is_dir():
        raise MigrationError(str(root), "is not a folder of NNNN_name.sql files")
    by_version: dict[int, Migration] = {}
    for path in sorted(root.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                str(path), "name must look like 0001_create_orders.sql (version_name.sql)"
            )
        version = int(match[1])
        if version in by_version:
            raise MigrationError(
                str(path), f"has the same version {version} as {by_version[version].path.name}"
            )
        body = path.read_bytes()
        by_version[version] = Migration(
            version, match[2], path, body.decode("utf-8"), hashlib.sha256(body).hexdigest()
        )
    return [by_version[version] for version in sorted(by_version)]


async def migrate(
    db: Database,
    folder: str | PathLike[str],
    *,
    table: str = "schema_migrations",
    clock: Clock = SYSTEM_CLOCK,
) -> list[Migration]:
    """Apply the pending migrations in ``folder`` to ``db``, in version order; return those
    this call applied (another instance may have applied the rest).

    Raises ``MigrationChecksumError`` when an applied file was changed, and
    ``MigrationError`` (the database's error chained) when a migration's SQL fails — that
    migration is rolled back and the later ones are not tried.
    """
    if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
        raise ConfigError("table", table, "must be a plain SQL identifier")
    applied: list[Migration] = []
    for migration in load_migrations(folder):
        async with db.transaction() as tx:
            await _lock(tx, db.dialect, table)
            recorded = await tx.fetchone(
                f"SELECT checksum FROM {table} WHERE version = ?", migration.version
            )
            if recorded is not None:
                if recorded[0] != migration.checksum:
                    raise MigrationChecksumError(
                        str(migration.path), recorded[0], migration.checksum
                    )
                continue
            try:
                for statement in _statements(migration.sql, db.dialect):
                    await tx.execute(statement)
            except Exception as error:
                raise MigrationError(
                    str(migration.path), f"failed and was rolled back: {error}"
                ) from error
            await tx.execute(
                f"INSERT INTO {table} (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                migration.version,
                migration.name,
                migration.checksum,
                datetime.fromtimestamp(clock.now(), UTC).isoformat(),
            )
        applied.append(migration)
        _log.info("migration applied", version=migration.version, file=migration.path.name)
    return applied


async def _lock(tx: Transaction, dialect: Dialect, table: str) -> None:
    """Serialise migrators, then make sure the bookkeeping table exists."""
    if dialect == "postgresql":
        key = _LOCK_BASE | (hashlib.sha256(table.encode()).digest()[0] << 24)
        await tx.execute("SELECT pg_advisory_xact_lock(?)", key)
    # On SQLite this first statement carries BEGIN IMMEDIATE: the write lock is ours now.
    await tx.execute(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "version BIGINT PRIMARY KEY, name TEXT NOT NULL, "
        "checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )


def _statements(script: str, dialect: Dialect) -> list[str]:
    """The script as statements to execute one by one.

    PostgreSQL takes a whole script in one simple-protocol call. sqlite3 runs one
    statement per call (and ``executescript`` would commit our transaction), so split at
    the semicolons that end a complete statement — ``sqlite3.complete_statement`` knows
    about quotes, comments and trigger bodies.
    """
    if dialect == "postgresql":
        return [script] if script.strip() else []
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _has_code(current):
                statements.append(current.strip())
            current = ""
    # The split added one ";" too many after the last piece: a final statement without
    # its semicolon is still run (comments alone are dropped).
    rest = current[:-1]
    if _has_code(rest):
        statements.append(rest.strip())
    return statements


def _has_code(sql: str) -> bool:
    """False for text that is only whitespace, comments and semicolons."""
    without = re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.DOTALL)
    return bool(without.replace(";", "").strip())
