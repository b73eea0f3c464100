"""Upstream deadlines: bucketed per millisecond, never early, forgotten once met."""

from __future__ import annotations

import asyncio

from shipyard.gateway.deadlines import Deadlines


class Request:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = loop.time()
        self.expired_after: float | None = None
        self.seconds: float | None = None

    def expire(self, seconds: float) -> None:
        self.expired_after = self.loop.time() - self.started
        self.seconds = seconds


async def test_a_deadline_fires_once_it_has_passed_and_never_before() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    requests = [Request(loop) for _ in range(3)]
    for request in requests:
        deadlines.add(request, 0.02)
    await asyncio.sleep(0.1)
    for request in requests:
        assert request.seconds == 0.02
        assert request.expired_after is not None
        assert request.expired_after >= 0.02
    assert len(deadlines) == 0


async def test_a_deadline_that_was_met_does_not_fire() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    met, missed = Request(loop), Request(loop)
    tick = deadlines.add(met, 0.02)
    deadlines.add(missed, 0.02)
    deadlines.remove(met, tick)
    assert len(deadlines) == 1
    await asyncio.sleep(0.1)
    assert met.expired_after is None
    assert missed.expired_after is not None
