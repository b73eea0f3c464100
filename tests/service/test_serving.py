"""A Service behind a real uvicorn on 127.0.0.1: HTTP, registration, traces, chaos."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shipyard.client import ServiceClient
from shipyard.discovery.registry import RegistryServer
from shipyard.service import Service
from tests.service.serving import free_port, serving

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TOKEN = "chaos-admin-token"


def inventory_app() -> Starlette:
    async def stock(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "traceparent": request.headers.get("traceparent"),
                "request_id": request.headers.get("x-request-id"),
            }
        )

    return Starlette(routes=[Route("/stock", stock)])


def orders_app(inventory_url: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, ServiceClient]]:
        async with ServiceClient("inventory", discovery=inventory_url) as client:
            yield {"inventory": client}

    async def order(request: Request) -> JSONResponse:
        client: ServiceClient = request.state.inventory
        answer = await client.get("/stock")
        return JSONResponse({"inventory_saw": answer.json()})

    return Starlette(routes=[Route("/orders/{id}", order)], lifespan=lifespan)


async def test_health_endpoints_answer_over_http() -> None:
    port = free_port()
    service = Service("inventory", inventory_app(), request_log=False)
    async with serving(service, port), aiohttp.ClientSession() as http:
        for probe in ("live", "ready", "startup"):
            async with http.get(f"http://127.0.0.1:{port}/health/{probe}") as response:
                assert response.status == 200, probe


async def test_the_service_registers_on_start_up_and_deregisters_at_shutdown() -> None:
    port = free_port()
    async with RegistryServer() as registry:
        service = Service(
            "inventory",
            inventory_app(),
            discovery=f"consul://127.0.0.1:{registry.port}",
            port=port,
            request_log=False,
        )
        async with serving(service, port):
            [instance] = registry.catalog.instances_of("inventory")
            assert instance.service.port == port
        assert registry.catalog.instances_of("inventory") == []


async def test_the_incoming_trace_continues_into_calls_made_through_the_service_client() -> None:
    inventory_port, orders_port = free_port(), free_port()
    inventory = Service("inventory", inventory_app(), request_log=False)
    orders = Service(
        "orders",
        orders_app(f"static://inventory=127.0.0.1:{inventory_port}"),
        request_log=False,
    )
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
    async with (
        serving(inventory, inventory_port),
        serving(orders, orders_port),
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{orders_port}/orders/1",
            headers={"traceparent": traceparent, "x-request-id": "req-1"},
        ) as response,
    ):
        assert response.status == 200
        seen = (await response.json())["inventory_saw"]

    _, trace_id, span_id, _ = seen["traceparent"].split("-")
    assert trace_id == TRACE_ID
    assert span_id != PARENT_SPAN
    assert seen["request_id"] == "req-1"
    [orders_span] = orders.recorder.spans(TRACE_ID)
    [inventory_span] = inventory.recorder.spans(TRACE_ID)
    assert orders_span.parent_id == PARENT_SPAN
    assert inventory_span.parent_id == span_id  # the client's span, a child of orders'


async def test_chaos_close_drops_the_connection_until_switched_off() -> None:
    port = free_port()
    service = Service("inventory", inventory_app(), chaos_token=TOKEN, request_log=False)
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with serving(service, port), aiohttp.ClientSession() as http:
        close_all = json.dumps({"faults": [{"refuse": "close"}]})
        async with http.put(f"{base}/admin/chaos", data=close_all, headers=auth) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{base}/stock") as response:
                await response.read()
        async with http.delete(f"{base}/admin/chaos", headers=auth) as response:
            assert response.status == 200
        async with http.get(f"{base}/stock") as response:
            assert response.status == 200


async def test_a_stop_signal_fails_readiness_at_once_and_stops_the_server() -> None:
    from shipyard.service import ServiceServer, uvicorn_config

    service = Service("inventory", inventory_app(), request_log=False)
    server = ServiceServer(service, uvicorn_config(service, "127.0.0.1", free_port()))
    server.handle_exit(15, None)
    assert service.draining
    assert (await service.probes.readiness()).http_status == 503
    assert server.should_exit


async def test_with_a_drain_delay_the_server_keeps_accepting_after_the_signal() -> None:
    import asyncio

    from shipyard.service import ServiceServer, uvicorn_config

    service = Service("inventory", inventory_app(), request_log=False)
    server = ServiceServer(
        service, uvicorn_config(service, "127.0.0.1", free_port()), drain_delay=60
    )
    server._loop = asyncio.get_running_loop()  # what serve() records
    server.handle_exit(15, None)
    assert service.draining
    assert not server.should_exit
