"""Resilient service-to-service HTTP calls: ``ServiceClient("orders", discovery=…)``
resolves instances through discovery, balances, ejects outliers, and runs every call
through a per-service resilience pipeline with a breaker per instance; W3C trace context
and ``X-Request-Id`` travel with each call.
"""

from shipyard.client.client import IDEMPOTENCY_KEY, SAFE_METHODS, ServiceClient
from shipyard.client.errors import (
    ClientClosedError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientStatusError,
    HTTPServerStatusError,
    HTTPStatusError,
    UpstreamConnectionError,
)
from shipyard.client.policy import (
    DEFAULT_POLICY,
    POLICY_KEYS,
    RETRY_STATUSES,
    is_retryable,
    is_upstream_fault,
)
from shipyard.client.response import Response, parse_retry_after
from shipyard.observability.tracing import (
    TraceContext,
    current_request_id,
    current_trace,
    new_span_id,
    new_trace_id,
    trace_scope,
)

__all__ = [
    # the client
    "ServiceClient",
    "Response",
    "SAFE_METHODS",
    "IDEMPOTENCY_KEY",
    # policy
    "DEFAULT_POLICY",
    "POLICY_KEYS",
    "RETRY_STATUSES",
    "is_retryable",
    "is_upstream_fault",
    "parse_retry_after",
    # tracing
    "TraceContext",
    "current_trace",
    "current_request_id",
    "trace_scope",
    "new_span_id",
    "new_trace_id",
    # errors
    "ClientError",
    "HTTPStatusError",
    "HTTPClientStatusError",
    "HTTPServerStatusError",
    "UpstreamConnectionError",
    "ConnectTimeoutError",
    "ClientClosedError",
]
