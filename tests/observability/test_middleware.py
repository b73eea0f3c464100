"""Request ids, trace context, spans and request log lines from ObservabilityMiddleware."""

from __future__ import annotations

import io
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from shipyard.core import ManualClock
from shipyard.observability import (
    ObservabilityMiddleware,
    RequestLog,
    ServiceMetrics,
    Span,
    TraceRecorder,
    current_request_id,
    current_trace,
)
from tests.observability.asgi import call

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


async def whoami(request: Request) -> JSONResponse:
    trace = current_trace.get()
    assert trace is not None
    return JSONResponse(
        {"request_id": current_request_id.get(), "trace": trace.trace_id, "span": trace.span_id}
    )


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def build(
    log_stream: io.StringIO | None = None, clock: ManualClock | None = None
) -> tuple[ObservabilityMiddleware, TraceRecorder]:
    app = Starlette(routes=[Route("/items/{id}", whoami), Route("/boom", boom)])
    recorder = TraceRecorder(capacity=10)
    middleware = ObservabilityMiddleware(
        app,
        service="items",
        metrics=ServiceMetrics(),
        recorder=recorder,
        log=RequestLog("items", stream=log_stream or io.StringIO()),
        clock=clock or ManualClock(),
    )
    return middleware, recorder


async def test_a_request_without_request_id_gets_one_generated_and_echoed() -> None:
    app, _ = build()
    reply = await call(app, path="/items/1")
    request_id = reply.headers["x-request-id"]
    assert len(request_id) == 32
    assert reply.json()["request_id"] == request_id


async def test_an_incoming_request_id_is_kept_and_echoed() -> None:
    app, _ = build()
    reply = await call(app, path="/items/1", headers=[("X-Request-Id", "req-42")])
    assert reply.headers["x-request-id"] == "req-42"
    assert reply.json()["request_id"] == "req-42"


async def test_an_unprintable_request_id_is_replaced() -> None:
    app, _ = build()
    reply = await call(app, path="/items/1", headers=[("X-Request-Id", "bad id")])
    assert reply.headers["x-request-id"] != "bad id"


async def test_an_incoming_traceparent_is_continued_with_a_new_server_span() -> None:
    app, recorder = build()
    reply = await call(app, path="/items/7", headers=[("traceparent", TRACEPARENT)])
    seen = reply.json()
    assert seen["trace"] == TRACE_ID
    assert seen["span"] != PARENT_SPAN
    [span] = recorder.spans(TRACE_ID)
    assert (span.span_id, span.parent_id) == (seen["span"], PARENT_SPAN)
    assert span.name == "GET /items/{id}"
    assert span.status == 200


async def test_a_malformed_traceparent_starts_a_new_trace() -> None:
    app, recorder = build()
    reply = await call(app, path="/items/7", headers=[("traceparent", "00-zz-yy-01")])
    [span] = recorder.spans()
    assert span.parent_id is None
    assert span.trace_id == reply.json()["trace"] != TRACE_ID


async def test_the_trace_is_current_only_while_the_request_is_handled() -> None:
    app, _ = build()
    await call(app, path="/items/7", headers=[("traceparent", TRACEPARENT)])
    assert current_trace.get() is None
    assert current_request_id.get() is None


async def test_one_json_log_line_is_written_per_request() -> None:
    stream = io.StringIO()
    clock = ManualClock()
    app, _ = build(stream, clock)
    await call(app, path="/items/3", headers=[("traceparent", TRACEPARENT), ("x-request-id", "r1")])
    await call(app, path="/nowhere")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "r1"
    assert first["trace_id"] == TRACE_ID
    assert first["span_id"] not in ("", PARENT_SPAN)
    assert (first["method"], first["route"], first["path"]) == ("GET", "/items/{id}", "/items/3")
    assert first["status"] == 200
    assert first["bytes"] > 0
    assert first["service"] == "items"
    assert second["route"] == "<unmatched>"
    assert second["status"] == 404


async def test_an_app_that_raises_is_logged_and_recorded_as_500() -> None:
    stream = io.StringIO()
    app, recorder = build(stream)
    with pytest.raises(RuntimeError):
        await call(app, path="/boom")
    assert json.loads(stream.getvalue())["status"] == 500
    assert recorder.spans()[-1].failed


def test_the_recorder_keeps_only_the_last_spans_and_feeds_exporters() -> None:
    recorder = TraceRecorder(capacity=2)
    exported: list[Span] = []

    class Exporter:
        def export(self, span: Span) -> None:
            exported.append(span)

    recorder.add_exporter(Exporter())
    spans = [Span(f"s{i}", "t" * 32, f"{i:016x}", None, 0.0, 0.0, 200) for i in range(3)]
    for span in spans:
        recorder.record(span)
    assert recorder.spans() == spans[1:]
    assert exported == spans
