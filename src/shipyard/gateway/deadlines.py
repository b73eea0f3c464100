"""Deadlines of in-flight upstream requests: one loop timer per millisecond, not per request.

A ``loop.call_later`` per request, cancelled a moment later when the answer arrives, costs
about as much as parsing that answer. Here a deadline joins the bucket of its millisecond
tick (rounded UP, so it never fires early) and only the first deadline of a tick arms a
loop timer; an answered request just leaves its bucket. At any request rate that is at
most a thousand timers a second. The same idea as the resilience timeout's deadline
wheel (and Netty's ``HashedWheelTimer``), for objects rather than tasks: a deadline may
fire up to a millisecond (plus the loop's own latency) late.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

_TICKS_PER_SECOND = 1000.0


class Expiring(Protocol):
    """Something with a deadline: told when it has passed."""

    def expire(self, seconds: float) -> None:
        """The deadline set ``seconds`` ago has passed."""


class Deadlines:
    """Pending deadlines of one event loop, bucketed by millisecond tick."""

    __slots__ = ("_buckets", "_loop", "_time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._time = loop.time
        self._buckets: dict[int, dict[Expiring, float]] = {}

    def __len__(self) -> int:
        """Deadlines pending."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, item: Expiring, seconds: float) -> int:
        """Call ``item.expire(seconds)`` once ``seconds`` have passed, unless ``remove``
        is called first with the tick returned here."""
        tick = int((self._time() + seconds) * _TICKS_PER_SECOND) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            self._loop.call_at(tick / _TICKS_PER_SECOND, self._fire, tick)
        bucket[item] = seconds
        return tick

    def remove(self, item: Expiring, tick: int) -> None:
        """Forget ``item``'s deadline (it was met)."""
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.pop(item, None)

    def _fire(self, tick: int) -> None:
        bucket = self._buckets.pop(tick, None)
        if bucket:
            for item, seconds in list(bucket.items()):
                item.expire(seconds)
