"""The dashboard in headless Chromium (the issue's Playwright test): a small real system —
registry, "payments" (its provider behind a breaker), "orders" (a saga orchestrator that
charges payments through a breaker, with the saga query API) and the dashboard — then
browser/dashboard.mjs clicks a 100% error rate into payments, places orders, and waits
until the page shows the payments breaker OPEN and the sagas COMPENSATED."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from shipyard.dashboard import Dashboard
from shipyard.discovery.registry import RegistryServer
from shipyard.observability import ServiceMetrics
from shipyard.resilience import CircuitBreaker
from shipyard.saga import Orchestrator, SagaDefinition, Step, StepContext, saga_api
from shipyard.service import Service
from shipyard.storage import open_database
from tests.conftest import IN_CI, require_binary
from tests.dashboard.conftest import TOKEN, RunPayments
from tests.service.serving import free_port, running, serving

BROWSER_DIR = Path(__file__).parent / "browser"
ORDERS = 6


def require_playwright() -> tuple[str, str]:
    """node and chromium paths; fail (CI) or skip (locally) when anything is missing."""
    node = require_binary("node", "nodejs")
    chromium = require_binary("chromium", "chromium")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        reason = f"playwright-core is not installed (npm ci --prefix {BROWSER_DIR})"
        if IN_CI:
            pytest.fail(f"{reason} (CI must have it: make bootstrap runs npm ci)", pytrace=False)
        pytest.skip(reason)
    return node, chromium


class Order(msgspec.Struct):
    order_id: str
    status: str = "NEW"
    charge_id: str | None = None


class PaymentFailed(ConnectionError):
    """Payments answered with an error."""


def order_saga(payments_url: str, breaker: CircuitBreaker, http: aiohttp.ClientSession) -> Any:
    async def create(ctx: StepContext[Order]) -> Order:
        return msgspec.structs.replace(ctx.data, status="PENDING")

    async def cancel(ctx: StepContext[Order]) -> Order:
        return msgspec.structs.replace(ctx.data, status="CANCELLED")

    async def post_charge(order_id: str) -> str:
        async with http.post(f"{payments_url}/charge/{order_id}") as response:
            if response.status != 200:
                raise PaymentFailed(f"payments answered {response.status}")
            charge_id: str = (await response.json())["charge_id"]
            return charge_id

    async def charge(ctx: StepContext[Order]) -> Order:
        charge_id = await breaker.call(post_charge, ctx.data.order_id)
        return msgspec.structs.replace(ctx.data, charge_id=charge_id)

    async def refund(ctx: StepContext[Order]) -> None:
        return None  # nothing was charged when the charge step failed

    async def confirm(ctx: StepContext[Order]) -> Order:
        return msgspec.structs.replace(ctx.data, status="CONFIRMED")

    return SagaDefinition(
        "order",
        [
            Step("create_order", create, compensation=cancel),
            Step("charge_payment", charge, compensation=refund),
            Step("confirm_order", confirm, pivot=True),
        ],
        data_type=Order,
    )


@asynccontextmanager
async def orders_service(
    tmp_path: Path, registry: RegistryServer, payments_url: str
) -> AsyncIterator[str]:
    """The orders service: ``POST /orders`` runs the saga; ``/saga-api`` serves the saga
    query API. Yields its base URL."""
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    breaker = CircuitBreaker("payments", minimum_calls=3, window=60, reset_timeout=600)
    metrics = ServiceMetrics()
    metrics.watch(breaker)
    async with aiohttp.ClientSession() as http:
        orchestrator = Orchestrator(db)
        orchestrator.register(order_saga(payments_url, breaker, http))
        await orchestrator.install()

        async def place(request: Request) -> JSONResponse:
            body = await request.json()
            record = await orchestrator.execute("order", Order(body["order_id"]))
            return JSONResponse({"saga_id": record.saga_id, "state": record.state.value})

        app = Starlette(
            routes=[
                Route("/orders", place, methods=["POST"]),
                Mount("/saga-api", saga_api(orchestrator.log)),
            ]
        )
        port = free_port()
        service = Service(
            "orders",
            app,
            discovery=f"consul://127.0.0.1:{registry.port}",
            port=port,
            metrics=metrics,
            request_log=False,
        )
        try:
            async with serving(service, port):
                yield f"http://127.0.0.1:{port}"
        finally:
            await db.close()


@asynccontextmanager
async def dashboard_server(dashboard: Dashboard) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        dashboard.app, host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    async with running(uvicorn.Server(config), "the dashboard"):
        yield f"http://127.0.0.1:{port}/"


async def test_the_page_shows_the_breaker_open_and_sagas_compensated_after_a_clicked_fault(
    tmp_path: Path, registry: RegistryServer, run_payments: RunPayments
) -> None:
    node, chromium = require_playwright()
    screenshot = tmp_path / "dashboard.png"
    async with (
        run_payments() as payments,
        orders_service(tmp_path, registry, payments.url) as orders_url,
    ):
        dashboard = Dashboard(
            registry_url=registry.url,
            saga_api_url=f"{orders_url}/saga-api",
            chaos_token=TOKEN,
            interval=0.2,
        )
        async with dashboard_server(dashboard) as dashboard_url:
            process = await asyncio.create_subprocess_exec(
                node,
                str(BROWSER_DIR / "dashboard.mjs"),
                cwd=BROWSER_DIR,
                env={
                    **os.environ,
                    "DASHBOARD_URL": dashboard_url,
                    "ORDERS_URL": orders_url,
                    "CHAOS_TOKEN": TOKEN,
                    "SCREENSHOT": str(screenshot),
                    "USER_DATA_DIR": str(tmp_path / "chromium-profile"),
                    "CHROMIUM": chromium,
                    "ORDERS": str(ORDERS),
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            # A bound on a hung browser, not a speed assertion.
            stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
        assert payments.service.chaos is not None
        faults = payments.service.chaos.faults

    assert process.returncode == 0, stderr.decode()[-4000:]
    shown = json.loads(stdout.decode().strip().splitlines()[-1])
    assert shown["breaker"] == "open"
    assert shown["compensated"] == ORDERS
    assert shown["compensatedRows"] == ORDERS
    assert shown["placed"] == ["COMPENSATED"] * ORDERS
    assert shown["problems"] == []
    assert [f.error_rate for f in faults] == [1.0]  # the click reached payments' admin API
    assert screenshot.stat().st_size > 0
