"""W3C Trace Context (``traceparent``/``tracestate``) and ``X-Request-Id`` propagation.

The service runtime parses the incoming headers and sets ``current_trace`` and
``current_request_id`` for the duration of a request; every outgoing call of a
``ServiceClient`` then sends the same trace id with a fresh span id (a child span), the
caller's ``tracestate`` unchanged, and the same request id. Small enough to implement here
rather than depend on OpenTelemetry for two headers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_HEX = frozenset("0123456789abcdef")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


_random_bits = random.getrandbits


def new_span_id() -> str:
    """16 random hex digits, never all zero (which W3C reserves as invalid)."""
    # Span and trace ids must be unique, not secret: the Mersenne Twister is plenty and
    # costs a fraction of an os.urandom system call on every outgoing request. bytes.hex()
    # is about twice as fast as the format spec "016x" on the same (zero-padded) digits.
    return (_random_bits(64) or 1).to_bytes(8, "big").hex()


def new_trace_id() -> str:
    """32 random hex digits, never all zero."""
    return (_random_bits(128) or 1).to_bytes(16, "big").hex()


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's place in a trace: 32-hex ``trace_id``, 16-hex ``span_id`` (the parent of
    the next outgoing call), 2-hex ``flags`` (``"01"`` = sampled) and the raw ``tracestate``."""

    trace_id: str
    span_id: str
    flags: str = "00"
    tracestate: str | None = None

    @classmethod
    def new_root(cls, *, sampled: bool = False) -> TraceContext:
        """A new trace, for a call made outside any incoming request."""
        return cls(new_trace_id(), new_span_id(), "01" if sampled else "00")

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
        """Read a ``traceparent`` header (version 00, or a later version's first four
        fields); ``None`` when absent or malformed, as the W3C spec says to ignore it."""
        if not traceparent:
            return None
        parts = traceparent.strip().lower().split("-")
        if len(parts) < 4:
            return None
        version, trace_id, span_id, flags = parts[:4]
        if (
            len(version) != 2
            or version == "ff"
            or (version == "00" and len(parts) != 4)
            or len(trace_id) != 32
            or len(span_id) != 16
            or len(flags) != 2
            or not _HEX.issuperset(version + trace_id + span_id + flags)
            or trace_id == _INVALID_TRACE_ID
            or span_id == _INVALID_SPAN_ID
        ):
            return None
        return cls(trace_id, span_id, flags, tracestate or None)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> TraceContext | None:
        """``parse`` the ``traceparent``/``tracestate`` of an incoming request's headers
        (looked up in lower case, as ASGI and aiohttp headers are)."""
        return cls.parse(headers.get("traceparent"), headers.get("tracestate"))

    def child(self) -> TraceContext:
        """The context of an outgoing call: same trace, a new span id."""
        return TraceContext(self.trace_id, new_span_id(), self.flags, self.tracestate)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


current_trace: ContextVar[TraceContext | None] = ContextVar("shipyard_current_trace", default=None)
"""The span of the request being handled; set by the service runtime (or ``trace_scope``)."""

current_request_id: ContextVar[str | None] = ContextVar("shipyard_current_request_id", default=None)
"""The ``X-Request-Id`` of the request being handled, passed on to every outgoing call."""


@contextmanager
def trace_scope(trace: TraceContext | None, request_id: str | None = None) -> Iterator[None]:
    """Make ``trace`` and ``request_id`` current inside the block (what the service runtime
    does around each request)."""
    trace_token = current_trace.set(trace)
    request_token = current_request_id.set(request_id)
    try:
        yield
    finally:
        current_request_id.reset(request_token)
        current_trace.reset(trace_token)
