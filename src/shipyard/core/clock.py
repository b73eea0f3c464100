"""Injectable time: every breaker, retry, TTL and saga timer reads time from a ``Clock``.

``SystemClock`` uses the running event loop; ``ManualClock`` is moved by hand (or skips ahead
on every sleep), so time-dependent behaviour is tested without sleeping on the wall clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Stop the callback from running (no-op if it already ran)."""


@runtime_checkable
class Clock(Protocol):
    """Monotonic time, wall time, sleeping and timers."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for durations)."""

    def now(self) -> float:
        """Seconds since the Unix epoch (for persisted timestamps and TTLs)."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""

    def sleep_blocking(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (for synchronous callers)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once after ``delay`` seconds."""


class SystemClock:
    """The real clock: ``time.monotonic`` and the running asyncio loop's timers."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Seconds on the process's monotonic clock."""
        return time.monotonic()

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(seconds)

    def sleep_blocking(self, seconds: float) -> None:
        """``time.sleep``."""
        time.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback)


SYSTEM_CLOCK = SystemClock()
"""The shared real clock; the default wherever a ``clock=`` parameter is omitted."""


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when told to — for tests.

    ``advance(seconds)`` moves time forward and fires due timers in order. With
    ``auto_advance=True`` (the default) ``sleep`` skips ahead itself, so code that sleeps
    (retry backoff, for instance) runs instantly; with ``auto_advance=False`` a sleeping task
    waits until the test calls ``advance``.
    """

    def __init__(
        self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0, auto_advance: bool = True
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self.auto_advance = auto_advance
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._sequence = itertools.count()
        self.slept: list[float] = []
        """Every duration passed to ``sleep``, in order (handy for asserting backoff)."""

    def monotonic(self) -> float:
        """The manual time."""
        return self._now

    def now(self) -> float:
        """Wall time that moves with the manual time."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and run every timer that became due."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, deadline)
            if not timer.cancelled:
                timer.callback()
        self._now = target

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` at ``now + delay`` manual seconds."""
        timer = _ManualTimer(self._now + max(delay, 0.0), callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._sequence), timer))
        return timer

    def sleep_blocking(self, seconds: float) -> None:
        """Record the sleep and skip ahead at once (a blocking wait could never be advanced)."""
        self.slept.append(seconds)
        self.advance(max(seconds, 0.0))

    async def sleep(self, seconds: float) -> None:
        """Skip ahead (auto-advance) or wait for ``advance`` to pass the deadline."""
        self.slept.append(seconds)
        if self.auto_advance:
            self.advance(max(seconds, 0.0))
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        handle = self.call_later(seconds, wake)
        try:
            await future
        finally:
            handle.cancel()
