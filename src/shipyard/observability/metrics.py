"""Prometheus metrics of one service, in its own ``CollectorRegistry``.

A registry per service (not ``prometheus_client``'s global one) keeps tests and several
services in one process from colliding. HTTP server metrics:

* ``http_server_requests_total{method,route,status}``;
* ``http_server_request_duration_seconds{method,route}`` (histogram);
* ``http_server_requests_in_flight``.

``route`` is the route *template* (``/orders/{id}``), never the raw path, so the number of
series stays bounded; requests no route matched count as ``<unmatched>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from starlette.types import Receive, Scope, Send

from shipyard.observability.exporters import ResilienceMetrics, Unsubscribe
from shipyard.observability.pools import DatabasePoolMetrics, HasPools

UNMATCHED_ROUTE = "<unmatched>"
"""The ``route`` label of requests no route template matched (404s, unknown paths)."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
"""Latency buckets in seconds: service-to-service calls live in the low milliseconds."""

# Client-chosen methods become label values: anything unusual is folded into one series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics:
    """The metrics of one service: HTTP server metrics, plus :attr:`resilience` exporters.

    ``metrics.watch(breaker, bulkhead, pipeline, ...)`` exports resilience policies;
    ``metrics.watch_database("orders", db)`` its database pools (:mod:`.pools`);
    ``metrics.asgi_app()`` serves the text exposition format.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.requests = Counter(
            "http_server_requests",
            "HTTP requests answered, by method, route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Time from request to the end of the response, by method and route template",
            ("method", "route"),
            buckets=tuple(buckets),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "HTTP requests being handled right now",
            registry=self.registry,
        )
        self.resilience = ResilienceMetrics(self.registry)
        self.pools = DatabasePoolMetrics(self.registry)
        # (method, route, status) -> (counter child, histogram child): ``labels()`` locks and
        # builds a key every call; the hot path does one dict lookup instead.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        if method not in _METHODS:
            method = "OTHER"
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, *sources: Any) -> Unsubscribe:
        """Export breakers, bulkheads, retries, pipelines (see :class:`ResilienceMetrics`)."""
        return self.resilience.watch(*sources)

    def watch_database(self, name: str, database: HasPools) -> Unsubscribe:
        """Export ``database``'s pools (size, in use, waiting, rejected) labelled
        ``database=name``; returns the way to stop."""
        self.pools.watch(name, database)
        return lambda: self.pools.unwatch(name)

    def render(self) -> bytes:
        """The current metrics in Prometheus' text format."""
        self.resilience.refresh()
        return generate_latest(self.registry)

    def asgi_app(self) -> MetricsApp:
        """A raw ASGI app answering ``GET`` with :meth:`render`."""
        return MetricsApp(self)


class MetricsApp:
    """``GET /metrics`` (any path, in fact: mount it where the scraper looks)."""

    __slots__ = ("metrics",)

    content_type = CONTENT_TYPE_PLAIN_0_0_4.encode()

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            body = b'{"error":"method not allowed: use GET"}'
            headers = [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD")]
            await _respond(send, 405, body, headers)
            return
        body = self.metrics.render()
        headers = [(b"content-type", self.content_type), (b"cache-control", b"no-store")]
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, headers)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
