"""Persistence: the catalog as a SQLite snapshot, so registrations survive a restart.

The whole catalog is small (one row per instance), so each write replaces the snapshot
in one transaction; writes are debounced and flushed on stop. SQLite calls run in a
worker thread so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from shipyard.core import get_logger
from shipyard.discovery.registry.catalog import (
    Catalog,
    CatalogChanged,
    CheckDefinition,
    CheckKind,
    Instance,
    RestoredInstance,
    ServiceDefinition,
    Status,
    attach_check_id,
)

_log = get_logger("shipyard.discovery.registry")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    service_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""

DEBOUNCE = 0.05
"""Seconds a burst of changes is collected before one snapshot write."""


def _encode_check(definition: CheckDefinition) -> dict[str, Any]:
    return {
        "check_id": definition.check_id,
        "name": definition.name,
        "kind": definition.kind.value,
        "target": definition.target,
        "interval": definition.interval,
        "timeout": definition.timeout,
        "ttl": definition.ttl,
        "deregister_after": definition.deregister_after,
        "initial_status": definition.initial_status.value,
        "notes": definition.notes,
        "method": definition.method,
        "headers": [list(pair) for pair in definition.headers],
    }


def _decode_check(data: dict[str, Any]) -> CheckDefinition:
    return CheckDefinition(
        check_id=data["check_id"],
        name=data["name"],
        kind=CheckKind(data["kind"]),
        target=data["target"],
        interval=data["interval"],
        timeout=data["timeout"],
        ttl=data["ttl"],
        deregister_after=data["deregister_after"],
        initial_status=Status(data["initial_status"]),
        notes=data["notes"],
        method=data["method"],
        headers=tuple((name, value) for name, value in data["headers"]),
    )


def encode_instance(instance: Instance) -> str:
    """One instance (definition, check statuses, attach check) as JSON."""
    service = instance.service
    attach = instance.checks.get(attach_check_id(service.service_id))
    return json.dumps(
        {
            "service_id": service.service_id,
            "name": service.name,
            "address": service.address,
            "port": service.port,
            "tags": list(service.tags),
            "meta": dict(service.meta),
            "checks": [_encode_check(c) for c in service.checks],
            "statuses": {
                check_id: state.status.value
                for check_id, state in instance.checks.items()
                if state.definition.kind is not CheckKind.ATTACH
            },
            "attached": attach is not None,
            "attach_deregister_after": attach.definition.deregister_after if attach else None,
        }
    )


def decode_instance(body: str) -> RestoredInstance:
    """The inverse of :func:`encode_instance`."""
    data = json.loads(body)
    service = ServiceDefinition(
        service_id=data["service_id"],
        name=data["name"],
        address=data["address"],
        port=data["port"],
        tags=tuple(data["tags"]),
        meta=tuple(data["meta"].items()),
        checks=tuple(_decode_check(c) for c in data["checks"]),
    )
    return RestoredInstance(
        service,
        {check_id: Status(s) for check_id, s in data["statuses"].items()},
        attached=data["attached"],
        attach_deregister_after=data["attach_deregister_after"],
    )


class SnapshotStore:
    """Reads and writes the catalog snapshot at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        return connection

    def load(self) -> tuple[int, list[RestoredInstance]]:
        """The saved index and instances (``(0, [])`` when nothing was saved yet)."""
        with closing(self._connect()) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'index'").fetchone()
            rows = connection.execute("SELECT body FROM instances ORDER BY position").fetchall()
        index = int(row[0]) if row else 0
        return index, [decode_instance(body) for (body,) in rows]

    def save(self, index: int, instances: list[tuple[str, str]]) -> None:
        """Replace the snapshot with ``instances`` (``(service_id, body)`` pairs)."""
        with closing(self._connect()) as connection, connection:
            connection.execute("DELETE FROM instances")
            connection.executemany(
                "INSERT INTO instances (service_id, position, body) VALUES (?, ?, ?)",
                [(sid, position, body) for position, (sid, body) in enumerate(instances)],
            )
            connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('index', ?)", (str(index),)
            )


class SnapshotWriter:
    """Writes the catalog to a :class:`SnapshotStore` shortly after each change."""

    def __init__(self, catalog: Catalog, store: SnapshotStore) -> None:
        self._catalog = catalog
        self._store = store
        self._pending: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None
        self._lock = asyncio.Lock()
        self._dirty = False

    def load(self) -> int:
        """Restore the catalog from the store; returns how many instances came back."""
        index, instances = self._store.load()
        self._catalog.restore(index, instances)
        return len(instances)

    def start(self) -> None:
        """Begin writing on change."""
        self._unsubscribe = self._catalog.events.subscribe(self._on_change)

    async def stop(self) -> None:
        """Stop listening and write the final state."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        await self.flush()

    async def flush(self) -> None:
        """Write the current catalog now."""
        # Serialise on the loop so the snapshot is one consistent moment of the catalog.
        index = self._catalog.index
        rows = [(i.service.service_id, encode_instance(i)) for i in self._catalog.instances()]
        async with self._lock:
            await asyncio.to_thread(self._store.save, index, rows)

    def _on_change(self, event: CatalogChanged) -> None:
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        # Changes landing during a write set ``_dirty`` again and get one more write.
        while self._dirty:
            self._dirty = False
            await asyncio.sleep(DEBOUNCE)
            try:
                await self.flush()
            except (OSError, sqlite3.Error):
                _log.exception("registry snapshot write failed", path=str(self._store.path))
