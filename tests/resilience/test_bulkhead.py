"""A bulkhead caps concurrency, queues fairly, rejects the rest, and never leaks a slot."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from shipyard import ConfigError, ManualClock
from shipyard.resilience.bulkhead import (
    Bulkhead,
    BulkheadEvent,
    BulkheadMetrics,
    Bulkheads,
    UnknownBulkheadError,
)
from shipyard.resilience.errors import BulkheadFullError


class Gate:
    """An async call that blocks until released, recording who entered."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered: list[str] = []

    async def __call__(self, who: str) -> str:
        self.entered.append(who)
        await self.open.wait()
        return who


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_calls_beyond_max_concurrent_are_rejected_without_a_queue() -> None:
    bulkhead = Bulkhead("db", 2, clock=ManualClock())
    gate = Gate()
    running = [asyncio.create_task(bulkhead.call(gate, w)) for w in ("a", "b")]
    await settle()
    with pytest.raises(BulkheadFullError, match="'db' is full"):
        await bulkhead.call(gate, "c")
    assert bulkhead.metrics.active == 2
    assert bulkhead.metrics.rejected == 1
    gate.open.set()
    assert await asyncio.gather(*running) == ["a", "b"]
    assert bulkhead.metrics.active == 0


async def test_queued_callers_get_slots_in_arrival_order() -> None:
    bulkhead = Bulkhead("db", 1, max_queue=3, clock=ManualClock())
    order: list[str] = []
    release = asyncio.Event()

    async def work(who: str) -> None:
        order.append(who)
        await release.wait()

    tasks = [asyncio.create_task(bulkhead.call(work, w)) for w in "abcd"]
    await settle()
    assert order == ["a"]
    assert bulkhead.metrics.queued == 3
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
    assert bulkhead.metrics == BulkheadMetrics(active=0, queued=0, rejected=0, max_concurrent=1)


async def test_a_full_queue_rejects_at_once() -> None:
    bulkhead = Bulkhead("db", 1, max_queue=1, clock=ManualClock())
    gate = Gate()
    tasks = [asyncio.create_task(bulkhead.call(gate, w)) for w in "ab"]
    await settle()
    with pytest.raises(BulkheadFullError):
        await bulkhead.call(gate, "c")
    gate.open.set()
    await asyncio.gather(*tasks)


async def test_a_waiter_gives_up_after_max_wait_on_the_clock() -> None:
    clock = ManualClock(auto_advance=False)
    bulkhead = Bulkhead("db", 1, max_queue=1, max_wait=2.0, clock=clock)
    gate = Gate()
    holder = asyncio.create_task(bulkhead.call(gate, "a"))
    waiter = asyncio.create_task(bulkhead.call(gate, "b"))
    await settle()
    clock.advance(1.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.2)
    with pytest.raises(BulkheadFullError, match="after waiting 2s"):
        await waiter
    assert bulkhead.metrics.queued == 0
    gate.open.set()
    await holder
    assert bulkhead.metrics.active == 0
    assert gate.entered == ["a"]


async def test_cancelling_a_queued_caller_does_not_leak_its_slot() -> None:
    bulkhead = Bulkhead("db", 1, max_queue=2, clock=ManualClock())
    gate = Gate()
    holder = asyncio.create_task(bulkhead.call(gate, "a"))
    cancelled = asyncio.create_task(bulkhead.call(gate, "b"))
    later = asyncio.create_task(bulkhead.call(gate, "c"))
    await settle()
    cancelled.cancel()
    await settle()
    assert bulkhead.metrics.queued == 1
    gate.open.set()
    assert await holder == "a"
    assert await later == "c"
    assert cancelled.cancelled()
    assert gate.entered == ["a", "c"]
    assert bulkhead.metrics.active == 0


async def test_cancellation_landing_just_after_the_handover_passes_the_slot_on() -> None:
    bulkhead = Bulkhead("db", 1, max_queue=2, clock=ManualClock())
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()  # hands the slot to `first`, which has not resumed yet
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done()  # the slot went on to the next waiter instead of leaking
    bulkhead.release()
    assert bulkhead.metrics.active == 0


async def test_slot_is_released_when_the_call_fails_or_is_cancelled() -> None:
    bulkhead = Bulkhead("db", 1, clock=ManualClock())

    async def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await bulkhead.call(boom)
    gate = Gate()
    task = asyncio.create_task(bulkhead.call(gate, "a"))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.metrics.active == 0


async def test_events_are_emitted_for_acquire_release_and_reject() -> None:
    bulkhead = Bulkhead("db", 1, clock=ManualClock())
    events: list[BulkheadEvent] = []
    bulkhead.events.subscribe(events.append)
    gate = Gate()
    task = asyncio.create_task(bulkhead.call(gate, "a"))
    await settle()
    with pytest.raises(BulkheadFullError):
        await bulkhead.call(gate, "b")
    gate.open.set()
    await task
    assert [(e.kind, e.active) for e in events] == [
        ("acquired", 1),
        ("rejected", 1),
        ("released", 0),
    ]


def test_sync_callers_share_the_cap_across_threads() -> None:
    bulkhead = Bulkhead("files", 2, max_queue=10)
    lock = threading.Lock()
    running = 0
    peak = 0
    release = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    threads = [threading.Thread(target=bulkhead.call_sync, args=(work,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    while bulkhead.metrics.queued < 4:
        release.wait(0.001)
    release.set()
    for thread in threads:
        thread.join(5)
    assert peak == 2
    assert bulkhead.metrics.active == 0


def test_sync_caller_is_rejected_when_full_and_after_max_wait() -> None:
    bulkhead = Bulkhead("files", 1, max_queue=1, max_wait=0.01)
    bulkhead.acquire_sync()
    with pytest.raises(BulkheadFullError, match="after waiting"):
        bulkhead.call_sync(int, "1")
    bulkhead.release()
    assert bulkhead.call_sync(int, "1") == 1
    assert bulkhead.metrics.rejected == 1


async def test_a_saturated_analytics_pool_does_not_delay_api_calls() -> None:
    pools = Bulkheads.defaults(clock=ManualClock())
    gate = Gate()
    reports = [asyncio.create_task(pools["analytics"].call(gate, f"r{n}")) for n in range(15)]
    await settle()
    assert pools["analytics"].metrics.active == 5
    assert pools["analytics"].metrics.queued == 10
    with pytest.raises(BulkheadFullError):
        await pools["analytics"].call(gate, "one too many")

    async def answer() -> str:
        return "fast"

    assert await pools["api"].call(answer) == "fast"
    gate.open.set()
    await asyncio.gather(*reports)


def test_defaults_follow_the_documented_presets() -> None:
    pools = Bulkheads.defaults()
    summary = {name: (p.max_concurrent, p.max_queue, p.max_wait) for name, p in pools.items()}
    assert summary == {
        "api": (20, 20, 5.0),
        "analytics": (5, 10, 30.0),
        "background": (10, 100, 60.0),
    }


def test_unknown_pool_is_a_key_error_naming_the_known_pools() -> None:
    pools = Bulkheads.defaults()
    with pytest.raises(KeyError) as caught:
        pools["reports"]
    assert isinstance(caught.value, UnknownBulkheadError)
    assert str(caught.value) == (
        "no bulkhead pool named 'reports'; known pools: api, analytics, background"
    )


def test_pools_build_from_config_and_bad_config_names_the_setting() -> None:
    pools = Bulkheads.from_dict({"api": {"max_concurrent": 3, "max_queue": 1, "max_wait": 2}})
    assert pools["api"].max_concurrent == 3
    with pytest.raises(ConfigError) as caught:
        Bulkheads.from_dict({"api": {"max_concurrent": 0}})
    assert caught.value.field == "bulkheads.api.max_concurrent"
    with pytest.raises(ConfigError) as caught:
        Bulkheads.from_dict({"api": {"max_concurrent": 1, "queue": 3}})
    assert caught.value.field == "bulkheads.api.queue"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 1, "max_queue": -1}, "max_queue"),
        ({"max_concurrent": 1, "max_queue": 1, "max_wait": -1}, "max_wait"),
        ({"max_concurrent": 1, "max_wait": 1.0}, "max_wait"),
    ],
)
def test_invalid_settings_are_rejected_naming_the_parameter(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Bulkhead("db", **kwargs)
    assert caught.value.field == field


# -- the decorators' inlined fast path ------------------------------------------------------


async def test_decorated_async_calls_queue_in_order_and_hand_over_slots() -> None:
    bulkhead = Bulkhead("db", 1, max_queue=2, clock=ManualClock())
    gate = Gate()
    guarded = bulkhead(gate)
    tasks = [asyncio.create_task(guarded(who)) for who in ("a", "b", "c")]
    await settle()
    assert gate.entered == ["a"]
    assert bulkhead.metrics == BulkheadMetrics(1, 2, 0, 1)
    with pytest.raises(BulkheadFullError):
        await guarded("d")
    gate.open.set()
    assert [await task for task in tasks] == ["a", "b", "c"]
    assert gate.entered == ["a", "b", "c"]
    assert bulkhead.metrics.active == 0


async def test_decorated_async_call_frees_its_slot_when_it_fails() -> None:
    bulkhead = Bulkhead("db", 1, clock=ManualClock())

    @bulkhead
    async def boom() -> None:
        raise RuntimeError("boom")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            await boom()
    assert bulkhead.metrics.active == 0


async def test_a_listener_subscribed_during_a_call_sees_its_release() -> None:
    bulkhead = Bulkhead("db", 2, clock=ManualClock())
    gate = Gate()
    task = asyncio.create_task(bulkhead(gate)("a"))
    await settle()
    events: list[BulkheadEvent] = []
    unsubscribe = bulkhead.events.subscribe(events.append)
    gate.open.set()
    await task
    assert [(e.kind, e.active) for e in events] == [("released", 0)]
    unsubscribe()
    assert await bulkhead(gate)("b") == "b"  # quiet again: nothing more is reported
    assert len(events) == 1


def test_decorated_sync_function_stays_sync_respects_the_cap_and_frees_on_error() -> None:
    bulkhead = Bulkhead("files", 1)
    seen: list[int] = []

    @bulkhead
    def read(n: int) -> int:
        seen.append(bulkhead.metrics.active)
        if n < 0:
            raise ValueError("negative")
        return n

    assert not asyncio.iscoroutinefunction(read)
    assert read(3) == 3
    with pytest.raises(ValueError, match="negative"):
        read(-1)
    bulkhead.acquire_sync()  # the only slot is taken: the next call is turned away
    with pytest.raises(BulkheadFullError):
        read(4)
    bulkhead.release()
    assert read(5) == 5
    assert seen == [1, 1, 1]
    assert bulkhead.metrics == BulkheadMetrics(0, 0, 1, 1)


async def test_try_acquire_takes_only_a_free_slot_nobody_queues_for() -> None:
    bulkhead = Bulkhead("db", 1, max_queue=1, max_wait=None)

    assert bulkhead.try_acquire() is True
    assert bulkhead.try_acquire() is False  # full: no wait, no rejection counted
    waiter = asyncio.ensure_future(bulkhead.acquire())
    await settle()
    bulkhead.release()  # the slot passes to the queued caller, so a try still fails
    await waiter
    assert bulkhead.try_acquire() is False
    bulkhead.release()

    assert bulkhead.try_acquire() is True
    bulkhead.release()
    assert bulkhead.metrics == BulkheadMetrics(active=0, queued=0, rejected=0, max_concurrent=1)
