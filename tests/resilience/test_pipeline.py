"""A pipeline composes policies once; from_dict builds one from plain config data."""

from __future__ import annotations

import asyncio

import pytest

from shipyard import ConfigError, ManualClock
from shipyard.resilience import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Pipeline,
    Retry,
    RetryBudget,
    Timeout,
)


class Flaky:
    """Fails the first ``failures`` calls, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, value: int = 1) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"attempt {self.calls} failed")
        return value * 10


async def test_retry_outside_breaker_sends_each_attempt_through_the_breaker() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("svc", minimum_calls=10, clock=clock)
    pipeline = Pipeline(Retry(max_attempts=3, base_delay=0.01, clock=clock), breaker)
    flaky = Flaky(failures=2)
    assert await pipeline.call(flaky, 4) == 40
    assert flaky.calls == 3
    assert breaker.metrics.calls == 3
    assert breaker.metrics.failures == 2


async def test_open_breaker_inside_retry_is_not_hammered() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("svc", minimum_calls=2, reset_timeout=60, clock=clock)
    breaker.force_open()
    flaky = Flaky(failures=0)
    pipeline = Pipeline(Retry(max_attempts=3, base_delay=0.01, clock=clock), breaker)
    with pytest.raises(CircuitOpenError):
        await pipeline.call(flaky)
    assert flaky.calls == 0


async def test_fallback_outermost_serves_default_when_everything_fails() -> None:
    clock = ManualClock()
    pipeline = Pipeline(
        Fallback({"items": [], "degraded": True}),
        Retry(max_attempts=2, base_delay=0.01, clock=clock),
        CircuitBreaker("svc", clock=clock),
    )
    assert await pipeline.call(Flaky(failures=99)) == {"items": [], "degraded": True}


async def test_decorated_async_function_keeps_its_nature_and_arguments() -> None:
    pipeline = Pipeline(Retry(max_attempts=2, base_delay=0.001), Bulkhead("api", 2))

    @pipeline
    async def double(x: int, *, times: int = 2) -> int:
        return x * times

    assert asyncio.iscoroutinefunction(double)
    assert await double(3, times=3) == 9
    assert double.__name__ == "double"


def test_decorated_sync_function_runs_synchronously() -> None:
    pipeline = Pipeline(Retry(max_attempts=3, base_delay=0.001), CircuitBreaker("sync"))
    attempts: list[int] = []

    @pipeline
    def parse(text: str) -> int:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("transient")
        return int(text)

    assert parse("42") == 42
    assert len(attempts) == 2
    assert pipeline.call_sync(int, "7") == 7


async def test_timeout_innermost_turns_a_hung_attempt_into_a_counted_failure() -> None:
    clock = ManualClock(auto_advance=False)
    breaker = CircuitBreaker("svc", minimum_calls=5, clock=clock)
    pipeline = Pipeline(breaker, Timeout(1.0, clock=clock))
    hang = asyncio.Event()

    async def hung() -> None:
        await hang.wait()

    call = asyncio.create_task(pipeline.call(hung))
    await asyncio.sleep(0)
    clock.advance(1.5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, 1)
    assert breaker.metrics.failures == 1


def test_nested_pipelines_are_flattened() -> None:
    inner = Pipeline(Retry(), CircuitBreaker("a"))
    outer = Pipeline(Timeout(1.0), inner)
    assert [type(p).__name__ for p in outer.policies] == ["Timeout", "Retry", "CircuitBreaker"]


def test_from_dict_places_stages_in_the_recommended_order() -> None:
    pipeline = Pipeline.from_dict(
        {
            "bulkhead": {"max_concurrent": 5},
            "timeout": 2.0,
            "circuit_breaker": {"failure_rate_threshold": 0.25},
            "retry": {"max_attempts": 4},
            "total_timeout": {"seconds": 10},
        },
        name="payments",
    )
    kinds = [type(p).__name__ for p in pipeline.policies]
    assert kinds == ["Timeout", "Retry", "CircuitBreaker", "Bulkhead", "Timeout"]


def test_from_list_keeps_the_given_order() -> None:
    pipeline = Pipeline.from_dict([{"bulkhead": 3}, {"retry": {}}])
    assert [type(p).__name__ for p in pipeline.policies] == ["Bulkhead", "Retry"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"retyr": {}}, "retyr"),
        ({"retry": {"max_attemps": 3}}, "retry.max_attemps"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        (
            {"circuit_breaker": {"failure_rate_threshold": 1.5}},
            "circuit_breaker.failure_rate_threshold",
        ),
        ({"timeout": -1}, "timeout.seconds"),
        ({"bulkhead": "lots"}, "bulkhead"),
        ({"rate_limiter": {"kind": "leaky"}}, "rate_limiter.kind"),
        ([{"retry": {}, "timeout": 1}], "[0]"),
    ],
)
def test_bad_config_names_the_key(config: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(config)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_non_policy_stage_is_rejected() -> None:
    with pytest.raises(ConfigError, match="policies\\[1\\]"):
        Pipeline(Retry(), "breaker")  # type: ignore[arg-type]


# -- the stages built once ----------------------------------------------------------------


async def test_decorated_four_stage_pipeline_passes_arguments_to_the_innermost_call() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("svc", minimum_calls=10, clock=clock)
    bulkhead = Bulkhead("svc", 2, clock=clock)
    flaky = Flaky(failures=1)
    pipeline = Pipeline(
        Timeout(5.0), Retry(max_attempts=2, base_delay=0.01, clock=clock), breaker, bulkhead
    )

    @pipeline
    async def fetch(value: int, *, scale: int = 1) -> int:
        return await flaky(value) * scale

    assert await fetch(2, scale=3) == 60
    assert flaky.calls == 2
    assert (breaker.metrics.calls, breaker.metrics.failures) == (2, 1)
    assert bulkhead.metrics.active == 0


async def test_system_clock_timeout_inside_retry_bounds_each_attempt() -> None:
    attempts: list[int] = []

    async def hangs_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.Event().wait()
        return "second attempt"

    pipeline = Pipeline(Retry(max_attempts=2, base_delay=0.0), Timeout(0.002))
    assert await pipeline.call(hangs_once) == "second attempt"
    assert await pipeline(hangs_once)() == "second attempt"
    assert len(attempts) == 3


async def test_retry_with_a_budget_still_draws_from_it_inside_a_pipeline() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0, clock=clock)
    flaky = Flaky(failures=1)
    pipeline = Pipeline(Retry(max_attempts=3, base_delay=0.01, budget=budget, clock=clock))
    with pytest.raises(ConnectionError):
        await pipeline(flaky)()
    assert flaky.calls == 1  # no retry: the budget had nothing to give
