"""The Service runtime driven as ASGI: endpoints, lifespan, chaos, idempotency, shutdown."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shipyard.core import ConfigError, ManualClock
from shipyard.discovery.registry import RegistryServer
from shipyard.idempotency import MemoryIdempotencyStore
from shipyard.observability import RequestLog
from shipyard.resilience import CircuitBreaker, CircuitOpenError
from shipyard.service import Service
from tests.observability.asgi import Lifespan, call

TOKEN = "chaos-admin-token"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


class Shop:
    """A small Starlette app that records what happens to it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.orders_created = 0

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.events.append("app started")
            yield
            self.events.append("app stopped")

        self.app = Starlette(
            routes=[
                Route("/items/{id}", self.item),
                Route("/slow", self.slow),
                Route("/orders", self.create_order, methods=["POST"]),
            ],
            lifespan=lifespan,
        )

    async def item(self, request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["id"]})

    async def slow(self, request: Request) -> PlainTextResponse:
        self.entered.set()
        await self.release.wait()
        return PlainTextResponse("finished")

    async def create_order(self, request: Request) -> JSONResponse:
        self.orders_created += 1
        return JSONResponse({"order": self.orders_created}, status_code=201)


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"port": 70000}, "port"),
        ({"drain_timeout": 0}, "drain_timeout"),
        ({"registration_ttl": -1}, "registration_ttl"),
        ({"health": "yes"}, "health"),
        ({"metrics": "on"}, "metrics"),
    ],
)
def test_invalid_settings_fail_at_construction_naming_the_parameter(
    kwargs: dict[str, object], field: str
) -> None:
    settings: dict[str, object] = {"name": "shop", **kwargs}
    name = settings.pop("name")
    with pytest.raises(ConfigError) as raised:
        Service(name, Shop().app, **settings)  # type: ignore[arg-type]
    assert raised.value.field == field


async def test_registering_without_a_port_fails_at_start_naming_the_port() -> None:
    service = Service("shop", Shop().app, discovery="memory://")
    with pytest.raises(ConfigError, match="port"):
        await service.start()


# -- endpoints ----------------------------------------------------------------------------


async def test_health_endpoints_answer_and_startup_passes_once_started() -> None:
    service = Service("shop", Shop().app, request_log=False)
    assert (await call(service, path="/health/live")).status == 200
    assert (await call(service, path="/health/startup")).status == 503
    await service.start()
    assert (await call(service, path="/health/startup")).status == 200
    assert (await call(service, path="/health/ready")).status == 200
    await service.shutdown()


async def test_a_failing_readiness_check_makes_ready_answer_503() -> None:
    async def database() -> None:
        raise ConnectionError("database unreachable")

    service = Service("shop", Shop().app, health={"db": database}, request_log=False)
    assert (await call(service, path="/health/ready")).status == 503


async def test_metrics_count_requests_and_show_a_watched_breaker_open() -> None:
    service = Service("shop", Shop().app, request_log=False)
    breaker = CircuitBreaker("payments", minimum_calls=1, clock=ManualClock())
    service.watch(breaker)

    async def failing() -> None:
        raise ConnectionError("payments down")

    with pytest.raises(ConnectionError):
        await breaker.call(failing)
    with pytest.raises(CircuitOpenError):
        await breaker.call(failing)
    await call(service, path="/items/1")
    await call(service, path="/health/live")

    text = (await call(service, path="/metrics")).body.decode()
    assert 'http_server_requests_total{method="GET",route="/items/{id}",status="200"} 1.0' in text
    assert 'shipyard_breaker_state{breaker="payments",state="open"} 1.0' in text
    # Probes and scrapes are not traffic.
    assert "/health" not in text


async def test_every_request_gets_a_json_log_line_with_request_and_trace_ids() -> None:
    stream = io.StringIO()
    service = Service("shop", Shop().app, request_log=RequestLog("shop", stream=stream))
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    reply = await call(
        service, path="/items/9", headers=[("traceparent", traceparent), ("x-request-id", "r-9")]
    )
    assert reply.headers["x-request-id"] == "r-9"
    [line] = stream.getvalue().splitlines()
    logged = json.loads(line)
    assert (logged["request_id"], logged["trace_id"]) == ("r-9", TRACE_ID)
    assert (logged["service"], logged["route"], logged["status"]) == ("shop", "/items/{id}", 200)
    [span] = service.recorder.spans(TRACE_ID)
    assert span.span_id == logged["span_id"]


# -- chaos ---------------------------------------------------------------------------------


async def test_chaos_is_switched_on_and_off_through_the_guarded_admin_endpoint() -> None:
    clock = ManualClock()
    service = Service("shop", Shop().app, chaos_token=TOKEN, request_log=False, clock=clock)
    auth = [("authorization", f"Bearer {TOKEN}")]
    faults = json.dumps({"faults": [{"path_prefix": "/items", "latency": 0.25, "error_rate": 1.0}]})

    denied = await call(service, "PUT", "/admin/chaos", body=faults.encode())
    assert denied.status == 401
    assert (await call(service, path="/items/1")).status == 200

    assert (
        await call(service, "PUT", "/admin/chaos", headers=auth, body=faults.encode())
    ).status == 200
    injected = await call(service, path="/items/1")
    assert injected.status == 503
    assert clock.slept == [0.25]
    # The service's own endpoints stay reachable while chaos reigns.
    assert (await call(service, path="/health/live")).status == 200

    await call(service, "PUT", "/admin/chaos", headers=auth, body=b'{"faults": []}')
    assert (await call(service, path="/items/1")).status == 200


async def test_without_a_token_there_is_no_chaos_admin() -> None:
    service = Service("shop", Shop().app, request_log=False)
    reply = await call(service, "PUT", "/admin/chaos", headers=[("x-chaos-token", TOKEN)])
    assert reply.status == 404  # the app's own 404: nothing is mounted there
    assert service.chaos is None


# -- idempotency ---------------------------------------------------------------------------


async def test_an_idempotency_store_makes_a_retried_post_run_once() -> None:
    shop = Shop()
    service = Service("shop", shop.app, idempotency=MemoryIdempotencyStore(), request_log=False)
    headers = [("idempotency-key", "order-1"), ("content-type", "application/json")]
    first = await call(service, "POST", "/orders", headers=headers, body=b"{}")
    again = await call(service, "POST", "/orders", headers=headers, body=b"{}")
    assert first.status == again.status == 201
    assert first.body == again.body
    assert again.headers["idempotent-replayed"] == "true"
    assert shop.orders_created == 1


async def test_any_asgi_middleware_factory_can_be_the_idempotency_hook() -> None:
    seen: list[str] = []

    def factory(app: Callable[[Scope, Receive, Send], object]) -> object:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["path"])
            await app(scope, receive, send)  # type: ignore[misc]

        return wrapped

    service = Service("shop", Shop().app, idempotency=factory, request_log=False)
    await call(service, path="/items/2")
    assert seen == ["/items/2"]


# -- lifespan and shutdown ----------------------------------------------------------------


async def test_lifespan_events_reach_the_app_and_shutdown_closes_resources_last_first() -> None:
    shop = Shop()
    service = Service("shop", shop.app, request_log=False)
    service.on_shutdown(lambda: shop.events.append("sync closed"))

    async def close_pool() -> None:
        shop.events.append("pool closed")

    service.on_shutdown(close_pool)
    lifespan = Lifespan(service)

    assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
    assert shop.events == ["app started"]
    assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert shop.events == ["app started", "app stopped", "pool closed", "sync closed"]
    assert service.state == "stopped"


async def test_a_failing_app_startup_fails_the_service_startup_with_its_reason() -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("cannot open database")
        yield

    service = Service("shop", Starlette(lifespan=lifespan), request_log=False)
    reply = await Lifespan(service).startup()
    assert reply["type"] == "lifespan.startup.failed"
    assert "cannot open database" in reply["message"]


async def test_an_app_without_lifespan_support_still_starts() -> None:
    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("only http here")
        await PlainTextResponse("bare")(scope, receive, send)

    service = Service("bare", bare, request_log=False)
    lifespan = Lifespan(service)
    assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
    assert (await call(service, path="/x")).body == b"bare"
    assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"


async def test_graceful_shutdown_drains_in_flight_work_while_not_ready_then_deregisters() -> None:
    shop = Shop()
    async with RegistryServer() as registry:
        service = Service(
            "shop",
            shop.app,
            discovery=f"consul://127.0.0.1:{registry.port}",
            port=8001,
            request_log=False,
        )
        lifespan = Lifespan(service)
        await lifespan.startup()
        [instance] = registry.catalog.instances_of("shop")
        assert (instance.service.service_id, instance.service.port) == ("shop-127.0.0.1:8001", 8001)
        assert dict(instance.service.meta)["version"] == "0.0.0"

        in_flight = asyncio.create_task(call(service, path="/slow"))
        await shop.entered.wait()
        stopping = asyncio.create_task(lifespan.shutdown())
        await eventually(lambda: service.draining)

        assert (await call(service, path="/health/ready")).status == 503
        assert registry.catalog.instances_of("shop") != []  # still draining
        assert not stopping.done()

        shop.release.set()
        finished = await in_flight
        assert (finished.status, finished.body) == (200, b"finished")
        assert (await stopping)["type"] == "lifespan.shutdown.complete"
        assert registry.catalog.instances_of("shop") == []


async def test_draining_gives_up_after_the_drain_timeout() -> None:
    shop = Shop()
    clock = ManualClock(auto_advance=False)
    service = Service("shop", shop.app, drain_timeout=5, clock=clock, request_log=False)
    await service.start()
    stuck = asyncio.create_task(call(service, path="/slow"))
    await shop.entered.wait()
    stopping = asyncio.create_task(service.shutdown())
    await eventually(lambda: service.draining)
    clock.advance(4.9)
    await asyncio.sleep(0)
    assert not stopping.done()

    clock.advance(0.1)
    await asyncio.wait_for(stopping, 5)
    assert service.state == "stopped"
    assert service.in_flight == 1
    stuck.cancel()
