"""IdempotencyMiddleware through a real Starlette app, driven by httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shipyard.core import ConfigError, ManualClock
from shipyard.idempotency import (
    IdempotencyMiddleware,
    IdempotencyRecord,
    IdempotencyStore,
    Lease,
    MemoryIdempotencyStore,
    StoredResponse,
    header_principal,
)
from tests.idempotency.conftest import Backend

LEASE = 30.0


class Shop:
    """A tiny service whose handlers count how often they really ran."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    def ran(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, 0) + 1
        return self.runs[name]

    async def create_order(self, request: Request) -> Response:
        body = await request.body()
        self.entered.set()
        await self.gate.wait()
        # Yield a few times so concurrent requests really overlap with this one.
        for _ in range(3):
            await asyncio.sleep(0)
        number = self.ran("orders")
        response = JSONResponse(
            {"order": number, "echo": body.decode()},
            status_code=201,
            headers={"Location": f"/orders/{number}"},
        )
        response.set_cookie("session", f"s{number}")
        return response

    async def list_orders(self, request: Request) -> Response:
        return JSONResponse({"runs": self.ran("list")})

    async def boom(self, request: Request) -> Response:
        self.ran("boom")
        raise RuntimeError("handler crashed")

    async def unavailable(self, request: Request) -> Response:
        return JSONResponse({"run": self.ran("unavailable")}, status_code=503)

    async def rejected(self, request: Request) -> Response:
        return JSONResponse({"run": self.ran("rejected")}, status_code=400)

    async def big(self, request: Request) -> Response:
        return Response(b"x" * 2048 + str(self.ran("big")).encode())

    def app(self, store: IdempotencyStore, **options: Any) -> Starlette:
        routes = [
            Route("/orders", self.create_order, methods=["POST"]),
            Route("/orders", self.list_orders, methods=["GET"]),
            Route("/boom", self.boom, methods=["POST"]),
            Route("/unavailable", self.unavailable, methods=["POST"]),
            Route("/rejected", self.rejected, methods=["POST"]),
            Route("/big", self.big, methods=["POST"]),
        ]
        options.setdefault("lease", LEASE)
        return Starlette(
            routes=routes, middleware=[Middleware(IdempotencyMiddleware, store=store, **options)]
        )


Connect = Callable[..., httpx.AsyncClient]


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(auto_advance=False)


@pytest.fixture
async def connect(shop: Shop, clock: ManualClock) -> AsyncIterator[Connect]:
    """``connect(store=None, **middleware_options)`` -> a client of the shop app."""
    clients: list[httpx.AsyncClient] = []

    def make(store: IdempotencyStore | None = None, **options: Any) -> httpx.AsyncClient:
        store = store if store is not None else MemoryIdempotencyStore(clock=clock)
        options.setdefault("clock", clock)
        transport = httpx.ASGITransport(shop.app(store, **options), raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://shop")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def key(value: str | bytes = "key-1", **headers: str) -> dict[str, Any]:
    return {"Idempotency-Key": value, **headers}


# -- replay ------------------------------------------------------------------------------------


async def test_a_repeated_request_replays_the_first_response_exactly(
    connect: Connect, shop: Shop
) -> None:
    client = connect()
    first = await client.post("/orders", content=b"2 apples", headers=key())
    again = await client.post("/orders", content=b"2 apples", headers=key())
    assert shop.runs["orders"] == 1
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["location"] == first.headers["location"] == "/orders/1"
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


async def test_set_cookie_is_not_replayed(connect: Connect) -> None:
    client = connect()
    first = await client.post("/orders", headers=key())
    again = await client.post("/orders", headers=key())
    assert "set-cookie" in first.headers
    assert "set-cookie" not in again.headers


async def test_requests_without_the_header_run_every_time(connect: Connect, shop: Shop) -> None:
    client = connect()
    await client.post("/orders")
    await client.post("/orders")
    assert shop.runs["orders"] == 2


async def test_get_requests_are_untouched_even_with_a_key(connect: Connect, shop: Shop) -> None:
    client = connect()
    first = await client.get("/orders", headers=key())
    again = await client.get("/orders", headers=key())
    assert (first.json(), again.json()) == ({"runs": 1}, {"runs": 2})
    assert "idempotent-replayed" not in again.headers


async def test_the_same_key_from_two_users_runs_twice(connect: Connect, shop: Shop) -> None:
    client = connect(principal=header_principal("X-User-Id"))
    alice = await client.post("/orders", headers=key(**{"X-User-Id": "alice"}))
    bob = await client.post("/orders", headers=key(**{"X-User-Id": "bob"}))
    alice_again = await client.post("/orders", headers=key(**{"X-User-Id": "alice"}))
    assert shop.runs["orders"] == 2
    assert (alice.json()["order"], bob.json()["order"]) == (1, 2)
    assert alice_again.json()["order"] == 1


async def test_the_same_key_on_another_route_is_another_key(connect: Connect, shop: Shop) -> None:
    client = connect()
    await client.post("/orders", headers=key())
    rejected = await client.post("/rejected", headers=key())
    assert rejected.status_code == 400
    assert shop.runs == {"orders": 1, "rejected": 1}


# -- misuse ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "path"),
    [(b"3 apples", "/orders"), (b"2 apples", "/orders?express=1")],
    ids=["different-body", "different-query"],
)
async def test_reusing_a_key_for_a_different_request_is_422(
    connect: Connect, shop: Shop, content: bytes, path: str
) -> None:
    client = connect()
    await client.post("/orders", content=b"2 apples", headers=key())
    reused = await client.post(path, content=content, headers=key())
    assert reused.status_code == 422
    assert "different request" in reused.json()["error"]
    assert shop.runs["orders"] == 1


async def test_selected_headers_are_part_of_the_fingerprint(connect: Connect) -> None:
    client = connect(fingerprint_headers=["X-Currency"])
    await client.post("/orders", headers=key(**{"X-Currency": "EUR"}))
    reused = await client.post("/orders", headers=key(**{"X-Currency": "USD"}))
    assert reused.status_code == 422


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"", "empty"), (b"k" * 256, "at most 255"), ("clé".encode(), "printable ASCII")],
    ids=["empty", "too-long", "not-ascii"],
)
async def test_a_malformed_key_is_400_and_the_handler_does_not_run(
    connect: Connect, shop: Shop, value: bytes, reason: str
) -> None:
    response = await connect().post("/orders", headers=key(value))
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert "orders" not in shop.runs


async def test_a_quoted_key_from_the_ietf_draft_is_the_same_key(connect: Connect) -> None:
    client = connect()
    await client.post("/orders", headers=key("abc"))
    again = await client.post("/orders", headers=key('"abc"'))
    assert again.headers["idempotent-replayed"] == "true"


async def test_two_key_headers_are_400(connect: Connect) -> None:
    headers = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    response = await connect().post("/orders", headers=headers)
    assert response.status_code == 400


async def test_a_required_key_that_is_missing_is_400_only_under_its_prefix(
    connect: Connect, shop: Shop
) -> None:
    client = connect(required_paths=["/orders"])
    missing = await client.post("/orders")
    elsewhere = await client.post("/rejected")
    assert missing.status_code == 400
    assert "required" in missing.json()["error"]
    assert elsewhere.status_code == 400  # the handler's own answer: it ran
    assert shop.runs == {"rejected": 1}


async def test_a_request_body_over_the_limit_is_413(connect: Connect, shop: Shop) -> None:
    response = await connect(max_request_bytes=10).post("/orders", content=b"x" * 11, headers=key())
    assert response.status_code == 413
    assert "orders" not in shop.runs


async def test_a_different_request_is_422_even_while_the_first_runs(
    connect: Connect, shop: Shop
) -> None:
    client = connect()
    shop.gate.clear()
    first = asyncio.create_task(client.post("/orders", content=b"a", headers=key()))
    await shop.entered.wait()
    reused = await client.post("/orders", content=b"b", headers=key())
    shop.gate.set()
    await first
    assert reused.status_code == 422


# -- in progress -------------------------------------------------------------------------------


async def test_a_repeat_while_the_first_runs_is_409_with_retry_after(
    connect: Connect, shop: Shop
) -> None:
    client = connect(retry_after=2)
    shop.gate.clear()
    first = asyncio.create_task(client.post("/orders", headers=key()))
    await shop.entered.wait()
    second = await client.post("/orders", headers=key())
    shop.gate.set()
    await first
    assert second.status_code == 409
    assert second.headers["retry-after"] == "2"
    assert "in progress" in second.json()["error"]
    assert shop.runs["orders"] == 1


async def test_in_wait_mode_a_repeat_waits_for_the_first_and_replays_it(
    connect: Connect, shop: Shop
) -> None:
    client = connect(concurrent="wait")
    shop.gate.clear()
    first = asyncio.create_task(client.post("/orders", headers=key()))
    await shop.entered.wait()
    second = asyncio.create_task(client.post("/orders", headers=key()))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not second.done()
    shop.gate.set()
    responses = await asyncio.gather(first, second)
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[1].content == responses[0].content
    assert responses[1].headers["idempotent-replayed"] == "true"
    assert shop.runs["orders"] == 1


async def test_in_wait_mode_a_repeat_gives_up_with_409_after_the_lease(
    connect: Connect, shop: Shop, clock: ManualClock
) -> None:
    client = connect(concurrent="wait", store=_NeverFinished())
    waiting = asyncio.create_task(client.post("/orders", headers=key()))
    for _ in range(10):
        await asyncio.sleep(0)
    clock.advance(LEASE + 1)
    for _ in range(10):
        await asyncio.sleep(0)
    response = await waiting
    assert response.status_code == 409


async def test_a_waiter_in_another_process_polls_until_the_first_is_stored(
    connect: Connect, shop: Shop, clock: ManualClock
) -> None:
    shared = MemoryIdempotencyStore(clock=clock)
    here = connect(store=shared)
    elsewhere = connect(store=shared, concurrent="wait", poll_interval=0.5)
    shop.gate.clear()
    first = asyncio.create_task(here.post("/orders", headers=key()))
    await shop.entered.wait()
    second = asyncio.create_task(elsewhere.post("/orders", headers=key()))
    shop.gate.set()
    await first
    for _ in range(10):
        await asyncio.sleep(0)
    assert not second.done()  # no wake-up crosses processes: only the poll finds it
    clock.advance(0.5)
    replay = await second
    assert replay.headers["idempotent-replayed"] == "true"
    assert shop.runs["orders"] == 1


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgresql", "redis"], indirect=True)
async def test_a_hundred_concurrent_identical_posts_run_the_handler_once(
    connect: Connect, shop: Shop, backend: Backend
) -> None:
    # The backend's clock is separate from the middleware's; both stand still.
    client = connect(store=backend.store, concurrent="wait")
    responses = await asyncio.gather(
        *(client.post("/orders", content=b"one order", headers=key()) for _ in range(100))
    )
    assert shop.runs["orders"] == 1
    assert {r.status_code for r in responses} == {201}
    assert {r.content for r in responses} == {responses[0].content}
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 99


async def test_rejected_concurrent_posts_retried_until_replayed_run_once(
    connect: Connect, shop: Shop
) -> None:
    client = connect()

    async def post_until_answered() -> httpx.Response:
        while True:  # what a well-behaved client does on 409
            response = await client.post("/orders", headers=key())
            if response.status_code != 409:
                return response
            await asyncio.sleep(0)

    responses = await asyncio.gather(*(post_until_answered() for _ in range(20)))
    assert shop.runs["orders"] == 1
    assert {r.content for r in responses} == {responses[0].content}


# -- failures ----------------------------------------------------------------------------------


async def test_a_handler_exception_releases_the_key_at_once(connect: Connect, shop: Shop) -> None:
    client = connect()
    first = await client.post("/boom", headers=key())
    retry = await client.post("/boom", headers=key())
    assert (first.status_code, retry.status_code) == (500, 500)
    assert shop.runs["boom"] == 2


async def test_a_server_error_is_not_stored_by_default(connect: Connect, shop: Shop) -> None:
    client = connect()
    first = await client.post("/unavailable", headers=key())
    retry = await client.post("/unavailable", headers=key())
    assert first.headers["idempotency-stored"] == "false"
    assert (first.json(), retry.json()) == ({"run": 1}, {"run": 2})


async def test_a_server_error_is_replayed_when_configured(connect: Connect, shop: Shop) -> None:
    client = connect(store_server_errors=True)
    await client.post("/unavailable", headers=key())
    again = await client.post("/unavailable", headers=key())
    assert (again.status_code, again.json()) == (503, {"run": 1})


async def test_a_client_error_is_stored_and_replayed(connect: Connect, shop: Shop) -> None:
    client = connect()
    await client.post("/rejected", headers=key())
    again = await client.post("/rejected", headers=key())
    assert (again.status_code, again.json()) == (400, {"run": 1})
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_response_over_the_limit_is_sent_whole_but_not_stored(
    connect: Connect, shop: Shop
) -> None:
    client = connect(max_response_bytes=1024)
    first = await client.post("/big", headers=key())
    retry = await client.post("/big", headers=key())
    assert first.content == b"x" * 2048 + b"1"
    assert first.headers["idempotency-stored"] == "false"
    assert retry.content == b"x" * 2048 + b"2"


async def test_after_a_crash_before_the_store_write_the_key_frees_when_the_lease_ends(
    connect: Connect, shop: Shop, clock: ManualClock
) -> None:
    client = connect(store=_CompleteFailsOnce(MemoryIdempotencyStore(clock=clock)))
    first = await client.post("/orders", headers=key())
    during_lease = await client.post("/orders", headers=key())
    clock.advance(LEASE + 1)
    after_lease = await client.post("/orders", headers=key())
    replay = await client.post("/orders", headers=key())
    assert (first.status_code, first.headers["idempotency-stored"]) == (201, "false")
    assert during_lease.status_code == 409
    assert after_lease.json()["order"] == 2
    assert replay.json()["order"] == 2
    assert replay.headers["idempotent-replayed"] == "true"


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"lease": 0}, "lease"),
        ({"ttl": -1}, "ttl"),
        ({"concurrent": "queue"}, "concurrent"),
        ({"methods": []}, "methods"),
        ({"methods": ["PO ST"]}, "methods"),
        ({"required_paths": ["orders"]}, "required_paths"),
        ({"max_response_bytes": -1}, "max_response_bytes"),
        ({"poll_interval": 0}, "poll_interval"),
    ],
)
def test_invalid_options_fail_at_construction_naming_the_option(
    options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as error:
        IdempotencyMiddleware(Starlette(), store=MemoryIdempotencyStore(), **options)
    assert error.value.field == field


# -- helper stores -----------------------------------------------------------------------------


class _CompleteFailsOnce:
    """A store that dies once between the handler and the store write."""

    def __init__(self, inner: MemoryIdempotencyStore) -> None:
        self.inner = inner
        self.failed = False
        self.acquire = inner.acquire
        self.release = inner.release
        self.get = inner.get
        self.purge_expired = inner.purge_expired

    async def complete(self, lease: Lease, response: StoredResponse, *, ttl: float) -> bool:
        if not self.failed:
            self.failed = True
            raise ConnectionError("store unreachable")
        return await self.inner.complete(lease, response, ttl=ttl)


class _NeverFinished(MemoryIdempotencyStore):
    """A store where some other process holds every key, forever."""

    async def acquire(self, key: str, fingerprint: str, *, lease: float) -> IdempotencyRecord:
        return IdempotencyRecord(key, fingerprint, "in_progress", float("inf"))
