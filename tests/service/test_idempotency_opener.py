"""`Service(idempotency=opener)`: the store opens after the app's lifespan opened its database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shipyard.core import ConfigError
from shipyard.idempotency import (
    IdempotencyMiddleware,
    MemoryIdempotencyStore,
    SqlIdempotencyStore,
)
from shipyard.service import Service
from shipyard.storage import PooledDatabase, open_database
from tests.observability.asgi import Lifespan, call

HEADERS = [("idempotency-key", "order-1"), ("content-type", "application/json")]


class Orders:
    """An app whose database opens in its lifespan, like a real service's."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path / 'orders.db'}"
        self.db: PooledDatabase | None = None
        self.created = 0

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.db = await open_database(self.url)
            yield
            await self.db.close()

        async def create(request: Request) -> JSONResponse:
            self.created += 1
            return JSONResponse({"order": self.created}, status_code=201)

        self.app = Starlette(routes=[Route("/orders", create, methods=["POST"])], lifespan=lifespan)

    async def open_store(self) -> SqlIdempotencyStore:
        assert self.db is not None, "the opener ran before the app's lifespan opened the db"
        store = SqlIdempotencyStore(self.db)
        await store.create_table()
        return store


async def test_an_async_opener_binds_the_store_after_the_apps_startup(tmp_path: Path) -> None:
    orders = Orders(tmp_path)
    service = Service("orders", orders.app, idempotency=orders.open_store, request_log=False)
    lifespan = Lifespan(service)
    assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
    first = await call(service, "POST", "/orders", headers=HEADERS, body=b"{}")
    again = await call(service, "POST", "/orders", headers=HEADERS, body=b"{}")
    assert (first.status, again.status) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert orders.created == 1
    await lifespan.shutdown()


async def test_an_opener_that_fails_fails_the_service_startup(tmp_path: Path) -> None:
    orders = Orders(tmp_path)

    def broken() -> SqlIdempotencyStore:
        raise ConnectionError("idempotency database unreachable")

    service = Service("orders", orders.app, idempotency=broken, request_log=False)
    reply = await Lifespan(service).startup()
    assert reply["type"] == "lifespan.startup.failed"
    assert "idempotency database unreachable" in reply["message"]


async def test_the_middleware_takes_an_opener_and_binds_it_once() -> None:
    opened: list[MemoryIdempotencyStore] = []

    def open_store() -> MemoryIdempotencyStore:
        opened.append(MemoryIdempotencyStore())
        return opened[-1]

    created = 0

    async def create(request: Request) -> JSONResponse:
        nonlocal created
        created += 1
        return JSONResponse({"order": created}, status_code=201)

    app = Starlette(routes=[Route("/orders", create, methods=["POST"])])
    middleware = IdempotencyMiddleware(app, store=open_store)
    assert middleware.store is None
    # Served without a lifespan: the first request it covers binds the store.
    await call(middleware, "POST", "/orders", headers=HEADERS, body=b"{}")
    again = await call(middleware, "POST", "/orders", headers=HEADERS, body=b"{}")
    assert again.headers["idempotent-replayed"] == "true"
    assert middleware.store is opened[0]
    assert (len(opened), created) == (1, 1)


def test_a_store_that_is_neither_a_store_nor_an_opener_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        IdempotencyMiddleware(Starlette(), store="sqlite:///keys.db")  # type: ignore[arg-type]
    assert raised.value.field == "store"
