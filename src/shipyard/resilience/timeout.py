"""The timeout policy: bound how long one call may take.

In async code the call is cancelled when time runs out and :class:`CallTimeoutError` (a
``TimeoutError``) is raised instead; if the caller itself is cancelled, its
``CancelledError`` propagates untouched.

Synchronous functions are run in a worker thread and the caller stops waiting after
``seconds``. A thread cannot be killed, so the abandoned work keeps running in the
background until it returns on its own; make such functions bounded themselves (socket
timeouts, statement timeouts) and treat this as a guard for the caller only.

With the system clock, deadlines are not one loop timer per call (``asyncio.timeout``
schedules a ``TimerHandle`` per call, and in a busy loop the cancelled ones pile up in the
loop's heap). Instead each event loop has one :class:`_DeadlineWheel`, shared by every
``Timeout``, as in Netty's ``HashedWheelTimer`` or Go's timer buckets: a call registers its
task in the bucket of its deadline, rounded UP to the next tick, and only the earliest
non-empty bucket has a loop timer. A finished call just leaves its bucket (a dict delete).
So a deadline fires up to one tick late (plus the loop's own latency), never early; the
tick is :data:`RESOLUTION` (1 ms) for timeouts under 0.512 s and at most 1/256 of the
timeout above that (a 30 s timeout may fire up to 64 ms late), which bounds the live
buckets to a few hundred per loop and timeout length.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock, SystemClock
from shipyard.resilience.errors import CallTimeoutError
from shipyard.resilience.policy import (
    Args,
    AsyncInvoker,
    Kwargs,
    Policy,
    SyncInvoker,
    invoke_any,
    invoke_coroutine_function,
    is_async_callable,
)

P = ParamSpec("P")
T = TypeVar("T")

RESOLUTION = 0.001
"""Seconds per tick of the system-clock deadline wheel: the finest a deadline is rounded up."""

# A timeout of s seconds is rounded up to ticks of about max(1 ms, s / 256) (1 ms times a
# power of two), so a loop holds at most ~256 live buckets per timeout length.
_BUCKETS_PER_TIMEOUT = 256

_monotonic = time.monotonic
_get_running_loop = asyncio.get_running_loop
# On 3.11 ``asyncio.current_task`` is a Python function that looks the running loop up
# again (a getpid() system call); its {loop: task} map is read directly instead. Later
# versions have a C current_task and keep the current task elsewhere.
_current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    vars(asyncio.tasks)["_current_tasks"].get
    if sys.version_info < (3, 12)
    else asyncio.current_task
)
_CancelledError = asyncio.CancelledError

_Bucket = dict["asyncio.Task[Any]", int]
"""Tasks whose deadline falls in one tick, with how many of their timeouts (nested
timeouts of one task may share a tick) are waiting there."""


def _tick(seconds: float) -> float:
    """The bucket width for a timeout of ``seconds``: ``RESOLUTION`` times a power of two."""
    tick = RESOLUTION
    while tick * 2 * _BUCKETS_PER_TIMEOUT <= seconds:
        tick *= 2
    return tick


def _dead_ref() -> None:
    """Stands in for a weak reference whose object is gone (or never was)."""
    return None


class _DeadlineWheel:
    """The pending system-clock deadlines of one event loop, bucketed by tick.

    A bucket's key is the time it fires (``time.monotonic`` seconds), a multiple of the
    tick of the timeouts in it that lies after their deadlines.

    Only the earliest bucket has a loop timer; a bucket that becomes the earliest
    (a shorter timeout) re-arms it. The wheel is the value of a weak-keyed map and must not
    keep its loop alive, so it holds its timer weakly (a timer references its loop); a timer
    it could not cancel is recognised as stale by its key when it fires, and does nothing.
    Empty buckets are left in place until their time comes: deleting and re-creating them
    would cost a heap push per call.
    """

    __slots__ = ("_armed", "_handle", "_keys", "buckets")

    def __init__(self) -> None:
        self.buckets: dict[float, _Bucket] = {}
        self._keys: list[float] = []  # heap of the keys of ``buckets``
        self._armed: float | None = None  # key of the bucket the live loop timer is for
        self._handle: Callable[[], asyncio.TimerHandle | None] = _dead_ref

    def open(self, key: float, loop: asyncio.AbstractEventLoop) -> _Bucket:
        """A new bucket firing at ``key``; arms the loop timer if it is now the earliest."""
        bucket: _Bucket = {}
        self.buckets[key] = bucket
        heapq.heappush(self._keys, key)
        armed = self._armed
        if armed is None or key < armed:
            self._arm(key, loop)
        return bucket

    def _arm(self, key: float, loop: asyncio.AbstractEventLoop) -> None:
        stale = self._handle()
        if stale is not None:
            stale.cancel()
        self._armed = key
        delay = key - _monotonic()
        handle = loop.call_later(delay if delay > 0.0 else 0.0, self._fire, key)
        try:
            self._handle = weakref.ref(handle)
        except TypeError:  # a loop whose timers cannot be weakly referenced
            self._handle = _dead_ref

    def _fire(self, key: float) -> None:
        """Loop timer: cancel every task whose deadline has passed, re-arm for the rest."""
        if key != self._armed:
            return  # superseded by an earlier bucket's timer that could not be cancelled
        self._armed = None
        self._handle = _dead_ref
        # Our own clock decides, not the loop's: a loop may run timers slightly early.
        now = _monotonic()
        keys = self._keys
        buckets = self.buckets
        while keys and keys[0] <= now:
            bucket = buckets.pop(heapq.heappop(keys))
            expired = list(bucket.items())
            # Emptied before cancelling: a call that finds its task gone knows it expired.
            bucket.clear()
            for task, count in expired:
                for _ in range(count):
                    task.cancel()
        if keys:
            self._arm(keys[0], _get_running_loop())


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _DeadlineWheel] = (
    weakref.WeakKeyDictionary()
)
_wheels_lock = threading.Lock()


# The wheel of the loop used last, so the hot path finds it with one weakref call.
_last: tuple[Callable[[], asyncio.AbstractEventLoop | None], _DeadlineWheel] = (
    _dead_ref,
    _DeadlineWheel(),
)


def _wheel_of(loop: asyncio.AbstractEventLoop) -> _DeadlineWheel:
    global _last
    with _wheels_lock:
        wheel = _wheels.get(loop)
        if wheel is None:
            wheel = _wheels[loop] = _DeadlineWheel()
    _last = (weakref.ref(loop), wheel)
    return wheel


def _expired(bucket: _Bucket, task: asyncio.Task[Any]) -> bool:
    """Leave ``bucket`` on the way out of a call; True if the deadline fired instead."""
    count = bucket.pop(task, 0)
    if count > 1:
        bucket[task] = count - 1
    return count == 0


def _timed_out(
    exc: BaseException, task: asyncio.Task[Any], cancelling: int, seconds: float
) -> BaseException:
    """What a call whose deadline fired raises instead of ``exc``: ``CallTimeoutError``
    if ``exc`` is our cancellation, else ``exc`` itself (the caller was cancelled too, or
    the call raised something else)."""
    # asyncio.timeout's bookkeeping: withdraw our cancel; if others remain, they win.
    if task.uncancel() <= cancelling and isinstance(exc, _CancelledError):
        return CallTimeoutError(seconds)
    return exc


def _no_task() -> RuntimeError:
    return RuntimeError("Timeout must be awaited inside an asyncio task")


async def invoke_in_thread(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
    """Innermost stage for a synchronous ``fn`` under a timeout: run it in a worker thread
    so the event loop (and the timer) keep running; await its result if it is awaitable."""
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


class _ThreadOutcome:
    """Where a worker thread leaves its result for the waiting caller."""

    __slots__ = ("done", "error", "finished", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None


class Timeout(Policy):
    """Cancel a call that takes longer than ``seconds`` and raise :class:`CallTimeoutError`.

    With the system clock the deadline goes on the loop's shared deadline wheel (it fires
    at most one tick late, never early; see the module docs); with any other clock it is
    ``clock.call_later``, so tests move time with ``ManualClock.advance``. Synchronous
    functions run in a worker thread that keeps running after the caller gave up (threads
    cannot be cancelled).
    """

    __slots__ = ("_clock", "_loop_timer", "_tick", "seconds")

    def __init__(self, seconds: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.seconds = validation.positive("seconds", seconds)
        self._clock = clock
        # Decided once: the shared wheel runs on the loop's timers, which follow the system
        # clock only.
        self._loop_timer = isinstance(clock, SystemClock)
        self._tick = _tick(self.seconds)

    def __repr__(self) -> str:
        return f"Timeout({self.seconds:g})"

    # Overloads rather than one union parameter: with the union mypy infers ``Never`` for
    # an ``async def`` argument; this way ``await policy.call(fetch)`` has fetch's type.
    @overload
    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` with the time limit; a synchronous ``fn`` runs in a
        worker thread so that the limit can be enforced."""
        inner = invoke_any if is_async_callable(fn) else invoke_in_thread
        return await self._run_async(inner, fn, args, kwargs)

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        if not self._loop_timer:
            return await self._run_with_clock_timer(inner, fn, args, kwargs)
        # The same steps as the decorator's wrapper in ``__call__`` (kept inline in both:
        # a helper call would cost as much as the rest of the path).
        loop = _get_running_loop()
        task = _current_task(loop)
        if task is None:
            raise _no_task()
        loop_ref, wheel = _last
        if loop_ref() is not loop:
            wheel = _wheel_of(loop)
        tick = self._tick
        # The end of the tick the deadline falls in: after the deadline, never before.
        key = ((_monotonic() + self.seconds) // tick + 1.0) * tick
        bucket = wheel.buckets.get(key)
        if bucket is None:
            bucket = wheel.open(key, loop)
        bucket[task] = bucket.get(task, 0) + 1
        cancelling = task.cancelling()
        try:
            result = await (
                fn(*args, **kwargs)
                if inner is invoke_coroutine_function
                else inner(fn, args, kwargs)
            )
        except BaseException as exc:
            if _expired(bucket, task):
                error = _timed_out(exc, task, cancelling, self.seconds)
                if error is not exc:
                    raise error from None
            raise
        count = bucket.pop(task, 0)
        if count > 1:
            bucket[task] = count - 1
        elif count == 0:
            # The call swallowed our cancellation and finished anyway: withdraw it.
            task.uncancel()
        return result

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn`` (sync stays sync and runs in a worker thread when called)."""
        if not self._loop_timer or not is_async_callable(fn):
            return super().__call__(fn)
        seconds = self.seconds
        tick = self._tick
        coroutine_fn = cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def deadline_wrapper(*args: Any, **kwargs: Any) -> Any:
            loop = _get_running_loop()
            task = _current_task(loop)
            if task is None:
                raise _no_task()
            loop_ref, wheel = _last
            if loop_ref() is not loop:
                wheel = _wheel_of(loop)
            key = ((_monotonic() + seconds) // tick + 1.0) * tick
            bucket = wheel.buckets.get(key)
            if bucket is None:
                bucket = wheel.open(key, loop)
            bucket[task] = bucket.get(task, 0) + 1
            cancelling = task.cancelling()
            try:
                result = await coroutine_fn(*args, **kwargs)
            except BaseException as exc:
                if _expired(bucket, task):
                    error = _timed_out(exc, task, cancelling, seconds)
                    if error is not exc:
                        raise error from None
                raise
            count = bucket.pop(task, 0)
            if count > 1:
                bucket[task] = count - 1
            elif count == 0:
                task.uncancel()
            return result

        return cast(Callable[P, T], deadline_wrapper)

    async def _run_with_clock_timer(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Timeout must be awaited inside an asyncio task")
        # The same bookkeeping as asyncio.timeout: remember how many cancellations were
        # already pending so that ours can be told apart from the caller's.
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = self._clock.call_later(self.seconds, expire)
        try:
            result = await inner(fn, args, kwargs)
        except BaseException as exc:
            handle.cancel()
            if (
                expired
                and task.uncancel() <= cancelling
                and isinstance(exc, asyncio.CancelledError)
            ):
                raise CallTimeoutError(self.seconds) from None
            raise
        handle.cancel()
        if expired:
            # The call swallowed our cancellation and finished anyway: withdraw it.
            task.uncancel()
        return result

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        outcome = _ThreadOutcome()

        def work() -> None:
            try:
                outcome.value = inner(fn, args, kwargs)
            except BaseException as exc:
                outcome.error = exc
            outcome.finished = True
            outcome.done.set()

        handle = None
        if not self._loop_timer:
            # Another clock cannot drive Event.wait's timeout: its timer wakes us instead.
            handle = self._clock.call_later(self.seconds, outcome.done.set)
        worker = threading.Thread(target=work, name=f"shipyard-timeout-{fn!r:.40}", daemon=True)
        worker.start()
        if handle is None:
            outcome.done.wait(self.seconds)
        else:
            outcome.done.wait()
            handle.cancel()
        if not outcome.finished:
            raise CallTimeoutError(self.seconds)
        if outcome.error is not None:
            raise outcome.error
        return outcome.value
