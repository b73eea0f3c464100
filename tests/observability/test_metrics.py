"""Prometheus metrics: HTTP server metrics and the resilience exporters."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from shipyard.core import ConfigError, ManualClock
from shipyard.observability import ObservabilityMiddleware, ServiceMetrics
from shipyard.resilience import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Pipeline,
    Retry,
    TokenBucketLimiter,
)
from tests.observability.asgi import call


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def test_requests_are_counted_by_method_route_template_and_status() -> None:
    metrics = ServiceMetrics()
    app = ObservabilityMiddleware(
        Starlette(routes=[Route("/users/{id}", hello)]), metrics=metrics, clock=ManualClock()
    )
    await call(app, path="/users/1")
    await call(app, path="/users/2")
    await call(app, path="/missing/3")
    await call(app, "BREW", "/users/1")

    total = "http_server_requests_total"
    assert value(metrics, total, method="GET", route="/users/{id}", status="200") == 2
    assert value(metrics, total, method="GET", route="<unmatched>", status="404") == 1
    assert value(metrics, total, method="OTHER", route="/users/{id}", status="405") == 1
    count = "http_server_request_duration_seconds_count"
    assert value(metrics, count, method="GET", route="/users/{id}") == 2
    assert value(metrics, "http_server_requests_in_flight") == 0


def test_two_services_in_one_process_keep_separate_registries() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_request("GET", "/a", 200, 0.01)
    assert value(first, "http_server_requests_total", method="GET", route="/a", status="200")
    assert (
        value(second, "http_server_requests_total", method="GET", route="/a", status="200") is None
    )


async def test_breaker_state_follows_the_breaker_through_open_and_half_open() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("payments", minimum_calls=2, reset_timeout=30, clock=clock)
    metrics = ServiceMetrics()
    metrics.watch(breaker)
    assert value(metrics, "shipyard_breaker_state", breaker="payments", state="closed") == 1

    async def failing() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(failing)
    with pytest.raises(CircuitOpenError):
        await breaker.call(failing)

    assert value(metrics, "shipyard_breaker_state", breaker="payments", state="open") == 1
    assert value(metrics, "shipyard_breaker_state", breaker="payments", state="closed") == 0
    calls = "shipyard_breaker_calls_total"
    assert value(metrics, calls, breaker="payments", outcome="failure") == 2
    assert value(metrics, "shipyard_breaker_rejected_total", breaker="payments") == 1

    clock.advance(30)
    # Nobody called the breaker since: the scrape itself finds it half-open.
    assert value(metrics, "shipyard_breaker_state", breaker="payments", state="half_open") == 1


async def test_bulkhead_retry_and_limiter_metrics_come_from_their_events() -> None:
    clock = ManualClock()
    bulkhead = Bulkhead("db", 1, clock=clock)
    retry = Retry(max_attempts=2, base_delay=0.1, name="orders", clock=clock, random=lambda: 0.5)
    metrics = ServiceMetrics()
    metrics.watch(Pipeline(retry, bulkhead))
    limiter = metrics.resilience.limiter(TokenBucketLimiter("api", rate=1, burst=1, clock=clock))

    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("once")
        return "ok"

    assert await retry.call(flaky) == "ok"

    async def hold_and_try_again() -> None:
        with pytest.raises(BulkheadFullError):
            await bulkhead.call(clock.sleep, 0)

    await bulkhead.call(hold_and_try_again)
    assert (await limiter.acquire()).allowed
    assert not (await limiter.acquire()).allowed

    events = "shipyard_retry_events_total"
    assert value(metrics, events, retry="orders", kind="retry") == 1
    assert value(metrics, events, retry="orders", kind="success_after_retry") == 1
    assert value(metrics, "shipyard_bulkhead_rejected_total", bulkhead="db") == 1
    assert value(metrics, "shipyard_bulkhead_active", bulkhead="db") == 0
    decisions = "shipyard_rate_limiter_decisions_total"
    assert value(metrics, decisions, limiter="api", decision="allowed") == 1
    assert value(metrics, decisions, limiter="api", decision="rejected") == 1


def test_unwatching_stops_the_export() -> None:
    breaker = CircuitBreaker("search")
    metrics = ServiceMetrics()
    stop = metrics.watch(breaker)
    stop()
    assert not breaker.events.has_listeners


def test_watching_something_without_metrics_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sources"):
        ServiceMetrics().watch(object())


async def test_the_metrics_endpoint_serves_the_text_format_and_refuses_writes() -> None:
    metrics = ServiceMetrics()
    metrics.observe_request("GET", "/a", 200, 0.01)
    reply = await call(metrics.asgi_app(), path="/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert b'http_server_requests_total{method="GET",route="/a",status="200"} 1.0' in reply.body
    assert (await call(metrics.asgi_app(), "POST", "/metrics")).status == 405
