"""``RetryBudget``: a cap on retries shared by many callers, so a fleet cannot storm.

Finagle's and Envoy's answer to retry amplification: when a dependency is down, every
caller retrying ``max_attempts`` times multiplies the load on it exactly when it can least
take it. A budget allows a steady trickle (``min_retries_per_second``) plus a fraction
(``ratio``) of recent traffic; once spent, retries stop and callers fail fast.

Counts live in time buckets with running totals (Resilience4j's sliding time window), so
``deposit`` and ``try_withdraw`` are O(1) whatever the traffic.
"""

from __future__ import annotations

import math
import threading

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError

_BUCKETS = 10
"""Window resolution: a bucket ages out every ``window / 10`` seconds."""


class RetryBudget:
    """Retries allowed in the last ``window`` seconds:
    ``min_retries_per_second * window + ratio * calls`` (minus retries already made).

    Share one budget between every ``Retry`` that calls the same dependency. Each first
    attempt ``deposit()``s; each retry must ``try_withdraw()`` first. Thread-safe.
    """

    __slots__ = (
        "_bucket_width",
        "_clock",
        "_current",
        "_deposits",
        "_lock",
        "_total_deposits",
        "_total_withdrawals",
        "_withdrawals",
        "min_retries_per_second",
        "ratio",
        "reserve",
        "window",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        number = validation.non_negative("ratio", ratio)
        if number > 1:
            raise ConfigError("ratio", ratio, "must be in [0, 1], e.g. 0.2 for 20% of calls")
        self.ratio = number
        self.min_retries_per_second = validation.non_negative(
            "min_retries_per_second", min_retries_per_second
        )
        self.window = validation.positive("window", window)
        self.reserve = self.min_retries_per_second * self.window
        """Retries always allowed per window, however little traffic there is."""
        self._clock = clock
        self._bucket_width = self.window / _BUCKETS
        self._deposits = [0] * _BUCKETS
        self._withdrawals = [0] * _BUCKETS
        self._total_deposits = 0
        self._total_withdrawals = 0
        self._current = math.floor(clock.monotonic() / self._bucket_width)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio}, min_retries_per_second="
            f"{self.min_retries_per_second}, window={self.window})"
        )

    def _roll(self) -> int:
        """Evict buckets that left the window; return the current bucket's slot."""
        now = math.floor(self._clock.monotonic() / self._bucket_width)
        if now > self._current:
            # At most _BUCKETS slots are cleared, however long the idle gap: O(1).
            for tick in range(self._current + 1, min(now, self._current + _BUCKETS) + 1):
                slot = tick % _BUCKETS
                self._total_deposits -= self._deposits[slot]
                self._total_withdrawals -= self._withdrawals[slot]
                self._deposits[slot] = 0
                self._withdrawals[slot] = 0
            self._current = now
        return self._current % _BUCKETS

    def deposit(self) -> None:
        """Record one first attempt (each call earns ``ratio`` of a retry)."""
        with self._lock:
            slot = self._roll()
            self._deposits[slot] += 1
            self._total_deposits += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent."""
        with self._lock:
            slot = self._roll()
            # The epsilon keeps float noise (0.3 * 10 == 2.9999...) from denying a whole retry.
            balance = self.reserve + self.ratio * self._total_deposits - self._total_withdrawals
            if balance < 1 - 1e-9:
                return False
            self._withdrawals[slot] += 1
            self._total_withdrawals += 1
            return True

    @property
    def available(self) -> float:
        """Retries the budget would currently allow (may be fractional)."""
        with self._lock:
            self._roll()
            return max(
                0.0, self.reserve + self.ratio * self._total_deposits - self._total_withdrawals
            )
