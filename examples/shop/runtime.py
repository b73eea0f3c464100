"""What every shop service is built from: its own database, the bus, discovery, clients.

A :class:`ShopRuntime` is created when a service module is imported and opened by the
app's lifespan (so nothing touches a database or a socket before the server's event loop
runs). It owns, per service:

* the service's database (``settings.database_url(name)``) with its schema and seed data,
  and an outbox relay publishing what the service adds to its outbox;
* when the service consumes events (``consume``): an ``EventBus`` whose inbox lives in a
  second database, ``<name>_inbox``, with its own outbox for the events its choreography
  handlers produce. The handlers call the same idempotent domain functions as the HTTP
  API, which commit in the service database: a bus handler's transaction must not nest a
  second write transaction on the same SQLite file (one writer connection per process);
* one ``ServiceClient`` per called service, all sharing one ``Discovery``, with every
  breaker they hold (the service's, and each called instance's) exported on ``/metrics``;
* bulkheaded pools in both databases (:func:`service_pools`, :func:`inbox_pools`): HTTP
  handlers use ``api``, relays, projections and the saga orchestrator ``background``, and
  the orders dashboard ``analytics``, so a burst of background work or a slow report cannot
  take the connections user requests need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from examples.shop.contracts import shop_registry
from examples.shop.pools import inbox_pools, service_pools
from examples.shop.settings import ShopSettings
from starlette.applications import Starlette
from starlette.types import ASGIApp

from shipyard.client import ServiceClient
from shipyard.discovery import Discovery
from shipyard.health import Check, postgres_check, sqlite_check
from shipyard.idempotency import IdempotencyMiddleware, SqlIdempotencyStore, header_principal
from shipyard.messaging import (
    EventBus,
    Outbox,
    OutboxRelay,
    Transport,
    install_schema,
    open_transport,
)
from shipyard.service import Service
from shipyard.storage import PooledDatabase, PoolView, Transaction, open_database

Seeder = Callable[[Transaction], Awaitable[None]]
Subscriber = Callable[[EventBus, Outbox], None]
Hook = Callable[[], Awaitable[None]]


class ShopRuntime:
    """The shared plumbing of one shop service process (see the module docs)."""

    def __init__(
        self,
        name: str,
        settings: ShopSettings,
        *,
        schema: Sequence[str] = (),
        seed: Seeder | None = None,
        publishes: bool = False,
        idempotency: bool = False,
        idempotency_required: Sequence[str] = (),
        analytics: bool = False,
    ) -> None:
        self.name = name
        self.settings = settings
        self.registry = shop_registry()
        self.outbox = Outbox(self.registry)
        """The service database's outbox (events describing its own changes)."""
        self.inbox_outbox = Outbox(self.registry)
        """The inbox database's outbox (events produced by choreography handlers)."""
        self._schema = tuple(schema)
        self._seed = seed
        self._publishes = publishes
        self._idempotency = idempotency or bool(idempotency_required)
        self._analytics = analytics
        self.idempotency_required = tuple(idempotency_required)
        self._subscribers: list[Subscriber] = []
        self._on_open: list[Hook] = []
        self._before_consuming: list[Hook] = []
        self._on_close: list[Hook] = []
        self._clients: dict[str, ServiceClient] = {}
        self._relays: list[OutboxRelay] = []
        self._db: PooledDatabase | None = None
        self._inbox: PooledDatabase | None = None
        self._transport: Transport | None = None
        self.bus: EventBus | None = None
        self.idempotency_store: SqlIdempotencyStore | None = None
        self._discovery: Discovery | None = None
        self._service: Service | None = None

    # -- declaring ----------------------------------------------------------------------

    def consume(self, subscriber: Subscriber) -> Subscriber:
        """Subscribe handlers at open (only on the instance that consumes events)."""
        self._subscribers.append(subscriber)
        return subscriber

    def on_open(self, hook: Hook) -> Hook:
        """Run ``hook`` once the databases and relays are open, before events flow (build
        stores and start background work here)."""
        self._on_open.append(hook)
        return hook

    def before_consuming(self, hook: Hook) -> Hook:
        """Run ``hook`` after the inbox database opened, before events flow (create the
        tables handlers write to here)."""
        self._before_consuming.append(hook)
        return hook

    def on_close(self, hook: Hook) -> Hook:
        """Run ``hook`` first at shutdown (stop background work here)."""
        self._on_close.append(hook)
        return hook

    # -- the open resources -------------------------------------------------------------

    @property
    def db(self) -> PooledDatabase:
        """The service's own database (open between start-up and shutdown)."""
        if self._db is None:
            raise RuntimeError(f"{self.name}: the database opens at start-up")
        return self._db

    @property
    def background_db(self) -> PoolView:
        """The service database's ``background`` pool: for work no request waits on."""
        return self.db.pool("background")

    @property
    def analytics_db(self) -> PoolView:
        """The service database's ``analytics`` pool (``analytics=True``): for reports."""
        return self.db.pool("analytics")

    @property
    def inbox_db(self) -> PooledDatabase:
        """The consumer's database: inbox, dead letters, and what handlers write in the
        consumer's transaction (replicas, the choreography tracker)."""
        if self._inbox is None:
            raise RuntimeError(f"{self.name}: this instance consumes no events")
        return self._inbox

    @property
    def consuming(self) -> bool:
        """True once this instance consumes events."""
        return self.bus is not None

    @property
    def discovery(self) -> Discovery:
        """The registry client shared by this process's service clients."""
        if self._discovery is None:
            self._discovery = Discovery(self.settings.registry)
        return self._discovery

    def client(
        self,
        service: str,
        *,
        policy: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
        outlier: bool = True,
    ) -> ServiceClient:
        """The client for ``service`` (created on first use, closed at shutdown)."""
        client = self._clients.get(service)
        if client is None:
            client = ServiceClient(
                service, discovery=self.discovery, policy=policy, timeout=timeout, outlier=outlier
            )
            self._clients[service] = client
            if self._service is not None and self._service.metrics is not None:
                # Every breaker on /metrics from its first call: the dashboard shows them.
                client.watch_breakers(self._service.watch)
        return client

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database (schema, seed), the bus and the relays; run ``on_open`` hooks."""
        url = self.settings.database_url(self.name)
        db = await open_database(url, pools=service_pools(url, analytics=self._analytics))
        self._db = db

        async def create_tables() -> None:
            async with db.transaction() as tx:
                for statement in self._schema:
                    await tx.execute(statement)

        await _retrying(create_tables)
        if self._publishes:
            await install_schema(db)  # the outbox table, written by the seed too
        if self._seed is not None:
            seed = self._seed

            async def seed_once() -> None:
                # Seeds insert only into empty tables; two instances of one service
                # sharing a PostgreSQL database can race to it, and the loser's retry
                # then finds the rows.
                async with db.transaction() as tx:
                    await seed(tx)

            await _retrying(seed_once)
        if self._idempotency:
            self.idempotency_store = SqlIdempotencyStore(db)
            await self.idempotency_store.create_table()
        consuming = self.settings.consumer and bool(self._subscribers)
        if self._publishes or consuming:
            options = (
                {"stream": self.settings.bus_stream}
                if self.settings.bus.startswith("nats:")
                else {}
            )
            self._transport = await open_transport(self.settings.bus, **options)
        if self._publishes:
            self._relays.append(
                OutboxRelay(db.pool("background"), self._transport_or_fail(), outbox=self.outbox)
            )
        if consuming:
            inbox_url = self.settings.database_url(f"{self.name}-inbox")
            inbox = await open_database(inbox_url, pools=inbox_pools(inbox_url))
            self._inbox = inbox
            await install_schema(inbox)
            # Choreography must not give up on an event: a participant that is down for a
            # while is retried (capped backoff) rather than dead-lettered after 5 tries.
            self.bus = EventBus(
                self._transport_or_fail(),
                inbox,
                self.registry,
                max_attempts=10_000,
                retry_max_delay=2.0,
                fetch_wait=0.5,
            )
            for subscriber in self._subscribers:
                subscriber(self.bus, self.inbox_outbox)
            self._relays.append(
                OutboxRelay(inbox, self._transport_or_fail(), outbox=self.inbox_outbox)
            )
        for relay in self._relays:
            relay.start()
        # Hooks run before events flow, so handlers find what the hooks build.
        for hook in self._on_open:
            await hook()
        if self._service is not None and self._service.metrics is not None:
            # The bulkheads on /metrics, for the dashboard.
            self._service.watch_database(self.name, db)
            if self._inbox is not None:
                self._service.watch_database(f"{self.name}-inbox", self._inbox)
        if self.bus is not None:
            for hook in self._before_consuming:
                await hook()
            await self.bus.start()

    def _transport_or_fail(self) -> Transport:
        assert self._transport is not None
        return self._transport

    async def close(self) -> None:
        """Stop background work, the bus and the relays; close clients and databases."""
        for hook in self._on_close:
            with contextlib.suppress(Exception):
                await hook()
        if self.bus is not None:
            await self.bus.stop()
        for relay in self._relays:
            await relay.stop()
        for client in self._clients.values():
            await client.aclose()
        if self._discovery is not None:
            await self._discovery.aclose()
        if self._transport is not None:
            await self._transport.close()
        for db in (self._inbox, self._db):
            if db is not None:
                await db.close()

    def lifespan(self) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
        """A Starlette ``lifespan=`` that opens the runtime and closes it at shutdown."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.open()
            try:
                yield
            finally:
                await self.close()

        return lifespan

    def checks(self) -> dict[str, Check]:
        """Readiness checks: the service database answers."""
        url = self.settings.database_url(self.name)
        if url.startswith("sqlite:"):
            return {"db": sqlite_check(url)}
        return {"db": postgres_check(url)}

    def service(self, app: ASGIApp, *, version: str = "1.0.0") -> Service:
        """The ``Service`` around ``app``: discovery, health, metrics, chaos admin, and
        idempotency keys when the runtime was built with ``idempotency=True``."""
        self._service = Service(
            self.name,
            app,
            version=version,
            discovery=self.settings.registry,
            instance_id=None,
            meta={"instance": str(self.settings.instance)},
            registration_ttl=5.0,
            health=self.checks(),
            idempotency=self._idempotency_middleware if self._idempotency else None,
            chaos_token=self.settings.chaos_token,
            drain_timeout=5.0,
        )
        return self._service

    def _idempotency_middleware(self, app: ASGIApp) -> ASGIApp:
        # The store lives in the database open() creates in the lifespan, after this
        # middleware was built: the opener is called once the lifespan has started.
        return IdempotencyMiddleware(
            app,
            store=self._opened_idempotency_store,
            principal=header_principal("X-User-Id"),
            concurrent="wait",
            required_paths=self.idempotency_required,
        )

    def _opened_idempotency_store(self) -> SqlIdempotencyStore:
        if self.idempotency_store is None:
            raise RuntimeError(f"{self.name}: the idempotency store opens at start-up")
        return self.idempotency_store


async def _retrying(install: Callable[[], Awaitable[None]], attempts: int = 5) -> None:
    """Run the service's own schema install or seed, again if it fails: on PostgreSQL two
    instances starting together can both try ``CREATE TABLE IF NOT EXISTS`` or the seed's
    inserts and one fails with a unique violation. (The toolkit's ``install_schema``
    serializes itself.)"""
    for attempt in range(attempts):
        try:
            await install()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
