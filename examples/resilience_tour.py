"""A tour of ``shipyard.resilience``: the code shown in the README, runnable as is.

Run it with ``uv run python examples/resilience_tour.py``; ``tests/test_examples.py`` runs
it in CI so the README cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import contextlib

from shipyard import ManualClock
from shipyard.resilience import (
    Bulkheads,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Pipeline,
    Retry,
    Timeout,
)


class PaymentDeclined(Exception):
    """A client error: retrying it would never help."""

    status = 402


async def main() -> dict[str, object]:
    clock = ManualClock()  # the examples run instantly; omit clock= in real code
    seen: dict[str, object] = {}

    # A breaker opens when half the calls in a 10 s window fail (after 4 calls).
    breaker = CircuitBreaker("payments", failure_rate_threshold=0.5, minimum_calls=4, clock=clock)

    @breaker
    async def charge(amount: int) -> str:
        raise ConnectionError("provider unreachable")

    for _ in range(4):
        with contextlib.suppress(ConnectionError):
            await charge(10)
    try:
        await charge(10)
    except CircuitOpenError as error:
        seen["breaker"] = (str(breaker.state), round(error.remaining or 0))

    # Retry with exponential backoff and full jitter; 4xx-style errors are never retried.
    retry = Retry(max_attempts=3, base_delay=0.2, clock=clock)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    seen["retry"] = (await retry.call(flaky), attempts)

    declined_attempts = 0

    async def decline() -> None:
        nonlocal declined_attempts
        declined_attempts += 1
        raise PaymentDeclined("card declined")

    try:
        await retry.call(decline)
    except PaymentDeclined:
        seen["client_error_attempts"] = declined_attempts  # raised at once, not retried

    # Tiered fallback: live, then cache, then a static default.
    cache = {"sku-1": ["sku-2", "sku-3"]}

    async def live(sku: str) -> list[str]:
        raise ConnectionError("recommendations down")

    def from_cache(sku: str) -> list[str]:
        return cache[sku]

    fallback = Fallback(from_cache, ["bestsellers"])
    seen["fallback"] = (await fallback.call(live, "sku-1"), await fallback.call(live, "sku-9"))

    # Named bulkheads keep analytics from starving the API.
    pools = Bulkheads.defaults()
    seen["bulkheads"] = {name: pools[name].max_concurrent for name in ("api", "analytics")}

    # A pipeline, outermost first, built once from code or from a config dict.
    pipeline = Pipeline(
        Timeout(2.0, clock=clock),
        Retry(max_attempts=3, base_delay=0.05, clock=clock),
        CircuitBreaker("inventory", clock=clock),
        pools["api"],
    )
    seen["pipeline"] = await pipeline.call(flaky)
    configured = Pipeline.from_dict(
        {"timeout": 2.0, "retry": {"max_attempts": 3}, "circuit_breaker": {}, "bulkhead": 20},
        name="orders",
        clock=clock,
    )
    seen["configured"] = [type(policy).__name__ for policy in configured.policies]
    return seen


if __name__ == "__main__":
    for key, value in asyncio.run(main()).items():
        print(f"{key}: {value}")
