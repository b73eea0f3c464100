"""Prometheus metrics for the gateway, cheap on the hot path.

Requests only bump plain integers (a list per route, indexed by status class and latency
bucket); the ``prometheus_client`` collector turns them into metric families when
``/metrics`` is scraped, in the gateway's own ``CollectorRegistry``. Counters of filters
(rate-limit rejections, cache hits, shadow differences) and breaker states are read from
the current ``Runtime`` at scrape time too. Enabled only with the admin API.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from shipyard.gateway.filters import Exchange
from shipyard.gateway.runtime import Runtime

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class _RouteStats:
    __slots__ = ("buckets", "classes", "total_seconds")

    def __init__(self) -> None:
        self.classes = [0] * 6
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total_seconds = 0.0


def _status_class(status: int) -> int:
    return min(max(status // 100, 1), 5)


class GatewayMetrics:
    """Request counters per route and per upstream service, fed by ``on_complete``."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.routes: dict[tuple[str, str], _RouteStats] = {}
        self.services: dict[str, list[int]] = {}

    def on_complete(self, ex: Exchange) -> None:
        """Count one finished request (a frontend completion hook)."""
        key = (ex.frontend, ex.route)
        stats = self.routes.get(key)
        if stats is None:
            stats = self.routes[key] = _RouteStats()
        latency = self._monotonic() - ex.start
        status_class = _status_class(ex.status)
        stats.classes[status_class] += 1
        stats.buckets[bisect_left(LATENCY_BUCKETS, latency)] += 1
        stats.total_seconds += latency
        if ex.service:
            counts = self.services.get(ex.service)
            if counts is None:
                counts = self.services[ex.service] = [0] * 6
            counts[status_class] += 1


class GatewayCollector(Collector):
    """Builds the metric families from the counters and the current runtime at scrape."""

    def __init__(self, metrics: GatewayMetrics, runtime: Callable[[], Runtime]) -> None:
        self._metrics = metrics
        self._runtime = runtime

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        """One pass over the counters (called by ``prometheus_client`` per scrape)."""
        metrics = self._metrics
        runtime = self._runtime()
        requests = CounterMetricFamily(
            "shipyard_gateway_requests",
            "Requests answered, by frontend, route and status class",
            labels=("frontend", "route", "status"),
        )
        latency = HistogramMetricFamily(
            "shipyard_gateway_request_duration_seconds",
            "Time from the request's arrival to its response being sent",
            labels=("frontend", "route"),
        )
        for (frontend, route), stats in list(metrics.routes.items()):
            for index, name in enumerate(_CLASSES, start=1):
                if stats.classes[index]:
                    requests.add_metric((frontend, route or "<none>", name), stats.classes[index])
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(LATENCY_BUCKETS, stats.buckets, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative + stats.buckets[-1]))
            latency.add_metric((frontend, route or "<none>"), buckets, stats.total_seconds)
        yield requests
        yield latency
        upstream = CounterMetricFamily(
            "shipyard_gateway_upstream_requests",
            "Responses relayed from each upstream service, by status class",
            labels=("service", "status"),
        )
        for service, counts in list(metrics.services.items()):
            for index, name in enumerate(_CLASSES, start=1):
                if counts[index]:
                    upstream.add_metric((service, name), counts[index])
        yield upstream
        breaker = GaugeMetricFamily(
            "shipyard_gateway_breaker_state",
            "1 for the state each upstream service's circuit breaker is in",
            labels=("service", "state"),
        )
        denied = CounterMetricFamily(
            "shipyard_gateway_retries_denied",
            "Retries the service's retry budget refused",
            labels=("service",),
        )
        for name, upstream_service in runtime.upstreams.items():
            state = str(upstream_service.breaker.state.value)
            for candidate in _BREAKER_STATES:
                breaker.add_metric((name, candidate), 1.0 if state == candidate else 0.0)
            denied.add_metric((name,), upstream_service.retries_denied)
        yield breaker
        yield denied
        rejected = CounterMetricFamily(
            "shipyard_gateway_rate_limited",
            "Requests refused with 429 by the route's rate limit",
            labels=("frontend", "route"),
        )
        for (frontend, route), limit in runtime.rate_limits.items():
            rejected.add_metric((frontend, route), limit.rejected)
        yield rejected
        cache = CounterMetricFamily(
            "shipyard_gateway_cache",
            "Response cache lookups by result (hit, miss, stale)",
            labels=("frontend", "route", "result"),
        )
        for (frontend, route), cached in runtime.caches.items():
            counters = cached.counters
            cache.add_metric((frontend, route, "hit"), counters.hits)
            cache.add_metric((frontend, route, "miss"), counters.misses)
            cache.add_metric((frontend, route, "stale"), counters.stale)
        yield cache
        split = CounterMetricFamily(
            "shipyard_gateway_strangler_requests",
            "Requests of strangler routes by side",
            labels=("frontend", "route", "side"),
        )
        weight = GaugeMetricFamily(
            "shipyard_gateway_strangler_weight",
            "Percentage of a strangler route's requests sent to the new service",
            labels=("frontend", "route"),
        )
        for (frontend, route), strangler in runtime.stranglers.items():
            split.add_metric((frontend, route, "legacy"), strangler.to_legacy)
            split.add_metric((frontend, route, "new"), strangler.to_new)
            weight.add_metric((frontend, route), strangler.weight)
        yield split
        yield weight
        shadow = CounterMetricFamily(
            "shipyard_gateway_shadow",
            "Shadowed requests by outcome (match, diff, error)",
            labels=("frontend", "route", "outcome"),
        )
        for (frontend, route), mirror in runtime.shadows.items():
            shadow.add_metric((frontend, route, "match"), mirror.matches)
            shadow.add_metric((frontend, route, "diff"), mirror.diffs)
            shadow.add_metric((frontend, route, "error"), mirror.errors)
        yield shadow
        partial = CounterMetricFamily(
            "shipyard_gateway_partial_responses",
            "Aggregated responses in which a backend's fallback was used",
            labels=("frontend", "route"),
        )
        for (frontend, route), aggregator in runtime.aggregators.items():
            partial.add_metric((frontend, route), aggregator.partials)
        yield partial


def registry_for(metrics: GatewayMetrics, runtime: Callable[[], Runtime]) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding the gateway collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(metrics, runtime))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of ``registry``."""
    return generate_latest(registry)
