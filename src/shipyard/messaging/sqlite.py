"""Embedded transport: a durable log table in one SQLite file shared by local processes.

Every process on the machine opens the same file (WAL mode). Publishing appends rows to
``shipyard_bus_log``; each consumer group's committed position is a row in
``shipyard_bus_groups``. Consumers in this process are woken the moment a publish commits;
those in other processes notice within ``poll_interval`` (a cheap indexed query).

A group's position is a single cursor, so one subscription at a time consumes it: the
one holding the group's **lease** (a row's ``owner`` and ``lease_until``). Every other
subscription of the group — another instance of the service — is a hot standby: it gets
nothing until the owner closes (it releases the lease), dies (its process is gone: the
log is shared by the processes of one machine) or stops renewing (its event loop hung for
``group_lease`` seconds), then takes over at the position the owner last acknowledged.
Events the old owner handled but had not acknowledged are delivered again, which the
consumer's inbox deduplicates. (NATS JetStream shares a group between competing
consumers instead.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence

from shipyard.core import cancel_and_wait, get_logger, validation
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
        position INTEGER NOT NULL,
        owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0
    )""",
)
# Logs created before group leases existed gain the two columns at connect.
_LEASE_COLUMNS = (
    ("owner", "ALTER TABLE shipyard_bus_groups ADD COLUMN owner TEXT"),
    (
        "lease_until",
        "ALTER TABLE shipyard_bus_groups ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
    ),
)
_log = get_logger("shipyard.messaging")
# How often a standby looks whether the group's lease is free (a read-only query).
_STANDBY_CHECK = 0.2


class SqliteTransport:
    """The event log in a SQLite file: ``sqlite:///var/bus.db``."""

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float = 0.025,
        group_lease: float = 10.0,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        from shipyard.storage.database import sqlite_path

        self._poll = validation.positive("poll_interval", poll_interval)
        self._lease = validation.positive("group_lease", group_lease)
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
            columns = {row[1] for row in await tx.fetch("PRAGMA table_info(shipyard_bus_groups)")}
            for column, alter in _LEASE_COLUMNS:
                if column not in columns:
                    await tx.execute(alter)

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
        """Open ``group``'s cursor, creating the group at ``start_from`` if it is new. The
        subscription consumes once it holds the group's lease (at once when the group is
        free; see the module docs)."""
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
        subscription = SqliteSubscription(self, group)
        try:
            await subscription.start()
        except (StorageError, sqlite3.Error) as error:
            await subscription.close()
            raise TransportError(f"cannot join group {group!r} in {self._url}: {error}") from error
        return subscription

    async def close(self) -> None:
        """Close the file and wake waiting fetches."""
        self._closed = True
        self._wake_all()
        await self._db.close()


class SqliteSubscription:
    """A group's cursor on a :class:`SqliteTransport`, consuming while it holds the
    group's lease and standing by otherwise."""

    def __init__(self, transport: SqliteTransport, group: str) -> None:
        self._transport = transport
        self._group = group
        self._id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._cursor = 0
        self._owner = False
        self._wake = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        transport._waiters.add(self._wake)

    @property
    def consuming(self) -> bool:
        """True while this subscription holds the group's lease."""
        return self._owner

    async def start(self) -> None:
        """Try for the lease now, then keep it (or keep trying) in the background."""
        await self._claim()
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_lease(), name=f"shipyard-bus-lease {self._group}"
        )

    async def _claim(self) -> None:
        """Take the lease if it is free, expired or ours; on taking it, continue from the
        group's stored position."""
        transport = self._transport
        now = time.time()
        replaced = self._id  # the holder this claim may replace besides a free lease
        if not self._owner:
            # A read-only look first: standbys must not queue for the writer every time.
            async with transport._db.transaction(readonly=True) as tx:
                row = await tx.fetchone(
                    "SELECT owner, lease_until FROM shipyard_bus_groups WHERE group_name = ?",
                    self._group,
                )
            if row is not None and row[0] is not None and row[0] != self._id:
                if row[1] > now and _alive(row[0]):
                    return
                replaced = row[0]  # expired, or its process is gone
        async with transport._db.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE shipyard_bus_groups SET owner = ?, lease_until = ?"
                " WHERE group_name = ?"
                " AND (owner IS NULL OR owner = ? OR owner = ? OR lease_until <= ?)"
                " RETURNING position",
                self._id,
                now + transport._lease,
                self._group,
                self._id,
                replaced,
                now,
            )
        if row is None:
            if self._owner:
                _log.warning("bus group lease lost", group=self._group, url=transport._url)
            self._owner = False
            return
        if not self._owner:
            self._owner = True
            self._cursor = int(row[0])
            self._wake.set()

    async def _keep_lease(self) -> None:
        transport = self._transport
        while not transport._closed:
            await asyncio.sleep(transport._lease / 3 if self._owner else _STANDBY_CHECK)
            try:
                await self._claim()
            except (StorageError, sqlite3.Error) as error:
                # The file is busy or gone: try again next round; an owner that cannot
                # renew for a whole lease loses the group to a standby, as it should.
                _log.warning("bus group lease not renewed", group=self._group, error=str(error))

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
        """Rows after the cursor; waits for a local publish or polls for other processes.
        A standby returns ``[]`` after ``max_wait`` (it has nothing to consume)."""
        transport = self._transport
        transport._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while True:
            self._wake.clear()
            deliveries: list[Delivery] = []
            if self._owner:
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
        """Store the group's position past ``deliveries`` and extend the lease. Nothing is
        stored once the lease went to another subscription: it delivers those events
        again, and the inbox drops the repeats."""
        if not deliveries:
            return
        position = deliveries[-1].position
        try:
            async with self._transport._db.transaction() as tx:
                tx.defer(
                    "UPDATE shipyard_bus_groups SET position = ?, lease_until = ?"
                    " WHERE group_name = ? AND owner = ? AND position < ?",
                    position,
                    time.time() + self._transport._lease,
                    self._group,
                    self._id,
                    position,
                )
        except (StorageError, sqlite3.Error) as error:
            raise TransportError(f"cannot store position in {self._transport._url}") from error

    async def close(self) -> None:
        """Stop waiting for messages and hand the lease back, so a standby takes over at
        once instead of after ``group_lease``."""
        transport = self._transport
        transport._waiters.discard(self._wake)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await cancel_and_wait(keeper)
        if self._owner and not transport._closed:
            self._owner = False
            with contextlib.suppress(StorageError, sqlite3.Error):
                async with transport._db.transaction() as tx:
                    await tx.execute(
                        "UPDATE shipyard_bus_groups SET owner = NULL, lease_until = 0"
                        " WHERE group_name = ? AND owner = ?",
                        self._group,
                        self._id,
                    )


def _alive(owner: str) -> bool:
    """Whether the process holding a lease (``<pid>-<random>``) still runs on this machine:
    a lease of a process that died is taken over at once, not when it expires."""
    pid_text, _, _ = owner.partition("-")
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == os.getpid():
        return True  # another subscription of this process: trust its lease
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True
