"""Fixtures for the messaging tests: event types, one parametrized transport, consumer DBs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from shipyard.core import ManualClock
from shipyard.messaging import (
    Event,
    EventBus,
    EventRegistry,
    Transport,
    install_schema,
    open_transport,
)
from shipyard.storage import Database, open_database
from tests.conftest import require_server


class OrderCreated(Event):
    order_id: str
    quantity: Annotated[int, msgspec.Meta(ge=0)] = 1


class OrderCancelled(Event):
    order_id: str


def make_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(OrderCreated)
    registry.register(OrderCancelled)
    return registry


async def eventually(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait (briefly polling) until ``check()`` holds; fail if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            pytest.fail("condition never became true")
        await asyncio.sleep(0.005)


class TransportKit:
    """Opens transports of one kind (re-opening reaches the same log) and buses on them."""

    def __init__(self, kind: str, url: str, options: dict[str, Any], tmp_path: Path) -> None:
        self.kind = kind
        self.url = url
        self.options = options
        self.tmp_path = tmp_path
        self.registry = make_registry()
        self.clock = ManualClock()
        self._opened: list[Transport] = []
        self._dbs: list[Database] = []
        self._buses: list[EventBus] = []
        self._memory: Transport | None = None

    async def transport(self) -> Transport:
        if self.kind == "memory":
            # One in-memory log per test: "re-opening" returns the same object.
            if self._memory is None:
                self._memory = await open_transport(self.url)
                self._opened.append(self._memory)
            return self._memory
        opened = await open_transport(self.url, **self.options)
        self._opened.append(opened)
        return opened

    async def database(self, name: str = "consumer") -> Database:
        db = await open_database(f"sqlite:///{self.tmp_path / (name + '.db')}")
        self._dbs.append(db)
        return db

    async def bus(self, db: Database | None = None, **options: Any) -> EventBus:
        options.setdefault("clock", self.clock)
        options.setdefault("fetch_wait", 0.05)
        bus = EventBus(
            await self.transport(), db or await self.database(), self.registry, **options
        )
        self._buses.append(bus)
        return bus

    async def close(self) -> None:
        for bus in self._buses:
            await bus.stop()
        if self.kind == "nats" and self._opened:
            await self._opened[0].delete_stream()  # type: ignore[attr-defined]
        for transport in self._opened:
            await transport.close()
        for db in self._dbs:
            await db.close()


@pytest.fixture(params=["memory", "sqlite", "nats"])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TransportKit]:
    kind = request.param
    options: dict[str, Any] = {}
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'bus.db'}"
    else:
        require_server("NATS", 4222)
        url = "nats://127.0.0.1:4222"
        options = {"stream": f"test_{uuid.uuid4().hex[:12]}"}
    kit = TransportKit(kind, url, options, tmp_path)
    yield kit
    await kit.close()


Recorder = Callable[[Any, Any], Awaitable[None]]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A producer's SQLite database with the outbox installed."""
    database = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    await install_schema(database)
    yield database
    await database.close()
