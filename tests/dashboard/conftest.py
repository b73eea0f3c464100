"""A small real system for the dashboard tests: the embedded registry and "payments"
services (uvicorn on free ports) whose handler calls a provider through a breaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from shipyard.discovery.registry import RegistryServer
from shipyard.observability import ServiceMetrics
from shipyard.resilience import CircuitBreaker, CircuitOpenError, TokenBucketLimiter
from shipyard.service import Service
from tests.service.serving import free_port, running, serving

TOKEN = "dashboard-chaos-token"


class ProviderDown(ConnectionError):
    """The fake payment provider refused a charge."""


@dataclass
class Provider:
    """A fake external payment provider: charges succeed until ``failing`` is set."""

    failing: bool = False
    charges: list[str] = field(default_factory=list)

    async def charge(self, order_id: str) -> str:
        if self.failing:
            raise ProviderDown("provider unavailable")
        self.charges.append(order_id)
        return f"ch-{order_id}"


@dataclass
class Payments:
    """One running payments instance and what it is made of."""

    service: Service
    breaker: CircuitBreaker
    provider: Provider
    port: int

    @property
    def id(self) -> str:
        return f"payments-127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def payments_app(breaker: CircuitBreaker, provider: Provider, limiter: object) -> Starlette:
    async def charge(request: Request) -> JSONResponse:
        order_id = request.path_params["order_id"]
        decision = await limiter.acquire()  # type: ignore[attr-defined]
        if not decision.allowed:
            return JSONResponse({"error": "rate limited"}, 429)
        try:
            charge_id = await breaker.call(provider.charge, order_id)
        except CircuitOpenError:
            return JSONResponse({"error": "provider breaker open"}, 503)
        except ProviderDown as exc:
            return JSONResponse({"error": str(exc)}, 502)
        return JSONResponse({"charge_id": charge_id})

    return Starlette(routes=[Route("/charge/{order_id}", charge, methods=["POST"])])


def make_payments(registry_url: str, port: int, *, chaos_token: str | None = TOKEN) -> Payments:
    """A payments Service registered in the registry, its provider behind a breaker
    (opens after 4 calls at 50% failures) and its calls counted by a rate limiter."""
    breaker = CircuitBreaker("provider", minimum_calls=4, window=60, reset_timeout=600)
    provider = Provider()
    metrics = ServiceMetrics()
    metrics.watch(breaker)
    limiter = metrics.resilience.limiter(TokenBucketLimiter("charges", rate=1000, burst=1000))
    service = Service(
        "payments",
        payments_app(breaker, provider, limiter),
        discovery=f"consul://{registry_url.removeprefix('http://')}",
        port=port,
        metrics=metrics,
        request_log=False,
        chaos_token=chaos_token,
    )
    return Payments(service, breaker, provider, port)


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    async with RegistryServer() as server:
        yield server


RunPayments = Callable[..., AbstractAsyncContextManager[Payments]]


@pytest.fixture
def run_payments(registry: RegistryServer) -> RunPayments:
    """``async with run_payments() as payments``: one instance served and registered."""

    @asynccontextmanager
    async def run(**options: object) -> AsyncIterator[Payments]:
        port = free_port()
        payments = make_payments(registry.url, port, **options)  # type: ignore[arg-type]
        async with serving(payments.service, port):
            yield payments

    return run


@asynccontextmanager
async def serving_app(app: ASGIApp, port: int) -> AsyncIterator[None]:
    """Serve a plain ASGI app (no lifespan) on 127.0.0.1:port for the block."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False
    )
    async with running(uvicorn.Server(config), "an app"):
        yield


async def eventually(check: Callable[[], Awaitable[bool]], attempts: int = 500) -> None:
    """Poll ``check`` until it is true; a safety net for real servers, not a timing test."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")
