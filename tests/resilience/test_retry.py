"""Retry re-runs transient failures with backoff, and gives up with the original error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shipyard import ConfigError, ManualClock
from shipyard.resilience.budget import RetryBudget
from shipyard.resilience.errors import RateLimitExceededError
from shipyard.resilience.retry import Retry, RetryEvent, is_client_error, retry_attempts


class HTTPError(Exception):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        if retry_after is not None:
            self.retry_after = retry_after


class Flaky:
    """Raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        self.args = (args, kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def no_jitter(clock: ManualClock, **kwargs: Any) -> Retry:
    return Retry(base_delay=1.0, jitter=None, clock=clock, **kwargs)


async def test_transient_failures_are_retried_with_exponential_backoff() -> None:
    clock = ManualClock()
    flaky = Flaky(ConnectionError("a"), ConnectionError("b"))
    retry = no_jitter(clock, max_attempts=3)
    assert await retry.call(flaky, 1, key="v") == "ok"
    assert flaky.calls == 3
    assert flaky.args == ((1,), {"key": "v"})
    assert clock.slept == [1.0, 2.0]


async def test_a_call_that_succeeds_first_time_never_sleeps() -> None:
    clock = ManualClock()
    flaky = Flaky()
    assert await no_jitter(clock).call(flaky) == "ok"
    assert clock.slept == []


async def test_giving_up_reraises_the_original_last_error_with_history() -> None:
    clock = ManualClock()
    last = ConnectionError("third")
    flaky = Flaky(ConnectionError("first"), TimeoutError("second"), last)
    with pytest.raises(ConnectionError) as caught:
        await no_jitter(clock, max_attempts=3).call(flaky)
    assert caught.value is last
    attempts = retry_attempts(caught.value)
    assert [a.number for a in attempts] == [1, 2, 3]
    assert [a.error_type for a in attempts] == [
        "ConnectionError",
        "TimeoutError",
        "ConnectionError",
    ]
    assert [a.delay for a in attempts] == [1.0, 2.0, None]
    assert "gave up after 3 attempt(s): all 3 attempts failed" in caught.value.__notes__[0]
    assert caught.value.__context__ is None


async def test_client_errors_are_not_retried_by_default() -> None:
    flaky = Flaky(HTTPError(404))
    with pytest.raises(HTTPError):
        await no_jitter(ManualClock()).call(flaky)
    assert flaky.calls == 1


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
async def test_server_errors_and_retryable_client_statuses_are_retried(status: int) -> None:
    flaky = Flaky(HTTPError(status))
    assert await no_jitter(ManualClock()).call(flaky) == "ok"


def test_is_client_error_reads_status_or_status_code() -> None:
    class Response(Exception):
        status_code = 422

    assert is_client_error(Response())
    assert is_client_error(HTTPError(400))
    assert not is_client_error(HTTPError(429))
    assert not is_client_error(HTTPError(502))
    assert not is_client_error(ValueError())


async def test_errors_outside_retry_on_pass_through_untouched() -> None:
    flaky = Flaky(KeyError("nope"))
    with pytest.raises(KeyError) as caught:
        await Retry(retry_on=ConnectionError, clock=ManualClock()).call(flaky)
    assert flaky.calls == 1
    assert retry_attempts(caught.value) == ()


async def test_retry_on_and_give_up_on_accept_predicates() -> None:
    flaky = Flaky(ValueError("transient"), ValueError("fatal"))
    retry = Retry(
        retry_on=lambda e: isinstance(e, ValueError),
        give_up_on=lambda e: "fatal" in str(e),
        clock=ManualClock(),
    )
    with pytest.raises(ValueError, match="fatal"):
        await retry.call(flaky)
    assert flaky.calls == 2


async def test_cancellation_is_never_retried() -> None:
    flaky = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await Retry(retry_on=(BaseException,), clock=ManualClock()).call(flaky)
    assert flaky.calls == 1


def test_should_retry_answers_with_retry_on_and_give_up_on() -> None:
    retry = Retry(retry_on=ConnectionError, clock=ManualClock())
    assert retry.should_retry(ConnectionError("reset"))
    assert not retry.should_retry(KeyError("nope"))
    # The default give_up_on: a 4xx is final even though retry_on matches it.
    assert not Retry(clock=ManualClock()).should_retry(HTTPError(404))
    assert Retry(clock=ManualClock()).should_retry(HTTPError(503))


def test_should_retry_is_false_once_the_attempts_are_used_up() -> None:
    retry = Retry(max_attempts=3, clock=ManualClock())
    assert retry.should_retry(ConnectionError(), attempt=2)
    assert not retry.should_retry(ConnectionError(), attempt=3)


def test_should_retry_never_retries_a_cancellation() -> None:
    retry = Retry(retry_on=(BaseException,), give_up_on=None, clock=ManualClock())
    assert not retry.should_retry(asyncio.CancelledError())


async def test_retry_after_hint_stretches_the_wait() -> None:
    clock = ManualClock()
    flaky = Flaky(HTTPError(503, retry_after=7.5), RateLimitExceededError("api", 0.01))
    assert await no_jitter(clock).call(flaky) == "ok"
    assert clock.slept == [7.5, 2.0]  # max(backoff, retry_after) each time


async def test_deadline_stops_retrying_before_a_wait_that_would_cross_it() -> None:
    clock = ManualClock()
    flaky = Flaky(*(ConnectionError(str(n)) for n in range(10)))
    with pytest.raises(ConnectionError) as caught:
        await no_jitter(clock, max_attempts=10, deadline=5.0).call(flaky)
    assert clock.slept == [1.0, 2.0]  # the next wait (4 s) would end at 7 s > 5 s
    assert "deadline" in caught.value.__notes__[0]


async def test_an_empty_budget_stops_retries_and_says_so() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10.0, clock=clock)
    retry = no_jitter(clock, budget=budget)
    assert await retry.call(Flaky(ConnectionError())) == "ok"  # uses the one reserved retry
    flaky = Flaky(ConnectionError("again"))
    with pytest.raises(ConnectionError) as caught:
        await retry.call(flaky)
    assert flaky.calls == 1
    assert "retry budget exhausted" in caught.value.__notes__[0]


async def test_a_budget_is_shared_by_every_retry_that_holds_it() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10.0, clock=clock)
    first, second = no_jitter(clock, budget=budget), no_jitter(clock, budget=budget)
    assert await first.call(Flaky(ConnectionError())) == "ok"
    with pytest.raises(ConnectionError):
        await second.call(Flaky(ConnectionError()))


async def test_events_report_each_retry_and_the_outcome() -> None:
    clock = ManualClock()
    retry = no_jitter(clock, max_attempts=2)
    events: list[RetryEvent] = []
    retry.events.subscribe(events.append)
    await retry.call(Flaky(ConnectionError()))
    with pytest.raises(ConnectionError):
        await retry.call(Flaky(ConnectionError(), ConnectionError()))
    assert [(e.kind, e.attempt, e.delay) for e in events] == [
        ("retry", 1, 1.0),
        ("success_after_retry", 2, None),
        ("retry", 1, 1.0),
        ("give_up", 2, None),
    ]


async def test_budget_exhausted_event_is_emitted() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0, clock=clock)
    retry = no_jitter(clock, budget=budget)
    kinds: list[str] = []
    retry.events.subscribe(lambda e: kinds.append(e.kind))
    with pytest.raises(ConnectionError):
        await retry.call(Flaky(ConnectionError()))
    assert kinds == ["budget_exhausted", "give_up"]


async def test_decorated_async_function_is_retried() -> None:
    clock = ManualClock()
    flaky = Flaky(ConnectionError())

    @no_jitter(clock)
    async def fetch(x: int) -> str:
        return await flaky(x)

    assert asyncio.iscoroutinefunction(fetch)
    assert await fetch(1) == "ok"
    assert flaky.calls == 2


def test_sync_calls_retry_with_blocking_sleep_on_the_clock() -> None:
    clock = ManualClock()
    calls: list[int] = []

    @no_jitter(clock, max_attempts=3)
    def parse(text: str) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("transient")
        return int(text)

    assert parse("5") == 5
    assert clock.slept == [1.0, 2.0]
    assert no_jitter(clock).call_sync(int, "7") == 7


def test_sync_calls_honour_deadline_and_budget_too() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0, clock=clock)
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        no_jitter(clock, budget=budget, deadline=100.0).call_sync(broken)
    assert calls == [1]


async def test_jitter_uses_the_injected_random_source() -> None:
    clock = ManualClock()
    retry = Retry(base_delay=1.0, jitter="full", random=lambda: 0.25, clock=clock)
    await retry.call(Flaky(ConnectionError(), ConnectionError()))
    assert clock.slept == [0.25, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay": -1}, "base_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"max_delay": 0.01, "base_delay": 1}, "max_delay"),
        ({"jitter": "random"}, "jitter"),
        ({"deadline": 0}, "deadline"),
        ({"retry_on": "ConnectionError"}, "retry_on"),
        ({"give_up_on": (ValueError, 3)}, "give_up_on"),
        ({"budget": 5}, "budget"),
    ],
)
def test_invalid_settings_are_rejected_naming_the_parameter(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Retry(**kwargs)
    assert caught.value.field == field
