"""ServiceClient configuration is checked at construction; errors name the key."""

from __future__ import annotations

from typing import Any

import pytest

from shipyard.client import ServiceClient, is_retryable
from shipyard.core import ConfigError
from shipyard.discovery import Discovery, StaticBackend
from shipyard.resilience import Bulkhead, CircuitBreaker, Pipeline, Retry, Timeout


def build(**options: Any) -> ServiceClient:
    discovery = Discovery(StaticBackend({"svc": ["127.0.0.1:1"]}))
    return ServiceClient("svc", discovery=discovery, **options)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"retries": {}}, "retries"),
        ({"retry": {"max_attemps": 3}}, "retry.max_attemps"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        (
            {"circuit_breaker": {"failure_rate_threshold": 2}},
            "circuit_breaker.failure_rate_threshold",
        ),
        (
            {"instance_circuit_breaker": {"minimum_calls": 0}},
            "instance_circuit_breaker.minimum_calls",
        ),
        ({"instance_circuit_breaker": {"windw": 5}}, "instance_circuit_breaker.windw"),
        ({"instance_circuit_breaker": 3}, "instance_circuit_breaker"),
        ({"bulkhead": {"max_concurrent": 0}}, "bulkhead.max_concurrent"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": {"secs": 1}}, "timeout.secs"),
        ({"total_timeout": 0}, "total_timeout.seconds"),
    ],
)
def test_a_bad_policy_entry_is_named(policy: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(policy=policy)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout", 0), ("connect_timeout", -1), ("pool_size", 0), ("outlier", "yes")],
)
def test_a_bad_option_is_named(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        build(**{option: value})
    assert caught.value.field == option


def test_a_service_name_is_required() -> None:
    with pytest.raises(ConfigError, match="service"):
        ServiceClient("", discovery="memory://")


def test_the_service_breaker_judges_whole_calls_outside_the_retry() -> None:
    client = build(policy={"retry": {}, "circuit_breaker": {}, "bulkhead": 10})
    kinds = [type(p) for p in client._plan.chain.policies]
    assert kinds == [Timeout, CircuitBreaker, Retry, Bulkhead]


def test_requests_unsafe_to_repeat_run_without_the_retry() -> None:
    client = build(policy={"retry": {}})
    assert not any(isinstance(p, Retry) for p in client._plan.chain_without_retry.policies)


def test_a_given_pipeline_is_used_under_the_call_timeout() -> None:
    breaker = CircuitBreaker("svc")
    client = build(policy=Pipeline(Retry(), breaker), timeout=3)
    assert client.service_breaker is breaker
    first = client._plan.chain.policies[0]
    assert isinstance(first, Timeout)
    assert first.seconds == 3


def test_only_transient_failures_are_retried() -> None:
    from shipyard.client import Response

    def status(code: int) -> Exception:
        return Response(code, {}, b"").error(0.0)

    assert [is_retryable(status(c)) for c in (500, 502, 503, 504, 429, 404)] == [
        False,
        True,
        True,
        True,
        True,
        False,
    ]
