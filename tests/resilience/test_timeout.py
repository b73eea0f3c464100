"""A timeout cancels a call that runs too long, and never swallows the caller's cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

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


# -- the system clock's shared deadline wheel ------------------------------------------------


def current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def test_system_clock_deadline_never_fires_early() -> None:
    hung = Hung()
    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        await Timeout(0.003).call(hung)
    assert time.monotonic() - started >= 0.003
    assert hung.cancelled


async def test_finished_system_clock_call_is_not_cancelled_after_its_deadline() -> None:
    timeout = Timeout(0.002)

    @timeout
    async def quick() -> str:
        return "done"

    assert await quick() == "done"
    assert await timeout.call(quick) == "done"
    await asyncio.sleep(0.005)  # past both deadlines: nothing may cancel us now
    assert current_task().cancelling() == 0


async def test_a_shorter_timeout_fires_before_a_longer_one_that_started_first() -> None:
    slow, quick = Hung(), Hung()
    long_call = asyncio.create_task(Timeout(5.0).call(slow))
    await slow.started.wait()
    with pytest.raises(CallTimeoutError):
        await Timeout(0.002).call(quick)
    assert quick.cancelled
    assert not long_call.done()
    slow.release.set()
    assert await long_call == "done"
    assert not slow.cancelled


async def test_both_deadlines_fire_when_a_shorter_one_arrives_after_a_longer_one() -> None:
    slow, quick = Hung(), Hung()
    long_call = asyncio.create_task(Timeout(0.006).call(slow))
    await slow.started.wait()
    with pytest.raises(CallTimeoutError):
        await Timeout(0.002).call(quick)
    assert not long_call.done()
    with pytest.raises(CallTimeoutError):
        await long_call
    assert slow.cancelled
    assert quick.cancelled


async def test_nested_system_clock_timeouts_report_the_one_that_expired() -> None:
    outer, inner = Timeout(5.0), Timeout(0.002)
    hung = Hung()

    async def inner_call() -> str:
        try:
            return await inner.call(hung)
        except CallTimeoutError:
            return "inner timed out"

    assert await outer.call(inner_call) == "inner timed out"
    assert current_task().cancelling() == 0


async def test_nested_timeouts_sharing_a_deadline_raise_one_call_timeout_error() -> None:
    timeout = Timeout(0.002)  # the same timeout twice: both deadlines land in one bucket
    hung = Hung()
    with pytest.raises(CallTimeoutError):
        await timeout.call(timeout.call, hung)
    assert current_task().cancelling() == 0


async def test_system_clock_caller_cancellation_propagates_as_cancelled_error() -> None:
    hung = Hung()
    task = asyncio.create_task(Timeout(5.0).call(hung))
    await hung.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hung.cancelled


async def test_call_that_swallows_the_expiry_keeps_its_result_and_task_uncancelled() -> None:
    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)
        return "finished anyway"

    assert await Timeout(0.002).call(stubborn) == "finished anyway"
    assert current_task().cancelling() == 0


def test_system_clock_timeouts_work_on_every_event_loop_and_thread() -> None:
    async def scenario() -> tuple[str, bool]:
        hung = Hung()
        with pytest.raises(CallTimeoutError):
            await Timeout(0.002).call(hung)
        ok = await Timeout(5.0).call(asyncio.sleep, 0, "ok")
        return ok, hung.cancelled

    results: list[tuple[str, bool]] = []
    assert asyncio.run(scenario()) == ("ok", True)
    worker = threading.Thread(target=lambda: results.append(asyncio.run(scenario())))
    worker.start()
    worker.join(5)
    assert results == [("ok", True)]
    assert asyncio.run(scenario()) == ("ok", True)


def test_system_clock_timeout_outside_a_task_is_a_clear_error() -> None:
    loop = asyncio.new_event_loop()
    errors: list[str] = []

    def drive_by_hand() -> None:  # a loop callback: the loop runs, but no task does
        coroutine = Timeout(1.0).call(asyncio.sleep, 0)
        try:
            coroutine.send(None)
        except RuntimeError as error:
            errors.append(str(error))
        finally:
            coroutine.close()
            loop.stop()

    loop.call_soon(drive_by_hand)
    loop.run_forever()
    loop.close()
    assert errors == ["Timeout must be awaited inside an asyncio task"]
