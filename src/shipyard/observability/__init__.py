"""Observability for services: Prometheus metrics in a per-service registry (HTTP server
metrics and resilience exporters), W3C trace context with an in-process span recorder,
and one JSON log line per request — wired by :class:`ObservabilityMiddleware`.

metrics = ServiceMetrics()
metrics.watch(payments_breaker, db_bulkhead)
app = ObservabilityMiddleware(app, service="orders", metrics=metrics,
                              recorder=TraceRecorder(), log=RequestLog("orders"))
"""

from shipyard.observability.exporters import MeteredLimiter, ResilienceMetrics
from shipyard.observability.metrics import (
    DEFAULT_BUCKETS,
    UNMATCHED_ROUTE,
    MetricsApp,
    ServiceMetrics,
)
from shipyard.observability.middleware import (
    REQUEST_ID_HEADER,
    ObservabilityMiddleware,
    route_template,
)
from shipyard.observability.pools import DatabasePoolMetrics, HasPools
from shipyard.observability.request_log import RequestLog
from shipyard.observability.spans import Span, SpanExporter, SpanKind, TraceRecorder
from shipyard.observability.tracing import (
    TraceContext,
    current_request_id,
    current_trace,
    trace_scope,
)

__all__ = [
    # the middleware
    "ObservabilityMiddleware",
    "route_template",
    "REQUEST_ID_HEADER",
    # metrics
    "ServiceMetrics",
    "MetricsApp",
    "ResilienceMetrics",
    "MeteredLimiter",
    "DatabasePoolMetrics",
    "HasPools",
    "DEFAULT_BUCKETS",
    "UNMATCHED_ROUTE",
    # traces
    "TraceContext",
    "current_trace",
    "current_request_id",
    "trace_scope",
    "Span",
    "SpanKind",
    "SpanExporter",
    "TraceRecorder",
    # logs
    "RequestLog",
]
