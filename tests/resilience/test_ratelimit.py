"""Rate limiters refill over time, isolate keys, honour cost, and say when to come back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shipyard import ConfigError, ManualClock
from shipyard.resilience.errors import RateLimitExceededError
from shipyard.resilience.ratelimit import (
    MemoryRateLimitStore,
    RateLimitDecision,
    RateLimiter,
    SlidingWindowLimiter,
    TokenBucketLimiter,
    sliding_window_step,
    token_bucket_step,
)


async def allowed_count(limiter: RateLimiter, n: int, key: str = "") -> int:
    return sum([(await limiter.acquire(key)).allowed for _ in range(n)])


async def answer() -> str:
    return "ok"


# -- token bucket -----------------------------------------------------------------------


async def test_token_bucket_allows_a_burst_then_denies() -> None:
    limiter = TokenBucketLimiter("api", rate=1.0, burst=5, clock=ManualClock())
    assert await allowed_count(limiter, 8) == 5


async def test_token_bucket_refills_at_rate_up_to_burst() -> None:
    clock = ManualClock()
    limiter = TokenBucketLimiter("api", rate=2.0, burst=5, clock=clock)
    await allowed_count(limiter, 5)
    clock.advance(1.0)
    assert await allowed_count(limiter, 5) == 2
    clock.advance(100.0)
    assert await allowed_count(limiter, 10) == 5


async def test_token_bucket_keys_are_isolated() -> None:
    limiter = TokenBucketLimiter("api", rate=1.0, burst=2, clock=ManualClock())
    assert await allowed_count(limiter, 3, key="alice") == 2
    assert await allowed_count(limiter, 3, key="bob") == 2


async def test_limiters_sharing_a_store_keep_separate_counters() -> None:
    store = MemoryRateLimitStore()
    clock = ManualClock()
    a = TokenBucketLimiter("a", rate=1.0, burst=1, store=store, clock=clock)
    b = TokenBucketLimiter("b", rate=1.0, burst=1, store=store, clock=clock)
    assert (await a.acquire("k")).allowed
    assert (await b.acquire("k")).allowed


async def test_token_bucket_cost_takes_several_tokens() -> None:
    limiter = TokenBucketLimiter("api", rate=1.0, burst=10, clock=ManualClock())
    decision = await limiter.acquire(cost=4)
    assert decision == RateLimitDecision(True, 10, 6, 4.0, 0.0)
    assert (await limiter.acquire(cost=6)).allowed
    assert not (await limiter.acquire(cost=1)).allowed


async def test_token_bucket_retry_after_is_exactly_enough() -> None:
    clock = ManualClock()
    limiter = TokenBucketLimiter("api", rate=4.0, burst=4, clock=clock)
    await allowed_count(limiter, 3)
    decision = await limiter.acquire(cost=3)
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(0.5)
    clock.advance(decision.retry_after * 0.99)
    assert not (await limiter.acquire(cost=3)).allowed
    clock.advance(decision.retry_after * 0.01)
    assert (await limiter.acquire(cost=3)).allowed


async def test_cost_above_burst_is_rejected_as_config_error() -> None:
    limiter = TokenBucketLimiter("api", rate=1.0, burst=3)
    with pytest.raises(ConfigError) as caught:
        await limiter.acquire(cost=4)
    assert caught.value.field == "cost"


def test_token_bucket_step_is_a_pure_function_of_state() -> None:
    state, first = token_bucket_step(None, rate=1.0, burst=2, cost=2, now=100.0)
    assert first.allowed
    assert first.remaining == 0
    assert first.reset_after == 2.0
    _, denied = token_bucket_step(state, rate=1.0, burst=2, cost=1, now=100.5)
    assert (denied.allowed, denied.retry_after) == (False, 0.5)
    # A clock stepping backwards refills nothing and breaks nothing.
    _, back = token_bucket_step(state, rate=1.0, burst=2, cost=1, now=90.0)
    assert not back.allowed


# -- sliding window ---------------------------------------------------------------------


async def test_sliding_window_allows_limit_per_window() -> None:
    limiter = SlidingWindowLimiter("api", limit=3, window=10.0, clock=ManualClock())
    assert await allowed_count(limiter, 5) == 3


async def test_sliding_window_weights_the_previous_window_at_the_boundary() -> None:
    clock = ManualClock(start=0.0, wall_start=0.0)
    limiter = SlidingWindowLimiter("api", limit=10, window=10.0, clock=clock)
    clock.advance(9.0)
    assert await allowed_count(limiter, 10) == 10
    # Just past the boundary the previous window still weighs 90%: no 2x burst.
    clock.advance(2.0)
    assert await allowed_count(limiter, 10) == 1
    # Half-way through, half of the previous window's count has aged out.
    clock.advance(4.0)
    assert await allowed_count(limiter, 10) == 4


async def test_sliding_window_forgets_everything_after_two_windows() -> None:
    clock = ManualClock(start=0.0, wall_start=0.0)
    limiter = SlidingWindowLimiter("api", limit=2, window=1.0, clock=clock)
    await allowed_count(limiter, 2)
    clock.advance(2.0)
    assert await allowed_count(limiter, 5) == 2


async def test_sliding_window_retry_after_is_exactly_enough() -> None:
    clock = ManualClock(start=0.0, wall_start=0.0)
    limiter = SlidingWindowLimiter("api", limit=4, window=10.0, clock=clock)
    clock.advance(5.0)
    await allowed_count(limiter, 4)
    for _ in range(3):
        decision = await limiter.acquire()
        assert not decision.allowed
        clock.advance(decision.retry_after * 0.99)
        assert not (await limiter.acquire()).allowed
        clock.advance(decision.retry_after * 0.01 + 1e-9)
        assert (await limiter.acquire()).allowed


async def test_sliding_window_cost_counts_several_requests() -> None:
    limiter = SlidingWindowLimiter("api", limit=5, window=1.0, clock=ManualClock())
    assert (await limiter.acquire("k", cost=3)).remaining == 2
    assert not (await limiter.acquire("k", cost=3)).allowed
    assert (await limiter.acquire("other", cost=5)).allowed


def test_sliding_window_step_reports_reset_and_remaining() -> None:
    state, decision = sliding_window_step(None, limit=3, window=10.0, cost=1, now=12.0)
    assert (decision.remaining, decision.reset_after) == (2, 18.0)
    assert state.window_number == 1


# -- as policies ------------------------------------------------------------------------


async def test_denied_call_raises_with_retry_after_and_is_not_run() -> None:
    limiter = TokenBucketLimiter("api", rate=2.0, burst=1, clock=ManualClock())
    assert await limiter.call(answer) == "ok"
    calls: list[int] = []

    async def counted() -> None:
        calls.append(1)

    with pytest.raises(RateLimitExceededError) as caught:
        await limiter.call(counted)
    assert caught.value.retry_after == pytest.approx(0.5)
    assert caught.value.limiter == "api"
    assert calls == []


async def test_max_wait_waits_for_a_token_instead_of_failing() -> None:
    clock = ManualClock()
    limiter = TokenBucketLimiter("api", rate=2.0, burst=1, clock=clock, max_wait=1.0)
    assert await limiter.call(answer) == "ok"
    assert await limiter.call(answer) == "ok"
    assert clock.slept == [pytest.approx(0.5)]


async def test_max_wait_shorter_than_retry_after_fails_without_waiting() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter("api", limit=1, window=10.0, clock=clock, max_wait=1.0)
    await limiter.call(answer)
    with pytest.raises(RateLimitExceededError):
        await limiter.call(answer)
    assert clock.slept == []


async def test_waiting_callers_queue_behind_each_other_within_max_wait() -> None:
    clock = ManualClock()
    limiter = TokenBucketLimiter("api", rate=10.0, burst=1, clock=clock, max_wait=0.25)
    results = await asyncio.gather(
        *(limiter.call(answer) for _ in range(4)), return_exceptions=True
    )
    assert results[:3] == ["ok", "ok", "ok"]


def test_sync_calls_use_the_same_limits() -> None:
    clock = ManualClock()
    limiter = TokenBucketLimiter("api", rate=1.0, burst=1, clock=clock, max_wait=2.0)

    @limiter
    def ping() -> str:
        return "pong"

    assert ping() == "pong"
    assert ping() == "pong"
    assert clock.slept == [pytest.approx(1.0)]
    strict = SlidingWindowLimiter("api", limit=1, window=5.0, clock=clock)
    strict.call_sync(ping)
    with pytest.raises(RateLimitExceededError):
        strict.call_sync(ping)


def test_sync_calls_need_a_store_with_sync_operations() -> None:
    class RemoteOnly:
        async def token_bucket(self, *args: Any) -> RateLimitDecision:
            raise NotImplementedError

        async def sliding_window(self, *args: Any) -> RateLimitDecision:
            raise NotImplementedError

    limiter = TokenBucketLimiter("api", rate=1.0, burst=1, store=RemoteOnly())
    with pytest.raises(ConfigError) as caught:
        limiter.call_sync(int, "1")
    assert caught.value.field == "store"


# -- store memory -----------------------------------------------------------------------


def test_memory_store_drops_idle_keys() -> None:
    store = MemoryRateLimitStore()
    for n in range(100):
        store.token_bucket_sync(f"k{n}", 1.0, 1, 1, now=0.0)
    assert len(store) == 100
    for n in range(100):
        store.token_bucket_sync("hot", 1.0, 1, 1, now=10.0 + n)
    assert len(store) == 1


def test_memory_store_never_holds_more_than_max_keys() -> None:
    store = MemoryRateLimitStore(max_keys=10)
    for n in range(50):
        store.sliding_window_sync(f"k{n}", 5, 60.0, 1, now=0.0)
    assert len(store) == 10


@pytest.mark.parametrize(
    ("factory", "kwargs", "field"),
    [
        (TokenBucketLimiter, {"rate": 0, "burst": 1}, "rate"),
        (TokenBucketLimiter, {"rate": 1, "burst": 0}, "burst"),
        (TokenBucketLimiter, {"rate": 1, "burst": 1, "max_wait": -1}, "max_wait"),
        (SlidingWindowLimiter, {"limit": 0, "window": 1}, "limit"),
        (SlidingWindowLimiter, {"limit": 1, "window": -1}, "window"),
    ],
)
def test_invalid_settings_are_rejected_naming_the_parameter(
    factory: Any, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        factory("api", **kwargs)
    assert caught.value.field == field
