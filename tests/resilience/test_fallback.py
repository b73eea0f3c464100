"""A fallback degrades through its tiers in order and keeps the root cause visible."""

from __future__ import annotations

import asyncio

import pytest

from shipyard import ConfigError
from shipyard.resilience.fallback import Fallback, FallbackEvent


class CacheMiss(LookupError):
    pass


async def live_down(user: int) -> dict[str, object]:
    raise ConnectionError(f"user-service unreachable for {user}")


async def live_up(user: int) -> dict[str, object]:
    return {"user": user, "source": "live"}


async def from_cache(user: int) -> dict[str, object]:
    return {"user": user, "source": "cache"}


async def cache_miss(user: int) -> dict[str, object]:
    raise CacheMiss(f"no cached user {user}")


DEFAULT = {"user": None, "source": "default"}


async def test_a_healthy_primary_is_served_without_touching_the_tiers() -> None:
    assert await Fallback(from_cache, DEFAULT).call(live_up, 7) == {"user": 7, "source": "live"}


async def test_a_failing_primary_falls_to_the_first_tier_with_the_same_arguments() -> None:
    assert await Fallback(from_cache, DEFAULT).call(live_down, 7) == {"user": 7, "source": "cache"}


async def test_each_failing_tier_falls_to_the_next_down_to_a_static_value() -> None:
    assert await Fallback(cache_miss, DEFAULT).call(live_down, 7) is DEFAULT


async def test_sync_callable_tiers_work_in_async_code() -> None:
    fallback = Fallback(lambda user: {"user": user, "source": "sync"})
    assert await fallback.call(live_down, 3) == {"user": 3, "source": "sync"}


async def test_when_every_tier_fails_the_last_error_chains_back_to_the_primary() -> None:
    def also_broken(user: int) -> dict[str, object]:
        raise RuntimeError("defaults service down")

    with pytest.raises(RuntimeError) as caught:
        await Fallback(cache_miss, also_broken).call(live_down, 7)
    chain = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(type(error))
        error = error.__cause__ or error.__context__
    assert chain == [RuntimeError, CacheMiss, ConnectionError]


async def test_unhandled_errors_propagate_without_trying_the_tiers() -> None:
    fallback = Fallback(DEFAULT, handle=ConnectionError)

    async def bad_request(user: int) -> None:
        raise ValueError("bad user id")

    with pytest.raises(ValueError, match="bad user id"):
        await fallback.call(bad_request, 1)
    assert await fallback.call(live_down, 1) is DEFAULT


async def test_handle_accepts_a_predicate() -> None:
    fallback = Fallback(DEFAULT, handle=lambda e: "unreachable" in str(e))
    assert await fallback.call(live_down, 1) is DEFAULT


async def test_cancellation_is_never_handled() -> None:
    async def cancelled(user: int) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Fallback(DEFAULT, handle=BaseException).call(cancelled, 1)


async def test_events_name_the_tier_that_served() -> None:
    fallback = Fallback(cache_miss, from_cache, DEFAULT)
    events: list[FallbackEvent] = []
    fallback.events.subscribe(events.append)
    await fallback.call(live_down, 1)
    assert [(e.kind, e.tier, e.tier_name) for e in events] == [("served", 2, "from_cache")]
    assert isinstance(events[0].error, CacheMiss)


async def test_events_report_exhaustion() -> None:
    fallback = Fallback(cache_miss)
    kinds: list[tuple[str, int]] = []
    fallback.events.subscribe(lambda e: kinds.append((e.kind, e.tier)))
    with pytest.raises(CacheMiss):
        await fallback.call(live_down, 1)
    assert kinds == [("exhausted", 1)]


async def test_works_as_a_decorator_on_async_functions() -> None:
    @Fallback(from_cache)
    async def profile(user: int) -> dict[str, object]:
        return await live_down(user)

    assert await profile(5) == {"user": 5, "source": "cache"}


def test_works_as_a_decorator_in_sync_code() -> None:
    @Fallback(lambda text: -1, 0)
    def parse(text: str) -> int:
        return int(text)

    assert parse("12") == 12
    assert parse("twelve") == -1


def test_sync_code_chains_errors_too() -> None:
    def broken(text: str) -> int:
        raise KeyError(text)

    with pytest.raises(KeyError) as caught:
        Fallback(broken).call_sync(int, "x")
    assert isinstance(caught.value.__context__, ValueError)


def test_sync_code_refuses_async_tiers_clearly() -> None:
    with pytest.raises(ConfigError) as caught:
        Fallback(from_cache).call_sync(int, "x")
    assert caught.value.field == "tiers[0]"


def test_a_fallback_needs_at_least_one_tier() -> None:
    with pytest.raises(ConfigError):
        Fallback()


def test_handle_must_be_types_or_a_predicate() -> None:
    with pytest.raises(ConfigError) as caught:
        Fallback(DEFAULT, handle="ConnectionError")  # type: ignore[arg-type]
    assert caught.value.field == "handle"
