"""Random sequences of outcomes and time steps keep the breaker in step with a reference model.

The model is deliberately naive (it keeps every outcome in a list and recounts), so it is
easy to trust; the breaker must agree with it on the state after every step, never call
through while open, never hold more calls than its window, and report rates in [0, 1].
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shipyard import ManualClock
from shipyard.resilience.breaker import CircuitBreaker
from shipyard.resilience.errors import CircuitOpenError

THRESHOLD = 0.5
MINIMUM_CALLS = 3
WINDOW = 5  # seconds (one-second buckets) or calls
RESET_TIMEOUT = 10.0
TRIALS = 2
SLOW_TAKES = 2.0


class Ignored(Exception):
    """An error the breaker is configured to ignore."""


class Failed(Exception):
    """An error the breaker records as a failure."""


@dataclass
class Model:
    """What the breaker should do, computed the slow and obvious way."""

    window_type: str
    slow_limit: float | None
    state: str = "closed"
    open_until: float = 0.0
    outcomes: list[tuple[float, bool, bool]] = field(default_factory=list)
    trials: list[tuple[bool, bool]] = field(default_factory=list)

    def observe(self, now: float) -> str:
        if self.state == "open" and now >= self.open_until:
            self.state = "half_open"
            self.trials = []
        return self.state

    def in_window(self, now: float) -> list[tuple[float, bool, bool]]:
        if self.window_type == "count":
            return self.outcomes[-WINDOW:]
        return [o for o in self.outcomes if math.floor(now) - math.floor(o[0]) < WINDOW]

    def permits(self, now: float) -> bool:
        return self.observe(now) == "closed" or (
            self.state == "half_open" and len(self.trials) < TRIALS
        )

    def complete(self, now: float, failed: bool, duration: float) -> None:
        slow = self.slow_limit is not None and duration >= self.slow_limit
        if self.state == "closed":
            self.outcomes.append((now, failed, slow))
            window = self.in_window(now)
            if len(window) >= MINIMUM_CALLS and self.unhealthy([(f, s) for _, f, s in window]):
                self.open(now)
        elif self.state == "half_open":
            self.trials.append((failed, slow))
            if len(self.trials) == TRIALS:
                if self.unhealthy(self.trials):
                    self.open(now)
                else:
                    self.state = "closed"
                    self.outcomes = []

    @staticmethod
    def unhealthy(outcomes: list[tuple[bool, bool]]) -> bool:
        failures = sum(f for f, _ in outcomes)
        slow = sum(s for _, s in outcomes)
        return failures / len(outcomes) >= THRESHOLD or slow / len(outcomes) >= THRESHOLD

    def open(self, now: float) -> None:
        self.state = "open"
        self.open_until = now + RESET_TIMEOUT


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.loop = asyncio.new_event_loop()
        self.upstream_calls = 0

    @initialize(
        window_type=st.sampled_from(["time", "count"]),
        slow_limit=st.sampled_from([None, SLOW_TAKES]),
    )
    def build(self, window_type: str, slow_limit: float | None) -> None:
        self.model = Model(window_type, slow_limit)
        self.breaker = CircuitBreaker(
            "model",
            failure_rate_threshold=THRESHOLD,
            slow_call_rate_threshold=THRESHOLD,
            slow_call_duration=slow_limit,
            minimum_calls=MINIMUM_CALLS,
            window=WINDOW,
            window_type=window_type,  # type: ignore[arg-type]
            reset_timeout=RESET_TIMEOUT,
            half_open_max_calls=TRIALS,
            ignore=Ignored,
            clock=self.clock,
        )
        self.decorated = self.breaker(self.upstream_async)

    def upstream(self, outcome: str) -> str:
        self.upstream_calls += 1
        if outcome == "slow":
            self.clock.advance(SLOW_TAKES)
        if outcome == "failure":
            raise Failed
        if outcome == "ignored":
            raise Ignored
        return "ok"

    async def upstream_async(self, outcome: str) -> str:
        return self.upstream(outcome)

    def invoke(self, via: str, outcome: str) -> None:
        if via == "sync":
            self.breaker.call_sync(self.upstream, outcome)
        elif via == "call":
            self.loop.run_until_complete(self.breaker.call(self.upstream_async, outcome))
        else:
            self.loop.run_until_complete(self.decorated(outcome))

    @rule(
        outcome=st.sampled_from(["success", "failure", "slow", "ignored"]),
        via=st.sampled_from(["sync", "call", "decorated"]),
    )
    def call(self, outcome: str, via: str) -> None:
        start = self.clock.monotonic()
        permitted = self.model.permits(start)
        before = self.upstream_calls
        try:
            self.invoke(via, outcome)
        except CircuitOpenError:
            assert not permitted, "rejected a call the model permits"
            assert self.upstream_calls == before, "called through while open"
            return
        except (Failed, Ignored):
            pass
        assert permitted, f"called through while {self.model.state}"
        if outcome != "ignored":
            now = self.clock.monotonic()
            self.model.complete(now, outcome == "failure", now - start)

    @rule(seconds=st.sampled_from([0.25, 1.0, 3.0, 7.0, 12.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def state_matches_model(self) -> None:
        if hasattr(self, "model"):
            expected = self.model.observe(self.clock.monotonic())
            assert self.breaker.state == expected

    @invariant()
    def metrics_stay_in_bounds(self) -> None:
        if not hasattr(self, "model"):
            return
        metrics = self.breaker.metrics
        assert 0.0 <= metrics.failure_rate <= 1.0
        assert 0.0 <= metrics.slow_call_rate <= 1.0
        assert 0 <= metrics.failures <= metrics.calls
        assert 0 <= metrics.slow_calls <= metrics.calls
        if self.model.window_type == "count":
            assert metrics.calls <= WINDOW
        if self.model.state == "closed":
            assert metrics.calls == len(self.model.in_window(self.clock.monotonic()))

    def teardown(self) -> None:
        self.loop.close()


BreakerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_breaker_follows_the_reference_model = BreakerMachine.TestCase
