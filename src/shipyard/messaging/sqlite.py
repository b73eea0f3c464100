"""Embedded transport: a durable log table in one SQLite file shared by local processes.

Every process on the machine opens the same file (WAL mode). Publishing appends rows to
``shipyard_bus_log``; each consumer group's committed position is a row in
``shipyard_bus_groups``. Consumers in this process are woken the moment a publish commits;
those in other processes notice within ``poll_interval`` (a cheap indexed query).
One process at a time should consume a given group: the position is a single cursor, not
a set of leases (use NATS JetStream for competing consumers across machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence

from shipyard.core import validation
from shipyard.messaging.errors import TransportError
from shipyard.messaging.events import WireMessage
from shipyard.messaging.transport import Delivery, StartFrom
from shipyard.storage import StorageError
from shipyard.storage.sqlite import SqliteDatabase, Synchronous

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS shipyard_bus_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        event_id TEXT NOT NULL,
        ordering_key TEXT,
        body BLOB NOT NULL,
        published_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS shipyard_bus_groups (
        group_name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    )""",
)


class SqliteTransport:
    """The event log in a SQLite file: ``sqlite:///var/bus.db``."""

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float = 0.025,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        from shipyard.storage.database import sqlite_path

        self._poll = validation.positive("poll_interval", poll_interval)
        self._url = url
        self._db = SqliteDatabase(
            sqlite_path(url), synchronous=synchronous, busy_timeout=busy_timeout
        )
        self._waiters: set[asyncio.Event] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """The ``sqlite:///`` URL of the log file."""
        return self._url

    async def connect(self) -> None:
        """Open the file and create the log tables (``open_transport`` does this)."""
        await self._db.connect()
        async with self._db.transaction() as tx:
            for statement in _SCHEMA:
                await tx.execute(statement)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"sqlite transport {self._url} is closed; open it again")

    async def publish(self, messages: Sequence[WireMessage]) -> None:
        """Append ``messages`` in one transaction."""
        self._check_open()
        now = time.time()
        try:
            async with self._db.transaction() as tx:
                # Deferred: the rows travel with the COMMIT, one trip to the file's thread.
                tx.defer_many(
                    "INSERT INTO shipyard_bus_log (name, event_id, ordering_key, body,"
                    " published_at) VALUES (?, ?, ?, ?, ?)",
                    [(m.name, m.event_id, m.ordering_key, m.body, now) for m in messages],
                )
                tx.after_commit(self._wake_all)
        except (StorageError, sqlite3.Error, OSError) as error:
            raise TransportError(f"cannot append to {self._url}: {error}") from error

    def _wake_all(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def subscribe(
        self, group: str, *, start_from: StartFrom = "beginning"
    ) -> SqliteSubscription:
        """Open ``group``'s cursor, creating the group at ``start_from`` if it is new."""
        self._check_open()
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT position FROM shipyard_bus_groups WHERE group_name = ?", group
            )
            if row is None:
                start = 0
                if start_from == "now":
                    last = await tx.fetchone("SELECT COALESCE(MAX(seq), 0) FROM shipyard_bus_log")
                    start = int(last[0]) if last else 0
                await tx.execute(
                    "INSERT INTO shipyard_bus_groups (group_name, position) VALUES (?, ?)",
                    group,
                    start,
                )
                position = start
            else:
                position = int(row[0])
        return SqliteSubscription(self, group, position)

    async def close(self) -> None:
        """Close the file and wake waiting fetches."""
        self._closed = True
        self._wake_all()
        await self._db.close()


class SqliteSubscription:
    """A group's cursor on a :class:`SqliteTransport`."""

    def __init__(self, transport: SqliteTransport, group: str, position: int) -> None:
        self._transport = transport
        self._group = group
        self._cursor = position
        self._wake = asyncio.Event()
        transport._waiters.add(self._wake)

    async def _read(self, max_messages: int) -> list[Delivery]:
        # A read-only snapshot beside the writer: fetching never waits for publishers.
        async with self._transport._db.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT seq, name, event_id, ordering_key, body FROM shipyard_bus_log"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                self._cursor,
                max_messages,
            )
        if rows:
            self._cursor = rows[-1][0]
        return [
            Delivery(WireMessage(name, event_id, key, bytes(body)), seq)
            for seq, name, event_id, key, body in rows
        ]

    async def fetch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Rows after the cursor; waits for a local publish or polls for other processes."""
        transport = self._transport
        transport._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            self._wake.clear()
            try:
                deliveries = await self._read(max_messages)
            except (StorageError, sqlite3.Error) as error:
                raise TransportError(f"cannot read {transport._url}: {error}") from error
            remaining = deadline - loop.time()
            if deliveries or remaining <= 0 or transport._closed:
                return deliveries
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(remaining, transport._poll))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Store the group's position past ``deliveries``."""
        if not deliveries:
            return
        try:
            async with self._transport._db.transaction() as tx:
                tx.defer(
                    "UPDATE shipyard_bus_groups SET position = ?"
                    " WHERE group_name = ? AND position < ?",
                    deliveries[-1].position,
                    self._group,
                    deliveries[-1].position,
                )
        except (StorageError, sqlite3.Error) as error:
            raise TransportError(f"cannot store position in {self._transport._url}") from error

    async def close(self) -> None:
        """Stop waiting for messages."""
        self._transport._waiters.discard(self._wake)
