"""Resilience policies: circuit breaker, retry, timeout, bulkhead, rate limiter, fallback,
and the pipeline that composes them. Pure: no network, no framework, injectable clock.

Every policy works as a decorator (sync stays sync, async stays async, types kept), as
``await policy.call(fn, *args)`` and as ``policy.call_sync(fn, *args)``.
"""

from shipyard.resilience.backoff import Backoff, Jitter, backoff_delay, exponential_delay
from shipyard.resilience.breaker import (
    BreakerEvent,
    BreakerMetrics,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    ExceptionFilter,
)
from shipyard.resilience.budget import RetryBudget
from shipyard.resilience.bulkhead import (
    Bulkhead,
    BulkheadEvent,
    BulkheadMetrics,
    Bulkheads,
    UnknownBulkheadError,
)
from shipyard.resilience.errors import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    RateLimitExceededError,
    ResilienceError,
    RetryBudgetExhaustedError,
)
from shipyard.resilience.fallback import Fallback, FallbackEvent
from shipyard.resilience.pipeline import Pipeline
from shipyard.resilience.policy import Policy
from shipyard.resilience.ratelimit import (
    MemoryRateLimitStore,
    RateLimitDecision,
    RateLimiter,
    RateLimitStore,
    SlidingWindowLimiter,
    SlidingWindowState,
    SyncRateLimitStore,
    TokenBucketLimiter,
    TokenBucketState,
    sliding_window_step,
    token_bucket_step,
)
from shipyard.resilience.retry import (
    Attempt,
    ErrorFilter,
    Retry,
    RetryEvent,
    is_client_error,
    retry_attempts,
)
from shipyard.resilience.timeout import Timeout
from shipyard.resilience.window import CountWindow, HealthWindow, TimeWindow, WindowSnapshot

__all__ = [
    # composition
    "Policy",
    "Pipeline",
    # circuit breaker
    "CircuitBreaker",
    "BreakerRegistry",
    "BreakerState",
    "BreakerEvent",
    "BreakerMetrics",
    "ExceptionFilter",
    "HealthWindow",
    "TimeWindow",
    "CountWindow",
    "WindowSnapshot",
    # retry
    "Retry",
    "RetryEvent",
    "RetryBudget",
    "Attempt",
    "ErrorFilter",
    "retry_attempts",
    "is_client_error",
    "backoff_delay",
    "Backoff",
    "exponential_delay",
    "Jitter",
    # timeout
    "Timeout",
    # bulkhead
    "Bulkhead",
    "Bulkheads",
    "BulkheadMetrics",
    "BulkheadEvent",
    "UnknownBulkheadError",
    # rate limiting
    "RateLimiter",
    "RateLimitDecision",
    "RateLimitStore",
    "SyncRateLimitStore",
    "MemoryRateLimitStore",
    "TokenBucketLimiter",
    "SlidingWindowLimiter",
    "TokenBucketState",
    "SlidingWindowState",
    "token_bucket_step",
    "sliding_window_step",
    # fallback
    "Fallback",
    "FallbackEvent",
    # errors
    "ResilienceError",
    "CircuitOpenError",
    "CallTimeoutError",
    "BulkheadFullError",
    "RateLimitExceededError",
    "RetryBudgetExhaustedError",
]
