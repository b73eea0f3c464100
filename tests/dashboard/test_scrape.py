"""Reading /metrics text and turning counters into rates (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.core import ConfigError, ManualClock
from shipyard.dashboard import RateWindow, parse_metrics
from shipyard.observability import ServiceMetrics
from shipyard.resilience import CircuitBreaker, TokenBucketLimiter
from shipyard.storage import open_database


async def test_breaker_state_calls_and_limiter_decisions_are_read_from_service_metrics() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("provider", minimum_calls=3, clock=clock)
    metrics = ServiceMetrics()
    metrics.watch(breaker)
    limiter = metrics.resilience.limiter(TokenBucketLimiter("charges", 1, 1, clock=clock))

    async def fail() -> None:
        raise ConnectionError("down")

    async def ok() -> None:
        return None

    await breaker.call(ok)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(fail)
    await limiter.acquire()
    await limiter.acquire()
    metrics.observe_request("POST", "/charge/{id}", 200, 0.01)
    metrics.observe_request("POST", "/charge/{id}", 503, 0.01)

    sample = parse_metrics(metrics.render().decode())

    provider = sample.breakers["provider"]
    assert (provider.state, provider.successes, provider.failures) == ("open", 1, 2)
    assert provider.source == "service"
    charges = sample.limiters["charges"]
    assert (charges.allowed, charges.rejected) == (1, 1)
    assert (sample.requests, sample.request_errors) == (2, 1)


def test_gateway_breakers_rate_limits_and_upstream_traffic_are_read() -> None:
    text = "\n".join(
        [
            "# TYPE shipyard_gateway_breaker_state gauge",
            'shipyard_gateway_breaker_state{service="payments",state="closed"} 0.0',
            'shipyard_gateway_breaker_state{service="payments",state="open"} 1.0',
            "# TYPE shipyard_gateway_rate_limited counter",
            'shipyard_gateway_rate_limited_total{frontend="web",route="/orders"} 7.0',
            "# TYPE shipyard_gateway_upstream_requests counter",
            'shipyard_gateway_upstream_requests_total{service="payments",status="5xx"} 3.0',
            'shipyard_gateway_upstream_requests_total{service="payments",status="2xx"} 9.0',
            "",
        ]
    )
    sample = parse_metrics(text)
    assert sample.breakers["upstream:payments"].state == "open"
    assert sample.breakers["upstream:payments"].source == "gateway"
    assert sample.limiters["web /orders"].rejected == 7
    assert sample.limiters["web /orders"].allowed is None
    assert sample.upstream == {("payments", "5xx"): 3, ("payments", "2xx"): 9}


async def test_database_pools_are_read_with_their_use_and_rejections(tmp_path: Path) -> None:
    db = await open_database(
        f"sqlite:///{tmp_path}/orders.db",
        pools={"api": {"size": 3}, "background": {"size": 2}},
    )
    metrics = ServiceMetrics()
    metrics.watch_database("orders", db)
    try:
        async with db.transaction(pool="background", readonly=True):
            sample = parse_metrics(metrics.render().decode())
    finally:
        await db.close()
    api, background = sample.pools[("orders", "api")], sample.pools[("orders", "background")]
    assert (api.size, api.in_use, api.waiting, api.rejected) == (3, 0, 0, 0)
    assert (background.size, background.in_use) == (2, 1)


def test_text_that_is_not_prometheus_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="metric"):
        parse_metrics("<html>not metrics</html>\n")


def test_rates_span_the_window_and_forget_older_samples() -> None:
    rates = RateWindow(10)
    assert rates.delta("k", 0, 0) is None
    assert rates.delta("k", 5, 50) == (5, (50,))
    assert rates.delta("k", 10, 60) == (10, (60,))
    # At t=20 the samples at 0 and 5 are older than the window; the one at 10 starts it.
    assert rates.delta("k", 20, 160) == (10, (100,))


def test_a_counter_that_goes_down_means_a_restart_and_starts_over() -> None:
    rates = RateWindow(10)
    rates.delta("k", 0, 100)
    assert rates.delta("k", 1, 3) is None
    assert rates.delta("k", 2, 5) == (1, (2,))


def test_forgotten_keys_start_over() -> None:
    rates = RateWindow(10)
    rates.delta("gone", 0, 1)
    rates.delta("kept", 0, 1)
    rates.keep_only(["kept"])
    assert rates.delta("gone", 1, 2) is None
    assert rates.delta("kept", 1, 2) == (1, (1,))


def test_the_rate_window_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="rate_window"):
        RateWindow(0)
