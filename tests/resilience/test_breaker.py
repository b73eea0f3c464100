"""The circuit breaker opens on failures, fails fast while open, probes, and recovers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading

import pytest

from shipyard import ConfigError, ManualClock, ShipyardError
from shipyard.resilience.breaker import (
    BreakerEvent,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
)
from shipyard.resilience.errors import CallTimeoutError, CircuitOpenError


class Upstream:
    """A dependency whose next answers the test decides; counts how often it is called."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.calls = 0
        self.error: BaseException | None = None
        self.takes = 0.0
        self.clock = clock

    async def __call__(self) -> str:
        return self.answer()

    def answer(self) -> str:
        self.calls += 1
        if self.clock is not None and self.takes:
            self.clock.advance(self.takes)
        if self.error is not None:
            raise self.error
        return "ok"


async def fail(breaker: CircuitBreaker, upstream: Upstream, times: int = 1) -> None:
    upstream.error = ConnectionError("refused")
    for _ in range(times):
        with pytest.raises(ConnectionError):
            await breaker.call(upstream)
    upstream.error = None


async def succeed(breaker: CircuitBreaker, upstream: Upstream, times: int = 1) -> None:
    for _ in range(times):
        assert await breaker.call(upstream) == "ok"


def make(clock: ManualClock, **options: object) -> CircuitBreaker:
    settings: dict[str, object] = {"minimum_calls": 4, "reset_timeout": 30.0, "clock": clock}
    settings.update(options)
    return CircuitBreaker("payments", **settings)  # type: ignore[arg-type]


# -- closed → open ------------------------------------------------------------------------


async def test_breaker_starts_closed_and_passes_calls() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    await succeed(breaker, upstream, 3)
    assert breaker.state == "closed"
    assert breaker.state is BreakerState.CLOSED
    assert upstream.calls == 3


async def test_breaker_opens_when_failure_rate_reaches_threshold() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, failure_rate_threshold=0.5), Upstream()
    await succeed(breaker, upstream, 2)
    await fail(breaker, upstream, 1)
    assert breaker.state == "closed"
    await fail(breaker, upstream, 1)  # 2 of 4 failed = 50%
    assert breaker.state == "open"


async def test_breaker_stays_closed_below_minimum_calls_even_if_all_fail() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, minimum_calls=5), Upstream()
    await fail(breaker, upstream, 4)
    assert breaker.state == "closed"
    await fail(breaker, upstream, 1)
    assert breaker.state == "open"


async def test_a_success_that_completes_minimum_calls_can_open_the_breaker() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, minimum_calls=4, failure_rate_threshold=0.5), Upstream()
    await fail(breaker, upstream, 2)
    await succeed(breaker, upstream, 1)
    assert breaker.state == "closed"
    await succeed(breaker, upstream, 1)  # 4 calls, 2 failed
    assert breaker.state == "open"


async def test_old_failures_age_out_of_the_time_window() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, window=10.0), Upstream()
    await fail(breaker, upstream, 3)
    clock.advance(11.0)
    await fail(breaker, upstream, 1)
    assert breaker.state == "closed"
    assert breaker.metrics.calls == 1


async def test_count_window_judges_the_last_n_calls() -> None:
    clock = ManualClock()
    breaker = make(clock, window_type="count", window=4, minimum_calls=4)
    upstream = Upstream()
    await fail(breaker, upstream, 1)
    await succeed(breaker, upstream, 4)  # the failure is pushed out
    assert breaker.metrics.failures == 0
    await fail(breaker, upstream, 1)
    await succeed(breaker, upstream, 1)
    await fail(breaker, upstream, 1)
    assert breaker.state == "open"
    assert breaker.metrics.calls == 4


async def test_slow_calls_open_the_breaker_even_when_they_succeed() -> None:
    clock = ManualClock()
    breaker = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=0.5)
    upstream = Upstream(clock)
    await succeed(breaker, upstream, 2)
    upstream.takes = 1.0  # exactly the limit counts as slow
    await succeed(breaker, upstream, 1)
    assert breaker.state == "closed"
    await succeed(breaker, upstream, 1)
    assert breaker.state == "open"
    metrics = breaker.metrics
    assert (metrics.slow_calls, metrics.failures, metrics.slow_call_rate) == (2, 0, 0.5)


# -- open -------------------------------------------------------------------------------


async def test_open_breaker_rejects_without_calling() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    await fail(breaker, upstream, 4)
    calls = upstream.calls
    clock.advance(12.5)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(upstream)
    assert upstream.calls == calls
    assert info.value.remaining == pytest.approx(17.5)
    assert info.value.retry_after == pytest.approx(17.5)
    assert info.value.state == "open"
    assert info.value.breaker == "payments"
    assert breaker.metrics.rejected == 1


def test_circuit_open_error_is_a_runtime_error_and_a_shipyard_error() -> None:
    error = CircuitOpenError("payments", "open", 3.0)
    assert isinstance(error, RuntimeError)
    assert isinstance(error, ShipyardError)
    assert "payments" in str(error)


async def test_open_breaker_becomes_half_open_after_reset_timeout() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, reset_timeout=30.0), Upstream()
    await fail(breaker, upstream, 4)
    clock.advance(29.9)
    assert breaker.state == "open"
    clock.advance(0.1)
    assert breaker.state == "half_open"


# -- half-open --------------------------------------------------------------------------


async def open_then_wait(breaker: CircuitBreaker, clock: ManualClock) -> None:
    await fail(breaker, Upstream(), breaker.minimum_calls)
    assert breaker.state == "open"
    clock.advance(breaker.reset_timeout)


async def test_healthy_trial_call_closes_the_breaker_with_a_fresh_window() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    await open_then_wait(breaker, clock)
    await succeed(breaker, upstream, 1)
    assert breaker.state == "closed"
    assert breaker.metrics.calls == 0


async def test_failed_trial_call_reopens_the_breaker_for_a_new_reset_timeout() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    await open_then_wait(breaker, clock)
    await fail(breaker, upstream, 1)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(upstream)
    assert info.value.remaining == pytest.approx(30.0)


async def test_half_open_decides_on_the_rate_of_all_trial_calls() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, half_open_max_calls=4, failure_rate_threshold=0.5), Upstream()
    await open_then_wait(breaker, clock)
    await fail(breaker, upstream, 1)
    await succeed(breaker, upstream, 2)
    assert breaker.state == "half_open"
    assert breaker.metrics.calls == 3
    await succeed(breaker, upstream, 1)  # 1 of 4 failed: 25% < 50%
    assert breaker.state == "closed"

    await open_then_wait(breaker, clock)
    await fail(breaker, upstream, 2)
    await succeed(breaker, upstream, 2)  # 2 of 4 failed: 50% reaches the threshold
    assert breaker.state == "open"


async def test_slow_trial_calls_reopen_the_breaker() -> None:
    clock = ManualClock()
    breaker = make(clock, slow_call_duration=2.0, slow_call_rate_threshold=1.0)
    upstream = Upstream(clock)
    await open_then_wait(breaker, clock)
    upstream.takes = 3.0
    await succeed(breaker, upstream, 1)
    assert breaker.state == "open"


async def test_half_open_admits_only_the_trial_limit_among_1000_concurrent_callers() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_max_calls=3)
    await open_then_wait(breaker, clock)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def trial() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return "ok"

    calls = [asyncio.create_task(breaker.call(trial)) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    passed = [r for r in results if r == "ok"]
    rejected = [r for r in results if isinstance(r, CircuitOpenError)]
    assert (len(passed), len(rejected), peak) == (3, 997, 3)
    assert all(r.remaining is None and r.state == "half_open" for r in rejected)
    assert breaker.state == "closed"
    assert breaker.metrics.rejected == 997


async def test_an_ignored_trial_outcome_frees_its_slot() -> None:
    clock = ManualClock()
    breaker = make(clock, ignore=KeyError)
    upstream = Upstream()
    await open_then_wait(breaker, clock)
    upstream.error = KeyError("not found")
    with pytest.raises(KeyError):
        await breaker.call(upstream)
    assert breaker.state == "half_open"
    upstream.error = None
    await succeed(breaker, upstream, 1)
    assert breaker.state == "closed"


async def test_a_cancelled_trial_call_frees_its_slot_and_is_not_a_failure() -> None:
    clock = ManualClock()
    breaker = make(clock)
    await open_then_wait(breaker, clock)
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hangs))
    await started.wait()
    with pytest.raises(CircuitOpenError):
        await breaker.call(Upstream())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half_open"
    await succeed(breaker, Upstream(), 1)
    assert breaker.state == "closed"


# -- manual states ----------------------------------------------------------------------


async def test_forced_open_rejects_everything_until_reset() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    breaker.force_open()
    clock.advance(1000)
    assert breaker.state == "forced_open"
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(upstream)
    assert info.value.remaining is None
    assert upstream.calls == 0
    breaker.reset()
    await succeed(breaker, upstream, 1)


async def test_disabled_breaker_passes_everything_and_records_nothing() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    breaker.disable()
    await fail(breaker, upstream, 20)
    assert breaker.state == "disabled"
    assert breaker.metrics.calls == 0
    assert upstream.calls == 20


async def test_reset_closes_and_clears_metrics() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock), Upstream()
    await fail(breaker, upstream, 4)
    with pytest.raises(CircuitOpenError):
        await breaker.call(upstream)
    breaker.reset()
    metrics = breaker.metrics
    assert (metrics.state, metrics.calls, metrics.failures, metrics.rejected) == (
        "closed",
        0,
        0,
        0,
    )


@pytest.mark.parametrize("via", ["call", "decorator"])
@pytest.mark.parametrize("fails", [True, False])
async def test_calls_started_before_a_transition_do_not_count_after_it(
    via: str, fails: bool
) -> None:
    clock = ManualClock()
    breaker = make(clock)
    gate = asyncio.Event()

    async def late_answer() -> None:
        await gate.wait()
        if fails:
            raise ConnectionError("late")

    guarded = breaker(late_answer)
    late = asyncio.create_task(breaker.call(late_answer) if via == "call" else guarded())
    await asyncio.sleep(0)
    breaker.reset()
    gate.set()
    with contextlib.suppress(ConnectionError):
        await late
    assert breaker.metrics.calls == 0


# -- exceptions -------------------------------------------------------------------------


async def test_ignored_exceptions_pass_through_uncounted() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, ignore=(KeyError, LookupError)), Upstream()
    upstream.error = KeyError("x")
    with pytest.raises(KeyError):
        await breaker.call(upstream)
    assert breaker.metrics.calls == 0


async def test_exceptions_not_recorded_count_as_successes() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, record=ConnectionError), Upstream()
    upstream.error = ValueError("bad input")
    for _ in range(4):
        with pytest.raises(ValueError, match="bad input"):
            await breaker.call(upstream)
    metrics = breaker.metrics
    assert (metrics.calls, metrics.failures, metrics.state) == (4, 0, "closed")


async def test_ignore_wins_over_record() -> None:
    clock = ManualClock()
    breaker = make(clock, record=OSError, ignore=ConnectionRefusedError)
    upstream = Upstream()
    upstream.error = ConnectionRefusedError()
    with pytest.raises(ConnectionRefusedError):
        await breaker.call(upstream)
    assert breaker.metrics.calls == 0


async def test_record_and_ignore_accept_predicates() -> None:
    clock = ManualClock()

    def server_error(exc: BaseException) -> bool:
        return getattr(exc, "status", 0) >= 500

    def not_found(exc: BaseException) -> bool:
        return getattr(exc, "status", 0) == 404

    class HttpError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(status)
            self.status = status

    breaker = make(clock, record=server_error, ignore=not_found)
    upstream = Upstream()
    for status in (503, 404, 400):
        upstream.error = HttpError(status)
        with pytest.raises(HttpError):
            await breaker.call(upstream)
    metrics = breaker.metrics
    assert (metrics.calls, metrics.failures) == (2, 1)


async def test_cancellation_is_never_a_failure() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=1)
    for _ in range(3):
        task = asyncio.create_task(breaker.call(asyncio.Event().wait))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert breaker.state == "closed"
    assert breaker.metrics.calls == 0


# -- timeout ----------------------------------------------------------------------------


async def test_timeout_cancels_the_call_counts_a_failure_and_emits_timeout() -> None:
    clock = ManualClock(auto_advance=False)
    breaker = make(clock, timeout=2.0, minimum_calls=1)
    kinds: list[str] = []
    breaker.events.subscribe(lambda event: kinds.append(event.kind))
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(breaker.call(hangs))
    await asyncio.sleep(0)
    clock.advance(2.0)
    with pytest.raises(CallTimeoutError):
        await task
    assert cancelled.is_set()
    assert kinds == ["timeout", "failure", "state_change"]
    assert breaker.state == "open"


async def test_the_breakers_own_timeout_counts_even_when_timeouts_are_ignored() -> None:
    clock = ManualClock(auto_advance=False)
    breaker = make(clock, timeout=1.0, ignore=TimeoutError)
    task = asyncio.create_task(breaker.call(asyncio.Event().wait))
    await asyncio.sleep(0)
    clock.advance(1.0)
    with pytest.raises(CallTimeoutError):
        await task
    assert breaker.metrics.failures == 1


async def test_timeout_lets_fast_calls_through() -> None:
    clock = ManualClock()
    breaker = make(clock, timeout=2.0)

    @breaker
    async def fast() -> int:
        return 7

    assert await fast() == 7
    assert await breaker.call(lambda: 8) == 8
    assert breaker.metrics.calls == 2


def test_timeout_applies_to_sync_calls_through_a_worker_thread() -> None:
    clock = ManualClock()
    breaker = make(clock, timeout=1.0, minimum_calls=1)
    gate = threading.Event()

    @breaker
    def hangs() -> None:
        clock.advance(1.0)
        gate.wait(5)

    with pytest.raises(CallTimeoutError):
        hangs()
    gate.set()
    assert breaker.state == "open"


# -- events and metrics -----------------------------------------------------------------


async def test_events_report_outcomes_rejections_and_state_changes() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=2, slow_call_duration=5.0)
    events: list[BreakerEvent] = []
    unsubscribe = breaker.events.subscribe(events.append)
    upstream = Upstream(clock)
    upstream.takes = 6.0
    await succeed(breaker, upstream, 1)
    upstream.takes = 0.0
    await fail(breaker, upstream, 1)
    with pytest.raises(CircuitOpenError):
        await breaker.call(upstream)
    assert [e.kind for e in events] == ["slow", "success", "failure", "state_change", "rejected"]
    assert events[0].duration == 6.0
    assert isinstance(events[2].error, ConnectionError)
    change = events[3]
    assert (change.breaker, change.from_state, change.to_state) == ("payments", "closed", "open")
    unsubscribe()
    breaker.reset()
    assert len(events) == 5


async def test_metrics_snapshot_rates_stay_between_zero_and_one() -> None:
    clock = ManualClock()
    breaker, upstream = make(clock, minimum_calls=100), Upstream()
    await succeed(breaker, upstream, 3)
    await fail(breaker, upstream, 1)
    metrics = breaker.metrics
    assert (metrics.calls, metrics.failures, metrics.failure_rate) == (4, 1, 0.25)
    assert metrics.slow_call_rate == 0.0
    with pytest.raises(AttributeError):
        metrics.calls = 0  # type: ignore[misc]


# -- decorator --------------------------------------------------------------------------


async def test_decorator_keeps_async_functions_async() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=2)

    @breaker
    async def fetch(item: int, *, scale: int = 1) -> int:
        if item < 0:
            raise ConnectionError("down")
        return item * scale

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert await fetch(3, scale=2) == 6
    with pytest.raises(ConnectionError):
        await fetch(-1)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await fetch(1)
    clock.advance(30)
    assert await fetch(2) == 2
    assert breaker.state == "closed"


def test_decorator_keeps_sync_functions_sync() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=2)

    @breaker
    def parse(text: str) -> int:
        return int(text)

    assert not inspect.iscoroutinefunction(parse)
    assert parse("4") == 4
    with pytest.raises(ValueError, match="invalid literal"):
        parse("x")
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        parse("5")


async def test_decorator_works_on_methods() -> None:
    breaker = CircuitBreaker("methods", clock=ManualClock())

    class Client:
        def __init__(self) -> None:
            self.base = 10

        @breaker
        async def get(self, n: int) -> int:
            return self.base + n

        @breaker
        def get_sync(self, n: int) -> int:
            return self.base - n

    client = Client()
    assert await client.get(1) == 11
    assert client.get_sync(1) == 9
    assert breaker.metrics.calls == 2


async def test_decorated_fast_path_counts_and_opens_like_the_generic_path() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=4, failure_rate_threshold=0.5)
    outcomes = iter([True, False, True, False])

    @breaker
    async def flaky() -> str:
        if next(outcomes):
            return "ok"
        raise ConnectionError("flaky")

    for _ in range(3):
        with contextlib.suppress(ConnectionError):
            await flaky()
    assert breaker.metrics.calls == 3
    with pytest.raises(ConnectionError):
        await flaky()
    assert breaker.state == "open"


async def test_sync_breaker_is_safe_across_threads() -> None:
    breaker = CircuitBreaker("threads", minimum_calls=10_000, clock=ManualClock())
    count = 200

    def hammer() -> None:
        for _ in range(count):
            breaker.call_sync(int, "1")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.metrics.calls == 4 * count


# -- registry ---------------------------------------------------------------------------


def test_registry_returns_the_same_named_breaker_with_shared_defaults() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(minimum_calls=3, reset_timeout=5.0, clock=clock)
    payments = registry.get("payments")
    assert registry.get("payments") is payments
    inventory = registry.get("inventory", minimum_calls=7)
    assert (payments.minimum_calls, payments.reset_timeout) == (3, 5.0)
    assert inventory.minimum_calls == 7
    assert registry.all() == (payments, inventory)
    assert "payments" in registry
    assert len(registry) == 2


@pytest.mark.parametrize(
    ("defaults", "field"),
    [
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"name": "x"}, "name"),
        ({"colour": "red"}, "defaults"),
    ],
)
def test_registry_validates_its_defaults(defaults: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BreakerRegistry(**defaults)
    assert info.value.field == field


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": 0}, "window"),
        ({"window": -1.0}, "window"),
        ({"window_type": "count", "window": 2.5}, "window"),
        ({"window_type": "sliding"}, "window_type"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_rate_threshold": 0}, "slow_call_rate_threshold"),
        ({"timeout": -1}, "timeout"),
        ({"reset_timeout": 0}, "reset_timeout"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"record": "ConnectionError"}, "record"),
        ({"ignore": (KeyError, 3)}, "ignore"),
        ({"record": int}, "record"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(
    options: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker("bad", **options)  # type: ignore[arg-type]
    assert info.value.field == field


def test_empty_name_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreaker("")
    assert info.value.field == "name"


def test_decorated_sync_fast_path_counts_opens_and_reports_to_listeners() -> None:
    clock = ManualClock()
    breaker = make(clock, minimum_calls=4, failure_rate_threshold=0.5)
    outcomes = iter([True, False, True, True, False, False])

    @breaker
    def flaky() -> str:
        if next(outcomes):
            return "ok"
        raise ConnectionError("flaky")

    for _ in range(4):
        with contextlib.suppress(ConnectionError):
            flaky()
    assert breaker.metrics.calls == 4
    assert breaker.state == "closed"  # 1 failure in 4
    events: list[BreakerEvent] = []
    breaker.events.subscribe(events.append)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            flaky()
    assert breaker.state == "open"
    assert [e.kind for e in events] == ["failure", "failure", "state_change"]
    with pytest.raises(CircuitOpenError):
        flaky()


def test_decorated_sync_breaker_is_safe_across_threads() -> None:
    breaker = CircuitBreaker("threads", minimum_calls=10_000, clock=ManualClock())
    count = 200
    parse = breaker(int)

    def hammer() -> None:
        for _ in range(count):
            parse("1")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.metrics.calls == 4 * count
