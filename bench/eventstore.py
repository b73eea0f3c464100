"""Event store throughput: ours vs the ``eventsourcing`` library vs raw driver inserts.

One run covers a SQLite file (``synchronous=FULL`` for every contender) and then
PostgreSQL (default ``synchronous_commit=on``). Work, per backend:

* append: ``BENCH_ES_AGGREGATES`` aggregates (default 5,000) x 5 events, one save per
  command (a create, then four commands). Ours runs ``BENCH_ES_CONCURRENCY`` commands at a
  time (default 64; concurrent saves share transactions through group commit) and also
  one at a time on a slice of the aggregates; the library is synchronous, so it runs one
  at a time (its PostgreSQL recorder locks the table per append anyway).
* replay: load every aggregate from its events (no snapshots): one at a time, 16 loads at
  once (our API is async; reads run on read-only connections beside the writer), and
  ``load_many`` 100 aggregates per query.
* projection: follow the global order from the start, decode each event, and keep a
  read-model table (orders per status) with the checkpoint in the same transaction.
* raw: the driver inserting one event row per committed transaction — the ceiling for one
  save per command on one connection.

The library has no catch-up subscription on SQLite, so its projection here is a loop over
its public notification log and mapper doing the same upsert per event: a generous
baseline. Everything fsync-bound swings with other load on the machine; the rounds are
interleaved so that it hits all contenders alike. Before the first round every contender
does a short untimed warm-up (connections, prepared statements, fresh tables), and on
PostgreSQL a ``CHECKPOINT`` first flushes what creating the scratch databases wrote, so
neither lands on whichever contender happens to be timed first. ``BENCH_ES_AGGREGATES`` and
``BENCH_ES_CONCURRENCY`` shrink or reshape the run (default run: about 2-3 minutes on an
idle machine, longer when the disk is busy).

Targets (issue 8): ours >= 2x the library on append, replay and projection on both
backends; append >= 50% of raw. One save at a time, every save waits for its own fsync,
so raw / library is a ceiling for any store's ratio there (on a disk where the fsync
costs more than the library's own work it is under 2x); the report prints it, and each
store's time per save above the raw insert, beside the plain ratio.
Run: ``python -m bench eventstore`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shipyard.eventsourcing import (
    Aggregate,
    Projection,
    ProjectionRunner,
    Repository,
    applies,
    handles,
    open_event_store,
)
from shipyard.messaging import Event, EventRegistry
from shipyard.storage import Transaction, open_database
from shipyard.storage.group_commit import CONTENDED_FOR

AGGREGATES = int(os.environ.get("BENCH_ES_AGGREGATES", "5000"))
CONCURRENCY = int(os.environ.get("BENCH_ES_CONCURRENCY", "64"))
SEQUENTIAL_SHARE = 5  # one-at-a-time saves run on 1/5 of the aggregates
WARM_UP = 20  # aggregates each contender appends, untimed, before the first round
WARM_UP_IDS = 10**9  # far from the timed ids
ROUNDS = 20  # finely interleaved: a burst of disk load elsewhere hits every contender
EVENTS_PER_AGGREGATE = 5
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


# -- our domain ------------------------------------------------------------------------


class Placed(Event):
    customer: str
    total_cents: int


class Noted(Event):
    note: str


REGISTRY = EventRegistry()
REGISTRY.register(Placed)
REGISTRY.register(Noted)


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer = ""
        self.total_cents = 0
        self.notes = 0

    def place(self, customer: str, total_cents: int) -> None:
        self._raise(Placed(customer=customer, total_cents=total_cents))

    def note(self, note: str) -> None:
        self._raise(Noted(note=note))

    @applies(Placed)
    def _placed(self, event: Placed) -> None:
        self.customer = event.customer
        self.total_cents = event.total_cents

    @applies(Noted)
    def _noted(self, event: Noted) -> None:
        self.notes += 1


class OrdersByCustomer(Projection):
    name = "orders_by_customer"

    def schema(self, table: str) -> list[str]:
        return [f"CREATE TABLE {table} (customer TEXT PRIMARY KEY, orders BIGINT, notes BIGINT)"]

    # One upsert statement for both events: consecutive events then share a round trip.
    @handles(Placed)
    async def placed(self, event: Placed, tx: Transaction, table: str) -> None:
        await tx.execute(_upsert(table), event.customer, 1, 0)

    @handles(Noted)
    async def noted(self, event: Noted, tx: Transaction, table: str) -> None:
        await tx.execute(_upsert(table), event.note, 0, 1)


@functools.cache
def _upsert(table: str) -> str:
    return UPSERT.format(table=table)


UPSERT = (
    "INSERT INTO {table} VALUES (?, ?, ?) ON CONFLICT (customer) DO UPDATE"
    " SET orders = {table}.orders + excluded.orders, notes = {table}.notes + excluded.notes"
)


class Ours:
    """Our store, repository and projection runner on one database."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options

    async def open(self) -> None:
        self.db = await open_database(self.url, **self.options)
        self.store = await open_event_store(self.db)
        self.repo = Repository(self.store, Order, registry=REGISTRY)

    async def _commands(self, n: int) -> None:
        order = Order(str(n))
        order.place(f"c{n % 100}", 100)
        await self.repo.save(order)
        for _ in range(EVENTS_PER_AGGREGATE - 1):
            order.note(f"c{n % 100}")
            await self.repo.save(order)

    async def append(self, numbers: range, concurrency: int) -> None:
        pending = iter(numbers)

        async def worker() -> None:
            for n in pending:
                await self._commands(n)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def replay(self, numbers: range) -> None:
        for n in numbers:
            await self.repo.load(str(n))

    async def replay_concurrently(self, numbers: range, concurrency: int) -> None:
        pending = iter(numbers)

        async def worker() -> None:
            for n in pending:
                await self.repo.load(str(n))

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def replay_many(self, numbers: range) -> None:
        ids = [str(n) for n in numbers]
        for first in range(0, len(ids), 100):
            await self.repo.load_many(ids[first : first + 100])

    async def project(self, total: int) -> int:
        runner = ProjectionRunner(self.store, REGISTRY, [OrdersByCustomer()], batch_size=5000)
        await runner.install()
        done = 0
        while done < total:
            # On PostgreSQL another session's open transaction can hold the readable
            # global order back for a moment; that wait is part of the cost.
            count = await runner.catch_up()
            done += count
            if not count:
                await asyncio.sleep(0.001)
        return done

    async def close(self) -> None:
        await self.db.close()


# -- the eventsourcing library ---------------------------------------------------------


@functools.cache
def _lib_order() -> Any:
    # Defined once: the library registers each aggregate class under its topic.
    from eventsourcing.domain import Aggregate as LibAggregate
    from eventsourcing.domain import event

    class LibOrder(LibAggregate):
        @event("Placed")
        def __init__(self, customer: str, total_cents: int) -> None:
            self.customer = customer
            self.total_cents = total_cents
            self.notes = 0

        @event("Noted")
        def note(self, note: str) -> None:
            self.notes += 1

    return LibOrder


class Library:
    """The ``eventsourcing`` library doing the same work (it is synchronous)."""

    def __init__(self, env: dict[str, str], read_model: Callable[[], tuple[Any, str]]) -> None:
        from eventsourcing.application import Application

        self.app: Any = Application(env=env)
        self.read_model = read_model
        self.ids: dict[int, Any] = {}

    def append(self, numbers: range) -> None:
        order_type = _lib_order()
        for n in numbers:
            order = order_type(f"c{n % 100}", 100)
            self.app.save(order)
            for _ in range(EVENTS_PER_AGGREGATE - 1):
                order.note(f"c{n % 100}")
                self.app.save(order)
            self.ids[n] = order.id

    def replay(self, numbers: range) -> None:
        for n in numbers:
            self.app.repository.get(self.ids[n])

    def project(self) -> int:
        # Its projection equivalent: notifications in order -> domain events -> the same
        # read-model upsert per event + tracking position, one transaction per batch.
        conn, q = self.read_model()
        cursor = conn.cursor()
        cursor.execute(
            "CREATE TABLE lib_read (customer TEXT PRIMARY KEY, orders BIGINT, notes BIGINT)"
        )
        cursor.execute("CREATE TABLE lib_tracking (name TEXT PRIMARY KEY, position BIGINT)")
        cursor.execute("INSERT INTO lib_tracking VALUES ('read', 0)")
        conn.commit()
        upsert = _upsert("lib_read").replace("?", q)
        done = position = 0
        while True:
            notifications = self.app.recorder.select_notifications(position + 1, 5000)
            if not notifications:
                break
            for notification in notifications:
                domain_event = self.app.mapper.to_domain_event(notification)
                placed = type(domain_event).__name__ == "Placed"
                customer = domain_event.customer if placed else domain_event.note
                cursor.execute(upsert, (customer, 1 if placed else 0, 0 if placed else 1))
            position = notifications[-1].id
            cursor.execute(
                f"UPDATE lib_tracking SET position = {q} WHERE name = 'read'", (position,)
            )
            conn.commit()
            done += len(notifications)
        conn.close()
        return done

    def close(self) -> None:
        self.app.close()


# -- raw driver ceiling -------------------------------------------------------------------

_RAW_BODY = b'{"name":"Noted","version":1,"data":{"note":"c1"}}'
_RAW_TABLE = (
    "CREATE TABLE raw (position {pk}, stream_id TEXT, version INTEGER, body {blob},"
    " UNIQUE (stream_id, version))"
)


class RawSqlite:
    """sqlite3 committing one event row per transaction."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute(_RAW_TABLE.format(pk="INTEGER PRIMARY KEY", blob="BLOB"))

    def append(self, numbers: range) -> None:
        conn = self.conn
        for n in numbers:
            for version in range(1, EVENTS_PER_AGGREGATE + 1):
                conn.execute("BEGIN")
                conn.execute(
                    "INSERT INTO raw (stream_id, version, body) VALUES (?, ?, ?)",
                    (str(n), version, _RAW_BODY),
                )
                conn.execute("COMMIT")


class RawPostgres:
    """asyncpg committing one event row per transaction."""

    async def open(self, url: str) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(url)
        await self.conn.execute(_RAW_TABLE.format(pk="BIGSERIAL PRIMARY KEY", blob="BYTEA"))

    async def append(self, numbers: range) -> None:
        conn = self.conn
        for n in numbers:
            for version in range(1, EVENTS_PER_AGGREGATE + 1):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO raw (stream_id, version, body) VALUES ($1, $2, $3)",
                        str(n),
                        version,
                        _RAW_BODY,
                    )


# -- running and reporting ---------------------------------------------------------------


class Clockwork:
    """Seconds and events accumulated per case over the interleaved rounds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.events: dict[str, int] = {}

    async def time(self, case: str, events: int, work: Any) -> Any:
        start = time.perf_counter()
        result = work() if callable(work) else work
        if asyncio.iscoroutine(result):
            result = await result
        self.seconds[case] = self.seconds.get(case, 0.0) + time.perf_counter() - start
        self.events[case] = self.events.get(case, 0) + events
        return result

    def rate(self, case: str) -> float:
        return self.events[case] / self.seconds[case]


def _rounds(total: int, rounds: int = ROUNDS) -> list[range]:
    step = max(total // rounds, 1)
    return [range(start, min(start + step, total)) for start in range(0, total, step)]


async def compare(
    ours: Ours, lib: Library, raw_append: Callable[[range], Any]
) -> dict[str, tuple[float, float | None, float | None]]:
    """Interleave ours / library / raw round by round, so drift on a shared machine (other
    processes' fsyncs, CPU frequency) hits every contender alike."""
    clock = Clockwork()
    per_aggregate = EVENTS_PER_AGGREGATE
    warm = range(WARM_UP_IDS, WARM_UP_IDS + WARM_UP)
    warm_seq = range(warm.stop, warm.stop + WARM_UP // SEQUENTIAL_SHARE)
    await ours.append(warm, CONCURRENCY)
    await ours.append(warm_seq, 1)
    lib.append(warm)
    await _maybe_await(raw_append(warm))
    sequential_base = AGGREGATES  # ids of the one-at-a-time run follow the others
    for chunk in _rounds(AGGREGATES):
        events = len(chunk) * per_aggregate
        await clock.time("ours append", events, ours.append(chunk, CONCURRENCY))
        seq = range(sequential_base, sequential_base + len(chunk) // SEQUENTIAL_SHARE)
        sequential_base = seq.stop
        # Untimed: a store that just had concurrent saves keeps sending lone ones to the
        # writer thread for CONTENDED_FOR (so a burst keeps sharing commits); the one at a
        # time case is a store whose saves come one by one.
        await asyncio.sleep(2 * CONTENDED_FOR)
        await clock.time("ours one at a time", len(seq) * per_aggregate, ours.append(seq, 1))
        await clock.time("lib append", events, functools.partial(lib.append, chunk))
        await clock.time("raw append", events, functools.partial(raw_append, chunk))
    # Replay rounds hold at least 100 aggregates: load_many reads 100 per query.
    for chunk in _rounds(AGGREGATES, min(ROUNDS, max(AGGREGATES // 100, 1))):
        events = len(chunk) * per_aggregate
        await clock.time("ours replay", events, ours.replay(chunk))
        await clock.time("ours replay concurrent", events, ours.replay_concurrently(chunk, 16))
        await clock.time("ours replay many", events, ours.replay_many(chunk))
        await clock.time("lib replay", events, functools.partial(lib.replay, chunk))
    # Every event in each store, the warm-up's included, goes through its projection.
    ours_total = (sequential_base + len(warm) + len(warm_seq)) * per_aggregate
    await clock.time("ours projection", ours_total, ours.project(ours_total))
    lib_total = (AGGREGATES + len(warm)) * per_aggregate
    await clock.time("lib projection", lib_total, lib.project)
    raw = clock.rate("raw append")
    return {
        "append": (clock.rate("ours append"), clock.rate("lib append"), raw),
        "append, one at a time": (clock.rate("ours one at a time"), clock.rate("lib append"), raw),
        "replay": (clock.rate("ours replay"), clock.rate("lib replay"), None),
        "replay, 16 loads at once": (
            clock.rate("ours replay concurrent"),
            clock.rate("lib replay"),
            None,
        ),
        "replay, load_many(100)": (clock.rate("ours replay many"), clock.rate("lib replay"), None),
        "projection": (clock.rate("ours projection"), clock.rate("lib projection"), None),
    }


async def _maybe_await(result: Any) -> None:
    if asyncio.iscoroutine(result):
        await result


async def _checkpoint() -> None:
    """Flush what creating the scratch databases wrote (best effort: needs superuser)."""
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute("CHECKPOINT")
    except asyncpg.PostgresError:
        pass
    finally:
        await admin.close()


async def _scratch_database(name: str) -> str:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def _drop_database(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def _print(backend: str, rows: dict[str, tuple[float, float | None, float | None]]) -> None:
    print(f"\n{backend}: {AGGREGATES} aggregates x {EVENTS_PER_AGGREGATE} events, events/s")
    print(f"{'metric':<24}{'ours':>10}{'library':>10}{'ours/lib':>10}{'raw':>10}{'ours/raw':>10}")
    for metric, (mine, lib, raw) in rows.items():
        lib_cells = f"{lib:>10.0f}{mine / lib:>9.1f}x" if lib else f"{'':>20}"
        raw_cells = f"{raw:>10.0f}{mine / raw:>10.0%}" if raw else ""
        print(f"{metric:<24}{mine:>10.0f}{lib_cells}{raw_cells}")
    mine, lib, raw = rows["append, one at a time"]
    if lib and raw:
        # One at a time, each save waits for its own commit: the raw insert's time (mostly
        # the fsync) is a floor under every contender, so no store can be more than
        # raw/library times the library here, and what each store adds on top of the floor
        # is its own work. Both are printed beside the plain ratio.
        ours_us, lib_us, raw_us = (1e6 / r for r in (mine, lib, raw))  # one event per save
        line = (
            f"one at a time, per save: ours {ours_us:.0f} us, library {lib_us:.0f} us, raw"
            f" insert {raw_us:.0f} us (the ceiling: raw is {lib_us / raw_us:.2f}x the library)"
        )
        if ours_us > raw_us:
            line += (
                f"; above the raw insert: ours {ours_us - raw_us:.0f} us, library"
                f" {lib_us - raw_us:.0f} us ({(lib_us - raw_us) / (ours_us - raw_us):.1f}x less)"
            )
        print(line)


async def _sqlite(tmp: str) -> None:
    ours = Ours(f"sqlite:///{tmp}/ours.db", synchronous="FULL")
    await ours.open()

    def read_model() -> tuple[Any, str]:
        conn = sqlite3.connect(f"{tmp}/lib.db")
        conn.execute("PRAGMA synchronous=FULL")
        return conn, "?"

    lib = Library(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{tmp}/lib.db"},
        read_model,
    )
    raw = RawSqlite(f"{tmp}/raw.db")
    try:
        _print("SQLite file (synchronous=FULL, WAL)", await compare(ours, lib, raw.append))
    finally:
        await ours.close()
        lib.close()
        raw.conn.close()
    await _sqlite_without_fsync(tmp)


async def _sqlite_without_fsync(tmp: str, aggregates: int = 500, rounds: int = 5) -> None:
    """One save at a time at ``synchronous=OFF`` for all three (no fsync, the same setting
    for each): what is left is each store's own work per save."""
    from eventsourcing.sqlite import SQLiteConnectionPool

    create = SQLiteConnectionPool._create_connection

    def without_fsync(pool: Any) -> Any:
        conn = create(pool)
        conn._sqlite_conn.execute("PRAGMA synchronous=OFF")
        return conn

    SQLiteConnectionPool._create_connection = without_fsync  # type: ignore[method-assign]
    ours = Ours(f"sqlite:///{tmp}/ours-off.db", synchronous="OFF")
    await ours.open()
    lib = Library(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{tmp}/lib-off.db"},
        lambda: (None, "?"),
    )
    raw = RawSqlite(f"{tmp}/raw-off.db", synchronous="OFF")
    try:
        warm = range(WARM_UP_IDS, WARM_UP_IDS + WARM_UP)
        await ours.append(warm, 1)
        lib.append(warm)
        raw.append(warm)
        clock = Clockwork()
        for chunk in _rounds(aggregates, rounds):
            events = len(chunk) * EVENTS_PER_AGGREGATE
            await clock.time("ours", events, ours.append(chunk, 1))
            await clock.time("lib", events, functools.partial(lib.append, chunk))
            await clock.time("raw", events, functools.partial(raw.append, chunk))
        ours_us, lib_us, raw_us = (1e6 / clock.rate(case) for case in ("ours", "lib", "raw"))
        print(
            f"one at a time, synchronous=OFF (no fsync: each store's own work), per save: ours"
            f" {ours_us:.0f} us, library {lib_us:.0f} us ({lib_us / ours_us:.1f}x), raw insert"
            f" {raw_us:.0f} us"
        )
    finally:
        SQLiteConnectionPool._create_connection = create  # type: ignore[method-assign]
        await ours.close()
        lib.close()
        raw.conn.close()


async def _postgres(names: list[str], urls: list[str]) -> None:
    import psycopg

    ours = Ours(urls[0], max_size=max(CONCURRENCY // 4, 1))
    await ours.open()
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": names[1],
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
    }
    lib = Library(env, lambda: (psycopg.connect(urls[1]), "%s"))
    raw = RawPostgres()
    await raw.open(urls[2])
    try:
        _print("PostgreSQL (synchronous_commit=on)", await compare(ours, lib, raw.append))
    finally:
        await ours.close()
        lib.close()
        await raw.conn.close()


def main() -> None:
    """Run the SQLite then the PostgreSQL comparison and print both tables."""
    print(
        f"{AGGREGATES} aggregates x {EVENTS_PER_AGGREGATE} events; ours with {CONCURRENCY} "
        f"concurrent commands; {ROUNDS} interleaved rounds",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_sqlite(tmp))
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        print(f"\nPostgreSQL skipped: {error}")
        return
    tag = uuid.uuid4().hex[:8]
    names = [f"bench_es_{tag}_{who}" for who in ("ours", "lib", "raw")]
    try:
        urls = [asyncio.run(_scratch_database(name)) for name in names]
    except OSError as error:
        print(f"\nPostgreSQL skipped: {error}")
        return
    try:
        asyncio.run(_checkpoint())
        asyncio.run(_postgres(names, urls))
    finally:
        for name in names:
            asyncio.run(_drop_database(name))


if __name__ == "__main__":
    main()
