"""A timeout cancels a call that runs too long, and never swallows the caller's cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shipyard import ConfigError, ManualClock, ShipyardError
from shipyard.resilience.errors import CallTimeoutError
from shipyard.resilience.timeout import Timeout


class Hung:
    """An async call that waits until released, remembering whether it was cancelled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> str:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "done"


async def test_call_timeout_error_is_a_timeout_error_and_a_shipyard_error() -> None:
    error = CallTimeoutError(1.5)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, ShipyardError)
    assert "1.5s" in str(error)


async def test_expired_call_is_cancelled_and_raises_call_timeout_error() -> None:
    clock = ManualClock(auto_advance=False)
    timeout = Timeout(2.0, clock=clock)
    hung = Hung()
    task = asyncio.create_task(timeout.call(hung))
    await hung.started.wait()
    clock.advance(1.9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.1)
    with pytest.raises(CallTimeoutError) as info:
        await task
    assert hung.cancelled
    assert info.value.seconds == 2.0


async def test_call_finishing_in_time_returns_its_result_and_leaves_no_timer() -> None:
    clock = ManualClock(auto_advance=False)
    timeout = Timeout(2.0, clock=clock)
    hung = Hung()
    task = asyncio.create_task(timeout.call(hung))
    await hung.started.wait()
    hung.release.set()
    assert await task == "done"
    clock.advance(10)  # the cancelled timer must not cancel anything now
    assert not hung.cancelled
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_caller_cancellation_propagates_as_cancelled_error() -> None:
    clock = ManualClock(auto_advance=False)
    hung = Hung()
    task = asyncio.create_task(Timeout(2.0, clock=clock).call(hung))
    await hung.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hung.cancelled


async def test_caller_cancellation_wins_even_when_the_deadline_passes_at_the_same_time() -> None:
    clock = ManualClock(auto_advance=False)
    hung = Hung()
    task = asyncio.create_task(Timeout(1.0, clock=clock).call(hung))
    await hung.started.wait()
    clock.advance(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_error_raised_by_the_call_itself_passes_through_unchanged() -> None:
    async def fails() -> None:
        raise TimeoutError("upstream said so")

    for timeout in (Timeout(5.0), Timeout(5.0, clock=ManualClock())):
        with pytest.raises(TimeoutError, match="upstream said so") as info:
            await timeout.call(fails)
        assert not isinstance(info.value, CallTimeoutError)


async def test_system_clock_timeout_uses_the_loop_timer() -> None:
    hung = Hung()
    with pytest.raises(CallTimeoutError):
        await Timeout(0.001).call(hung)
    assert hung.cancelled


async def test_system_clock_timeout_passes_fast_calls_through() -> None:
    @Timeout(5.0)
    async def add(a: int, b: int) -> int:
        return a + b

    assert asyncio.iscoroutinefunction(add)
    assert await add(2, 3) == 5


async def test_sync_function_awaited_through_call_runs_in_a_worker_thread() -> None:
    gate = threading.Event()
    threads: list[str] = []

    def blocking() -> str:
        threads.append(threading.current_thread().name)
        gate.wait(5)
        return "late"

    with pytest.raises(CallTimeoutError):
        await Timeout(0.005).call(blocking)
    gate.set()  # the abandoned thread finishes in the background
    assert threads
    assert threads[0] != threading.current_thread().name


async def test_sync_function_that_returns_in_time_gives_its_result() -> None:
    assert await Timeout(5.0).call(sum, [1, 2, 3]) == 6


def test_decorated_sync_function_stays_sync_and_times_out_on_the_clock() -> None:
    clock = ManualClock()
    gate = threading.Event()

    @Timeout(3.0, clock=clock)
    def slow() -> str:
        clock.advance(3.0)  # time passes while the work is running
        gate.wait(5)
        return "too late"

    with pytest.raises(CallTimeoutError):
        slow()
    gate.set()


def test_sync_call_returns_result_and_reraises_errors() -> None:
    timeout = Timeout(5.0)
    assert timeout.call_sync(int, "42") == 42
    with pytest.raises(ValueError, match="invalid literal"):
        timeout.call_sync(int, "x")
    clocked = Timeout(5.0, clock=ManualClock())
    assert clocked.call_sync(int, "7") == 7


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), "1"])
def test_bad_seconds_raise_config_error(seconds: object) -> None:
    with pytest.raises(ConfigError) as info:
        Timeout(seconds)  # type: ignore[arg-type]
    assert info.value.field == "seconds"
