"""Reading one instance's ``/metrics`` (Prometheus text) into what the dashboard shows,
and turning counters into rates over a sliding window.

The metric names are those of :mod:`shipyard.observability` (service breakers, rate
limiters, database pools, HTTP server requests) and :mod:`shipyard.gateway.metrics` (the gateway's
breakers towards upstreams, its 429s and its upstream traffic). Unknown metrics are
ignored, so the dashboard reads any service, with or without those policies.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from shipyard.core import validation


@dataclass(slots=True)
class BreakerSample:
    """A breaker's state and call counters at one scrape."""

    name: str
    state: str = "unknown"
    successes: int = 0
    failures: int = 0
    rejected: int = 0
    source: str = "service"


@dataclass(slots=True)
class LimiterSample:
    """A rate limiter's decisions at one scrape (``allowed`` is ``None`` where only
    refusals are counted, as the gateway does)."""

    name: str
    allowed: int | None = None
    rejected: int = 0


@dataclass(slots=True)
class PoolSample:
    """A database pool (a storage bulkhead) at one scrape."""

    database: str
    pool: str
    size: int = 0
    in_use: int = 0
    waiting: int = 0
    rejected: int = 0


_POOL_FIELDS = {
    "shipyard_db_pool_size": "size",
    "shipyard_db_pool_in_use": "in_use",
    "shipyard_db_pool_waiting": "waiting",
    "shipyard_db_pool_rejected_total": "rejected",
}


@dataclass(slots=True)
class InstanceSample:
    """Everything one scrape said."""

    breakers: dict[str, BreakerSample] = field(default_factory=dict)
    limiters: dict[str, LimiterSample] = field(default_factory=dict)
    pools: dict[tuple[str, str], PoolSample] = field(default_factory=dict)
    """Database pools by (database, pool)."""
    requests: int = 0
    request_errors: int = 0
    upstream: dict[tuple[str, str], int] = field(default_factory=dict)
    """Gateway traffic: (upstream service, status class) -> responses relayed."""


def parse_metrics(text: str) -> InstanceSample:
    """Parse Prometheus text exposition into an :class:`InstanceSample`.

    Raises ``ValueError`` when the text is not the exposition format.
    """
    sample = InstanceSample()
    for family in text_string_to_metric_families(text):
        for metric in family.samples:
            _take(sample, metric.name, metric.labels, metric.value)
    return sample


def _take(sample: InstanceSample, name: str, labels: dict[str, str], value: float) -> None:
    # Matched on sample names, not family names: a counter's family is "x" but its sample
    # is "x_total", and text without TYPE lines yields one family per sample name.
    if name == "shipyard_breaker_state":
        if value == 1:
            _breaker(sample, labels.get("breaker", ""), "service").state = labels.get("state", "")
    elif name == "shipyard_breaker_calls_total":
        breaker = _breaker(sample, labels.get("breaker", ""), "service")
        if labels.get("outcome") == "failure":
            breaker.failures = int(value)
        elif labels.get("outcome") == "success":
            breaker.successes = int(value)
    elif name == "shipyard_breaker_rejected_total":
        _breaker(sample, labels.get("breaker", ""), "service").rejected = int(value)
    elif name == "shipyard_gateway_breaker_state":
        if value == 1:
            service = labels.get("service", "")
            _breaker(sample, f"upstream:{service}", "gateway").state = labels.get("state", "")
    elif name == "shipyard_rate_limiter_decisions_total":
        limiter = _limiter(sample, labels.get("limiter", ""))
        if labels.get("decision") == "rejected":
            limiter.rejected = int(value)
        elif labels.get("decision") == "allowed":
            limiter.allowed = int(value)
    elif name == "shipyard_gateway_rate_limited_total":
        key = f"{labels.get('frontend', '')} {labels.get('route', '')}".strip()
        _limiter(sample, key).rejected = int(value)
    elif name in _POOL_FIELDS:
        where = (labels.get("database", ""), labels.get("pool", ""))
        pool = sample.pools.get(where)
        if pool is None:
            pool = sample.pools[where] = PoolSample(*where)
        setattr(pool, _POOL_FIELDS[name], int(value))
    elif name in ("http_server_requests_total", "shipyard_gateway_requests_total"):
        sample.requests += int(value)
        status = labels.get("status", "")
        if status.startswith("5"):
            sample.request_errors += int(value)
    elif name == "shipyard_gateway_upstream_requests_total":
        edge = (labels.get("service", ""), labels.get("status", ""))
        sample.upstream[edge] = sample.upstream.get(edge, 0) + int(value)


def _breaker(sample: InstanceSample, name: str, source: str) -> BreakerSample:
    found = sample.breakers.get(name)
    if found is None:
        found = sample.breakers[name] = BreakerSample(name, source=source)
    return found


def _limiter(sample: InstanceSample, name: str) -> LimiterSample:
    found = sample.limiters.get(name)
    if found is None:
        found = sample.limiters[name] = LimiterSample(name)
    return found


class RateWindow:
    """Rates of counters over the last ``window`` seconds, fed one sample per poll.

    ``delta(key, now, a, b, ...)`` returns ``(seconds, (Δa, Δb, ...))`` between the
    oldest kept sample and this one, or ``None`` on a key's first sample. A counter that
    went down means the instance restarted: its history starts over.
    """

    __slots__ = ("_history", "window")

    def __init__(self, window: float) -> None:
        self.window = validation.positive("rate_window", window)
        self._history: dict[Hashable, collections.deque[tuple[float, tuple[float, ...]]]] = {}

    def delta(
        self, key: Hashable, now: float, *values: float
    ) -> tuple[float, tuple[float, ...]] | None:
        """Record ``values`` at ``now``; the change over the window, if known."""
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = collections.deque()
        if history and any(new < old for new, old in zip(values, history[-1][1], strict=True)):
            history.clear()
        history.append((now, values))
        # Keep one sample at or before the window's start, so the delta spans the window.
        while len(history) > 2 and history[1][0] <= now - self.window:
            history.popleft()
        if len(history) < 2:
            return None
        start, old = history[0]
        return now - start, tuple(new - was for new, was in zip(values, old, strict=True))

    def keep_only(self, keys: Iterable[Hashable]) -> None:
        """Forget every key not in ``keys`` (instances and breakers that went away)."""
        alive = set(keys)
        for key in [k for k in self._history if k not in alive]:
            del self._history[key]
