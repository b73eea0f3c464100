"""How a ``ServiceClient`` turns its ``policy`` argument into call chains, once, at build.

Three pieces come out: the service chain (total timeout → service breaker → retry → rate
limiter / bulkhead), the same chain without its retry (for requests that are not safe to
repeat), and the recipe of the per-instance guard (instance breaker → per-attempt timeout),
which the client instantiates for each instance it meets. The per-attempt ``timeout`` sits
inside the instance breaker, not in the service chain, so that a hung instance counts
against its own breaker.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shipyard.client.errors import HTTPStatusError, UpstreamConnectionError
from shipyard.core.clock import Clock
from shipyard.core.errors import ConfigError
from shipyard.resilience import (
    CallTimeoutError,
    CircuitBreaker,
    CircuitOpenError,
    Pipeline,
    Retry,
    Timeout,
)

POLICY_KEYS = (
    "total_timeout",
    "retry",
    "circuit_breaker",
    "instance_circuit_breaker",
    "rate_limiter",
    "bulkhead",
    "timeout",
)
"""The keys of a policy mapping: ``Pipeline.from_dict``'s plus ``instance_circuit_breaker``
(the settings of each instance's own breaker; defaults to ``circuit_breaker``'s)."""

DEFAULT_POLICY: Mapping[str, Any] = {
    "retry": {"max_attempts": 3, "base_delay": 0.05, "max_delay": 2.0},
    "circuit_breaker": {"failure_rate_threshold": 0.5, "minimum_calls": 20},
    "instance_circuit_breaker": {"failure_rate_threshold": 0.5, "minimum_calls": 5},
}
"""What ``policy=None`` means: 3 attempts, a breaker for the service and one per instance."""

# 408/429 are the 4xx a later attempt can fix; 502/503/504 are a sick instance or proxy.
# A plain 500 is not retried: it is usually the request's own fault, repeated identically.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    """The default ``retry_on`` of a client: 408/429/502/503/504, no answer at all, an
    attempt timeout, or an open breaker (whose ``retry_after`` says how long to wait)."""
    if isinstance(exc, HTTPStatusError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, UpstreamConnectionError | CallTimeoutError | CircuitOpenError)


def is_upstream_fault(exc: BaseException) -> bool:
    """What a client's breakers count as failures: a 5xx, no answer, a timeout, or every
    instance's breaker open. A 4xx or a discovery error says nothing about the upstream's
    health, so breakers ignore it."""
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500
    return isinstance(exc, UpstreamConnectionError | CallTimeoutError | CircuitOpenError)


def _is_not_upstream_fault(exc: BaseException) -> bool:
    return not is_upstream_fault(exc)


@dataclass(frozen=True, slots=True)
class Plan:
    """The built chains of one client."""

    chain: Pipeline
    chain_without_retry: Pipeline
    retries: bool
    service_breaker: CircuitBreaker | None
    instance_breaker: Mapping[str, Any] | None
    attempt_timeout: float | None


def build_plan(
    policy: Pipeline | Mapping[str, Any] | None,
    *,
    service: str,
    timeout: float,
    clock: Clock,
) -> Plan:
    """Validate ``policy`` and build the chains (``ConfigError`` names the bad key)."""
    if policy is None:
        policy = DEFAULT_POLICY
    if isinstance(policy, Pipeline):
        chain = Pipeline(Timeout(timeout, clock=clock), policy)
        breakers = [p for p in chain.policies if isinstance(p, CircuitBreaker)]
        instance_config: Mapping[str, Any] | None = {"ignore": _is_not_upstream_fault}
        service_breaker = breakers[0] if breakers else None
        return _plan(chain, service_breaker, instance_config, None, clock, service)
    if not isinstance(policy, Mapping):
        raise ConfigError("policy", policy, "must be None, a Pipeline or a mapping of stages")
    for key in policy:
        if key not in POLICY_KEYS:
            raise ConfigError(str(key), policy[key], f"unknown stage; use one of {POLICY_KEYS}")
    config = {key: value for key, value in policy.items() if value is not None}
    instance_config = _instance_breaker_config(policy, config)
    attempt_timeout = _attempt_timeout(config.pop("timeout", None))
    total = config.setdefault("total_timeout", timeout)
    retry = config.get("retry")
    if isinstance(retry, Mapping):
        defaults: dict[str, Any] = {"retry_on": is_retryable}
        if isinstance(total, int | float) and not isinstance(total, bool):
            # No retry may start whose wait would outlive the whole call (a breaker's
            # 30 s Retry-After hint would otherwise end in a timeout, not a fast failure).
            defaults["deadline"] = total
        config["retry"] = {**defaults, **retry}
    breaker_config = config.get("circuit_breaker")
    if isinstance(breaker_config, Mapping) and not {"record", "ignore"} & set(breaker_config):
        config["circuit_breaker"] = {**breaker_config, "ignore": _is_not_upstream_fault}
    chain = _breaker_outside_retry(Pipeline.from_dict(config, name=service, clock=clock))
    breakers = [p for p in chain.policies if isinstance(p, CircuitBreaker)]
    return _plan(
        chain,
        breakers[0] if breakers else None,
        instance_config,
        attempt_timeout,
        clock,
        service,
    )


def _breaker_outside_retry(chain: Pipeline) -> Pipeline:
    """Move the service breaker just outside the retry.

    Attempts are already judged per instance by the instance breakers; the service breaker
    judges whole calls, retries included. Inside the retry it would count the one failed
    attempt that a retry on a healthy instance then repaired, and open the whole service
    because one instance in three is bad.
    """
    policies = list(chain.policies)
    retry = next((i for i, p in enumerate(policies) if isinstance(p, Retry)), None)
    breaker = next((i for i, p in enumerate(policies) if isinstance(p, CircuitBreaker)), None)
    if retry is None or breaker is None or breaker < retry:
        return chain
    policies.insert(retry, policies.pop(breaker))
    return Pipeline(*policies)


def _plan(
    chain: Pipeline,
    service_breaker: CircuitBreaker | None,
    instance_config: Mapping[str, Any] | None,
    attempt_timeout: float | None,
    clock: Clock,
    service: str,
) -> Plan:
    without_retry = Pipeline(*(p for p in chain.policies if not isinstance(p, Retry)))
    retries = len(without_retry.policies) != len(chain.policies)
    if instance_config is not None:
        # Build one now so that a bad setting fails at construction, not on first use.
        instance_breaker(instance_config, f"{service}/probe", clock)
    return Plan(chain, without_retry, retries, service_breaker, instance_config, attempt_timeout)


def _instance_breaker_config(
    policy: Mapping[str, Any], config: dict[str, Any]
) -> Mapping[str, Any] | None:
    key = "instance_circuit_breaker"
    value: Any
    if key in policy:
        value = config.pop(key, None)
        if value is None or value is False:
            return None  # explicitly turned off
    else:
        value = config.get("circuit_breaker", {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "must be a mapping of CircuitBreaker parameters or None")
    settings: Mapping[str, Any] = value
    if not {"record", "ignore"} & set(settings):
        settings = {**settings, "ignore": _is_not_upstream_fault}
    return settings


def _attempt_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = [k for k in value if k != "seconds"]
        if unknown:
            raise ConfigError(f"timeout.{unknown[0]}", value[unknown[0]], "unknown; use seconds")
        value = value.get("seconds")
    try:
        return Timeout(value).seconds
    except ConfigError as error:
        raise ConfigError("timeout", value, error.allowed) from None


def instance_breaker(config: Mapping[str, Any], name: str, clock: Clock) -> CircuitBreaker:
    """A breaker for one instance from the validated ``instance_circuit_breaker`` settings."""
    key = "instance_circuit_breaker"
    accepted = inspect.signature(CircuitBreaker).parameters
    for param in config:
        if param not in accepted or param in ("name", "clock"):
            allowed = sorted(p for p in accepted if p not in ("name", "clock"))
            raise ConfigError(f"{key}.{param}", config[param], f"unknown; allowed: {allowed}")
    try:
        return CircuitBreaker(name, clock=clock, **config)
    except ConfigError as error:
        raise ConfigError(f"{key}.{error.field}", error.value, error.allowed) from None
