"""Sliding-window health metrics for the circuit breaker (Resilience4j style).

Two windows with the same interface:

* :class:`TimeWindow` — the outcomes of the last ``seconds`` seconds, kept in a ring of
  roughly one-second buckets;
* :class:`CountWindow` — the last ``size`` outcomes, kept in a ring buffer.

Both keep running totals and subtract whatever leaves the window, so reading the totals or
taking a :class:`WindowSnapshot` is O(1). Time is passed in by the caller (no clock reads
here), which keeps the windows pure, cheap and trivially testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from shipyard.core import validation

_FAILED = 1
_SLOW = 2

MAX_BUCKETS = 120
"""Upper bound on a time window's buckets: long windows get wider buckets, not more."""


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """Totals over a window at one instant."""

    calls: int
    failures: int
    slow_calls: int

    @property
    def failure_rate(self) -> float:
        """Failed calls / calls, in [0, 1]; 0.0 when the window is empty."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Slow calls / calls, in [0, 1]; 0.0 when the window is empty."""
        return self.slow_calls / self.calls if self.calls else 0.0


class HealthWindow(Protocol):
    """What the breaker needs from a window. ``calls``/``failures``/``slow_calls`` are the
    running totals as of the last ``record`` or ``snapshot``."""

    calls: int
    failures: int
    slow_calls: int

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one outcome observed at ``now``."""

    def record_success(self, now: float) -> int:
        """Add one fast successful call; returns ``failures + slow_calls`` afterwards (zero
        means no threshold can have been crossed, so the caller may skip the check)."""

    def snapshot(self, now: float) -> WindowSnapshot:
        """Totals over the window ending at ``now``."""

    def reset(self) -> None:
        """Forget every outcome."""


class TimeWindow:
    """Outcomes of the last ``seconds`` seconds, in ``buckets`` equal buckets.

    By default a bucket spans about one second (at most :data:`MAX_BUCKETS` buckets). As
    in Resilience4j the window moves a bucket at a time, so an outcome ages out between
    ``seconds - bucket width`` and ``seconds`` after it was recorded.
    """

    __slots__ = (
        "_bucket_calls",
        "_bucket_end",
        "_bucket_failures",
        "_bucket_slow",
        "_epoch",
        "_index",
        "_size",
        "calls",
        "failures",
        "seconds",
        "slow_calls",
        "width",
    )

    def __init__(self, seconds: float, *, buckets: int | None = None) -> None:
        self.seconds = validation.positive("window", seconds)
        if buckets is None:
            buckets = min(max(1, math.ceil(self.seconds)), MAX_BUCKETS)
        self._size = validation.at_least("buckets", buckets, 1)
        self.width = self.seconds / self._size
        self._bucket_calls = [0] * self._size
        self._bucket_failures = [0] * self._size
        self._bucket_slow = [0] * self._size
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0
        self._epoch = 0
        self._index = 0
        # -inf forces the first record to roll, which also clears everything.
        self._bucket_end = -math.inf

    def _roll(self, now: float) -> None:
        """Move the head bucket to the one holding ``now``, evicting the buckets passed."""
        epoch = math.floor(now / self.width)
        steps = epoch - self._epoch
        size = self._size
        if steps >= size or self._bucket_end == -math.inf:
            self.reset()
        elif steps > 0:
            calls, failures, slow = self._bucket_calls, self._bucket_failures, self._bucket_slow
            for step in range(1, steps + 1):
                i = (self._epoch + step) % size
                self.calls -= calls[i]
                self.failures -= failures[i]
                self.slow_calls -= slow[i]
                calls[i] = failures[i] = slow[i] = 0
        else:
            # Rounding put ``now`` on the old bucket's edge: stay in the current bucket.
            epoch = self._epoch
        self._epoch = epoch
        self._index = epoch % size
        self._bucket_end = (epoch + 1) * self.width

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one outcome observed at ``now`` (a time earlier than the newest bucket goes
        into the newest bucket: threads may read the clock slightly out of order)."""
        if now >= self._bucket_end:
            self._roll(now)
        i = self._index
        self._bucket_calls[i] += 1
        self.calls += 1
        if failed:
            self._bucket_failures[i] += 1
            self.failures += 1
        if slow:
            self._bucket_slow[i] += 1
            self.slow_calls += 1

    def record_success(self, now: float) -> int:
        """Add one successful, not slow call; returns ``failures + slow_calls``."""
        if now >= self._bucket_end:
            self._roll(now)
        self._bucket_calls[self._index] += 1
        self.calls += 1
        return self.failures + self.slow_calls

    def snapshot(self, now: float) -> WindowSnapshot:
        """Totals over the window ending at ``now``."""
        if now >= self._bucket_end:
            self._roll(now)
        return WindowSnapshot(self.calls, self.failures, self.slow_calls)

    def reset(self) -> None:
        """Forget every outcome."""
        size = self._size
        self._bucket_calls[:] = [0] * size
        self._bucket_failures[:] = [0] * size
        self._bucket_slow[:] = [0] * size
        self.calls = self.failures = self.slow_calls = 0


class CountWindow:
    """The last ``size`` outcomes, in a ring buffer; time is ignored."""

    __slots__ = ("_outcomes", "_position", "calls", "failures", "size", "slow_calls")

    def __init__(self, size: int) -> None:
        self.size = validation.at_least("window", size, 1)
        # One small int per outcome: bit 0 failed, bit 1 slow; 0 also marks an empty slot,
        # which is safe because evicting a plain success subtracts nothing.
        self._outcomes = [0] * size
        self._position = 0
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one outcome, evicting the oldest once the buffer is full."""
        position = self._position
        evicted = self._outcomes[position]
        if evicted:
            if evicted & _FAILED:
                self.failures -= 1
            if evicted & _SLOW:
                self.slow_calls -= 1
        code = 0
        if failed:
            code = _FAILED
            self.failures += 1
        if slow:
            code |= _SLOW
            self.slow_calls += 1
        self._outcomes[position] = code
        self._position = position + 1 if position + 1 < self.size else 0
        if self.calls < self.size:
            self.calls += 1

    def record_success(self, now: float) -> int:
        """Add one successful, not slow call; returns ``failures + slow_calls``."""
        position = self._position
        evicted = self._outcomes[position]
        if evicted:
            self._outcomes[position] = 0
            if evicted & _FAILED:
                self.failures -= 1
            if evicted & _SLOW:
                self.slow_calls -= 1
        self._position = position + 1 if position + 1 < self.size else 0
        if self.calls < self.size:
            self.calls += 1
        return self.failures + self.slow_calls

    def snapshot(self, now: float) -> WindowSnapshot:
        """Totals over the last ``size`` outcomes."""
        return WindowSnapshot(self.calls, self.failures, self.slow_calls)

    def reset(self) -> None:
        """Forget every outcome."""
        self._outcomes[:] = [0] * self.size
        self._position = 0
        self.calls = self.failures = self.slow_calls = 0
