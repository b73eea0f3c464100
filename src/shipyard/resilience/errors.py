"""Errors raised by resilience policies; each also subclasses the closest builtin."""

from __future__ import annotations

from shipyard.core.errors import ShipyardError


class ResilienceError(ShipyardError):
    """Root of the errors a resilience policy raises on its own behalf."""


class CircuitOpenError(ResilienceError, RuntimeError):
    """The breaker rejected the call without running it.

    ``remaining`` is how many seconds until the breaker lets trial calls through again
    (``None`` when it was forced open or is half-open with every trial slot taken).
    """

    def __init__(self, breaker: str, state: str, remaining: float | None) -> None:
        self.breaker = breaker
        self.state = state
        self.remaining = remaining
        # A Retry-After style hint, so a Retry policy outside the breaker waits it out.
        self.retry_after = remaining
        when = f"retry in {remaining:.3f}s" if remaining is not None else "retry later"
        super().__init__(f"circuit breaker {breaker!r} is {state}: call rejected; {when}")


class CallTimeoutError(ResilienceError, TimeoutError):
    """The call did not finish within its time limit and was cancelled."""

    def __init__(self, seconds: float, what: str = "call") -> None:
        self.seconds = seconds
        super().__init__(f"{what} timed out after {seconds:g}s")


class BulkheadFullError(ResilienceError, RuntimeError):
    """The bulkhead had no free slot (and its queue, if any, was full or the wait ran out)."""

    def __init__(self, bulkhead: str, max_concurrent: int, waited: float | None) -> None:
        self.bulkhead = bulkhead
        self.max_concurrent = max_concurrent
        self.waited = waited
        detail = f" after waiting {waited:g}s" if waited else ""
        super().__init__(
            f"bulkhead {bulkhead!r} is full ({max_concurrent} concurrent){detail}; "
            "shed load or raise max_concurrent / max_queue"
        )


class RateLimitExceededError(ResilienceError, RuntimeError):
    """The rate limiter denied the call; ``retry_after`` seconds until it would pass."""

    def __init__(self, limiter: str, retry_after: float) -> None:
        self.limiter = limiter
        self.retry_after = retry_after
        super().__init__(f"rate limit {limiter!r} exceeded; retry after {retry_after:.3f}s")


class RetryBudgetExhaustedError(ResilienceError, RuntimeError):
    """A retry was due but the shared retry budget had no tokens left (storm prevention)."""
