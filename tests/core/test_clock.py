"""The manual clock lets time-dependent code run without wall-clock sleeps."""

from __future__ import annotations

import asyncio

import pytest

from shipyard import ManualClock, SystemClock


def test_advance_fires_due_timers_in_deadline_order() -> None:
    clock = ManualClock()
    fired: list[str] = []
    clock.call_later(2.0, lambda: fired.append("b"))
    clock.call_later(1.0, lambda: fired.append("a"))
    clock.call_later(5.0, lambda: fired.append("late"))
    clock.advance(3.0)
    assert fired == ["a", "b"]
    assert clock.monotonic() == 3.0


def test_cancelled_timer_does_not_fire() -> None:
    clock = ManualClock()
    fired: list[int] = []
    handle = clock.call_later(1.0, lambda: fired.append(1))
    handle.cancel()
    clock.advance(2.0)
    assert fired == []


def test_clock_refuses_to_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)


def test_wall_time_moves_with_manual_time() -> None:
    clock = ManualClock(wall_start=1000.0)
    clock.advance(5)
    assert clock.now() == 1005.0


async def test_auto_advance_sleep_skips_ahead_and_records_duration() -> None:
    clock = ManualClock()
    await clock.sleep(10)
    await clock.sleep(0.5)
    assert clock.monotonic() == 10.5
    assert clock.slept == [10, 0.5]


async def test_sleep_without_auto_advance_waits_for_advance() -> None:
    clock = ManualClock(auto_advance=False)
    sleeper = asyncio.create_task(clock.sleep(1.0))
    await asyncio.sleep(0)
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(0.5)
    await asyncio.wait_for(sleeper, 1)


async def test_system_clock_timer_runs_on_the_loop() -> None:
    clock = SystemClock()
    ran = asyncio.Event()
    clock.call_later(0.001, ran.set)
    await asyncio.wait_for(ran.wait(), 1)
    assert clock.now() > 1_600_000_000
