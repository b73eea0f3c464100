"""A local cache table of another service's data, fed by its events.

Database per service means the orders service cannot join the users service's tables. It
keeps its own ``user_cache`` instead, declared once and fed by the owner's events::

    users = ReplicaTable("user_cache", key="id", columns={"email": "TEXT", "name": "TEXT"})
    replica = Replica(db, users)
    replica.upsert_on(UserCreated, key="user_id", version="version",
                      values={"email": "email", "name": "name"})
    replica.upsert_on(UserUpdated, key="user_id", version="version", values={"email": "email"})
    replica.delete_on(UserDeleted, key="user_id", version="version")
    replica.subscribe(bus, group="orders-user-cache")

Every write is conditional on the row's version (``... WHERE cache.version <
excluded.version``), so duplicates and out-of-order (stale) events change nothing, and a
delete leaves a tombstone (``deleted = 1`` with its version) so a late update cannot bring
the row back. Reads join locally and filter ``deleted = 0``; the owner's database is never
touched — the cache is filled by events and, for history, by :meth:`Replica.backfill` from
the owner's HTTP API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError
from shipyard.messaging import Event, EventBus
from shipyard.storage import Database, Transaction

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
Field = str | Callable[[Any], Any]
"""An event attribute name, or a function of the event."""


def _ident(field_name: str, value: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ConfigError(field_name, value, "must be a SQL identifier (letters, digits, _)")
    return value


@dataclass(frozen=True)
class ReplicaTable:
    """The cache table: its name, key column and replicated columns (name → SQL type)."""

    name: str
    key: str = "id"
    columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _ident("name", self.name)
        _ident("key", self.key)
        if not self.columns:
            raise ConfigError("columns", self.columns, "name at least one replicated column")
        for column in self.columns:
            _ident("columns", column)
            if column in (self.key, "version", "deleted", "replicated_at"):
                raise ConfigError("columns", column, "is a reserved column of the cache table")


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    """How far behind the owner the cache is.

    ``seconds``: between the newest applied change happening at the owner and it landing
    here (0 before any event). ``events_behind``: events delivered to the replica whose
    transaction has not committed yet, plus any the owner reported (``note_source_head``)
    beyond what was applied.
    """

    seconds: float
    events_behind: int


def _getter(field_name: str, spec: Field) -> Callable[[Any], Any]:
    if callable(spec):
        return spec
    if isinstance(spec, str):
        return lambda event: getattr(event, spec)
    raise ConfigError(field_name, spec, "must be an attribute name or a function of the event")


@dataclass(frozen=True, slots=True)
class _Rule:
    key: Callable[[Any], Any]
    version: Callable[[Any], Any]
    columns: tuple[str, ...]
    values: tuple[Callable[[Any], Any], ...]
    delete: bool


class Replica:
    """Maintains one :class:`ReplicaTable` in the consuming service's ``db``."""

    def __init__(self, db: Database, table: ReplicaTable, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self.table = table
        self._clock = clock
        self._rules: dict[type[Event], _Rule] = {}
        self._sql: dict[tuple[tuple[str, ...], bool], str] = {}
        self.applied = 0
        """Changes written (stale and duplicate events are not counted)."""
        self.ignored = 0
        """Events ignored because the cache already had that version or a newer one."""
        self._in_flight = 0
        self._source_head: int | None = None
        self._delay = 0.0

    # -- declaring -------------------------------------------------------------------

    def upsert_on(
        self,
        event_type: type[Event],
        *,
        key: Field,
        version: Field,
        values: Mapping[str, Field],
    ) -> None:
        """``event_type`` creates or updates the row ``key`` with ``values`` (column → field)."""
        for column in values:
            if column not in self.table.columns:
                raise ConfigError(
                    "values",
                    column,
                    f"is not a column of {self.table.name}: {list(self.table.columns)}",
                )
        self._add(event_type, key, version, values, delete=False)

    def delete_on(self, event_type: type[Event], *, key: Field, version: Field) -> None:
        """``event_type`` deletes the row ``key`` (a tombstone keeps its version)."""
        self._add(event_type, key, version, {}, delete=True)

    def _add(
        self,
        event_type: type[Event],
        key: Field,
        version: Field,
        values: Mapping[str, Field],
        *,
        delete: bool,
    ) -> None:
        if event_type in self._rules:
            raise ConfigError("event_type", event_type.event_name, "already has a rule")
        columns = tuple(values)
        self._rules[event_type] = _Rule(
            _getter("key", key),
            _getter("version", version),
            columns,
            tuple(
                _getter(f"values[{c!r}]", spec)
                for spec, c in zip(values.values(), columns, strict=True)
            ),
            delete,
        )
        self._sql.setdefault((columns, delete), self._write_sql(columns, delete))

    def _write_sql(self, columns: tuple[str, ...], delete: bool) -> str:
        t = self.table
        if delete:
            nulls = ", ".join(f"{c} = NULL" for c in t.columns)
            return (
                f"INSERT INTO {t.name} ({t.key}, version, deleted, replicated_at)"
                f" VALUES (?, ?, 1, ?) ON CONFLICT ({t.key}) DO UPDATE SET {nulls},"
                " version = excluded.version, deleted = 1, replicated_at = excluded.replicated_at"
                f" WHERE {t.name}.version < excluded.version RETURNING {t.key}"
            )
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        sets = "".join(f"{c} = excluded.{c}, " for c in columns)
        return (
            f"INSERT INTO {t.name} ({t.key}, {names}, version, deleted, replicated_at)"
            f" VALUES (?, {marks}, ?, 0, ?) ON CONFLICT ({t.key}) DO UPDATE SET {sets}"
            "version = excluded.version, deleted = 0, replicated_at = excluded.replicated_at"
            f" WHERE {t.name}.version < excluded.version RETURNING {t.key}"
        )

    async def install(self) -> None:
        """Create the cache table if it does not exist."""
        t = self.table
        columns = "".join(f"{name} {sql_type}, " for name, sql_type in t.columns.items())
        async with self._db.transaction() as tx:
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {t.name} ({t.key} TEXT PRIMARY KEY, {columns}"
                "version BIGINT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
                " replicated_at DOUBLE PRECISION NOT NULL)"
            )

    # -- applying --------------------------------------------------------------------

    async def apply(self, event: Event, tx: Transaction) -> bool:
        """Apply one owner event in ``tx``; False when it was stale or a duplicate."""
        rule = self._rules.get(type(event))
        if rule is None:
            raise ConfigError(
                "event", event.event_name, f"has no rule in replica {self.table.name}"
            )
        self._in_flight += 1
        tx.after_commit(self._landed)
        now = self._clock.now()
        sql = self._sql[(rule.columns, rule.delete)]
        values = [value(event) for value in rule.values]
        row = await tx.fetchone(sql, str(rule.key(event)), *values, int(rule.version(event)), now)
        if row is None:
            self.ignored += 1
            return False
        self.applied += 1
        self._delay = max(now - event.occurred_at, 0.0)
        return True

    def _landed(self) -> None:
        self._in_flight = max(self._in_flight - 1, 0)

    def subscribe(self, bus: EventBus, *, group: str) -> None:
        """Feed the cache from ``bus`` in consumer ``group`` (deduplicated by the inbox)."""
        for event_type in self._rules:
            bus.subscribe(event_type, group=group, handler=self._handle)

    async def _handle(self, event: Event, tx: Transaction) -> None:
        await self.apply(event, tx)

    # -- backfill --------------------------------------------------------------------

    async def upsert_rows(self, rows: list[Mapping[str, Any]]) -> int:
        """Write full rows (``key``, every column, ``version``) unless the cache is newer."""
        t = self.table
        columns = tuple(t.columns)
        sql = self._sql.get((columns, False)) or self._write_sql(columns, False)
        now = self._clock.now()
        written = 0
        async with self._db.transaction() as tx:
            for row in rows:
                values = [row.get(c) for c in columns]
                if await tx.fetchone(sql, str(row[t.key]), *values, int(row["version"]), now):
                    written += 1
        return written

    # -- lag -------------------------------------------------------------------------

    def note_source_head(self, changes: int) -> None:
        """Record how many changes the owner reports having published (e.g. from its API)."""
        self._source_head = changes

    def lag(self) -> ReplicaLag:
        """The current :class:`ReplicaLag`."""
        behind = self._in_flight
        if self._source_head is not None:
            behind = max(behind, self._source_head - self.applied - self.ignored)
        return ReplicaLag(self._delay, behind)
