"""W3C traceparent parsing and formatting."""

from __future__ import annotations

import pytest

from shipyard.client import TraceContext, current_request_id, current_trace, trace_scope

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_round_trips() -> None:
    context = TraceContext.parse(VALID, "vendor=1")
    assert context == TraceContext(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01", "vendor=1"
    )
    assert context.traceparent == VALID


def test_a_child_keeps_the_trace_and_gets_a_new_span() -> None:
    parent = TraceContext.parse(VALID)
    assert parent is not None
    child = parent.child()
    assert (child.trace_id, child.flags) == (parent.trace_id, parent.flags)
    assert child.span_id != parent.span_id
    assert len(child.span_id) == 16


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has 4 parts
    ],
)
def test_a_malformed_traceparent_is_ignored(header: str | None) -> None:
    assert TraceContext.parse(header) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    context = TraceContext.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
    assert context is not None
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_incoming_headers_are_read_in_lower_case() -> None:
    context = TraceContext.from_headers({"traceparent": VALID, "tracestate": "a=b"})
    assert context is not None
    assert context.tracestate == "a=b"


def test_a_new_root_is_a_valid_trace() -> None:
    root = TraceContext.new_root(sampled=True)
    assert TraceContext.parse(root.traceparent) == root


def test_trace_scope_sets_and_restores_the_context() -> None:
    context = TraceContext.parse(VALID)
    with trace_scope(context, "req-1"):
        assert current_trace.get() is context
        assert current_request_id.get() == "req-1"
    assert current_trace.get() is None
    assert current_request_id.get() is None
