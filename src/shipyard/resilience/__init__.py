"""Resilience policies: circuit breaker, retry, timeout, bulkhead, rate limiter, fallback,
and the pipeline that composes them. Pure: no network, no framework, injectable clock."""

from shipyard.resilience.errors import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    RateLimitExceededError,
    ResilienceError,
    RetryBudgetExhaustedError,
)
from shipyard.resilience.policy import Policy

__all__ = [
    # base
    "Policy",
    # errors
    "ResilienceError",
    "CircuitOpenError",
    "CallTimeoutError",
    "BulkheadFullError",
    "RateLimitExceededError",
    "RetryBudgetExhaustedError",
]
