"""``ObservabilityMiddleware``: request id, W3C trace context, HTTP metrics, a span and a
JSON log line for every request — one raw ASGI wrapper, no ``BaseHTTPMiddleware``.

Per request it reads ``X-Request-Id`` (or makes one) and ``traceparent``/``tracestate``,
starts a server span (a child of the caller's span, or a new trace), makes both current
(``current_trace``/``current_request_id``, so ``ServiceClient`` calls made while handling
the request continue the trace) and echoes ``X-Request-Id`` on the response. When the
response is done it counts it, records the span and writes the log line.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.observability.metrics import UNMATCHED_ROUTE, ServiceMetrics
from shipyard.observability.request_log import RequestLog
from shipyard.observability.spans import Span, TraceRecorder
from shipyard.observability.tracing import TraceContext, current_request_id, current_trace

REQUEST_ID_HEADER = b"x-request-id"
_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
# A request id is copied into logs and outgoing headers: accept only a sane one.
_MAX_REQUEST_ID = 128


def route_template(scope: Scope) -> str:
    """The matched route's template (Starlette and FastAPI put the route in the scope),
    else ``<unmatched>``: raw paths would give every id its own metric series."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


def _request_id(raw: bytes | None) -> str:
    if raw and len(raw) <= _MAX_REQUEST_ID and raw.isascii() and b" " not in raw:
        text = raw.decode("ascii")
        if text.isprintable():
            return text
    return os.urandom(16).hex()


class ObservabilityMiddleware:
    """Wraps ``app`` with request ids, tracing, metrics, spans and request logs.

    Each of ``metrics``, ``recorder`` and ``log`` is optional (``None`` skips it);
    ``route_of(scope)`` names the route for metrics and logs (default: the template
    Starlette/FastAPI matched). Lifespan and websocket scopes pass straight through.
    """

    __slots__ = (
        "_clock",
        "_route_of",
        "app",
        "bind_log_context",
        "log",
        "metrics",
        "recorder",
        "service",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str = "",
        metrics: ServiceMetrics | None = None,
        recorder: TraceRecorder | None = None,
        log: RequestLog | None = None,
        route_of: Callable[[Scope], str] = route_template,
        bind_log_context: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.service = service
        self.metrics = metrics
        self.recorder = recorder
        self.log = log
        self.bind_log_context = bind_log_context
        self._route_of = route_of
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_request_id = traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                raw_request_id = value
            elif name == _TRACEPARENT:
                traceparent = value.decode("latin-1")
            elif name == _TRACESTATE:
                tracestate = value.decode("latin-1")
        request_id = _request_id(raw_request_id)
        parent = TraceContext.parse(traceparent, tracestate)
        span = parent.child() if parent is not None else TraceContext.new_root(sampled=True)
        echoed = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 0
        size = 0

        async def send_observed(message: Message) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                # A new dict: the app may reuse its message, and must not see our header.
                message = {**message, "headers": [*message.get("headers", ()), echoed]}
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        clock = self._clock
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.inc()
        started = clock.monotonic()
        trace_token = current_trace.set(span)
        request_token = current_request_id.set(request_id)
        log_tokens = (
            structlog.contextvars.bind_contextvars(
                request_id=request_id, trace_id=span.trace_id, span_id=span.span_id
            )
            if self.bind_log_context
            else None
        )
        try:
            await self.app(scope, receive, send_observed)
        finally:
            if log_tokens is not None:
                structlog.contextvars.reset_contextvars(**log_tokens)
            current_request_id.reset(request_token)
            current_trace.reset(trace_token)
            duration = clock.monotonic() - started
            # No response started means the app raised: the server answers 500.
            status = status or 500
            route = self._route_of(scope)
            method: str = scope["method"]
            if metrics is not None:
                metrics.in_flight.dec()
                metrics.observe_request(method, route, status, duration)
            if self.recorder is not None:
                self.recorder.record(
                    Span(
                        name=f"{method} {route}",
                        trace_id=span.trace_id,
                        span_id=span.span_id,
                        parent_id=parent.span_id if parent is not None else None,
                        start=clock.now() - duration,
                        duration=duration,
                        status=status,
                        service=self.service,
                        attributes={"http.target": scope["path"], "request_id": request_id},
                    )
                )
            if self.log is not None:
                self.log.write(
                    ts=clock.now(),
                    request_id=request_id,
                    method=method,
                    route=route,
                    path=scope["path"],
                    status=status,
                    latency_ms=duration * 1000.0,
                    size=size,
                    trace_id=span.trace_id,
                    span_id=span.span_id,
                )
