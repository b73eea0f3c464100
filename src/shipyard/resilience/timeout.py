"""The timeout policy: bound how long one call may take.

In async code the call is cancelled when time runs out and :class:`CallTimeoutError` (a
``TimeoutError``) is raised instead; if the caller itself is cancelled, its
``CancelledError`` propagates untouched.

Synchronous functions are run in a worker thread and the caller stops waiting after
``seconds``. A thread cannot be killed, so the abandoned work keeps running in the
background until it returns on its own; make such functions bounded themselves (socket
timeouts, statement timeouts) and treat this as a guard for the caller only.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

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
    is_async_callable,
)

P = ParamSpec("P")
T = TypeVar("T")


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

    With the system clock the deadline is an ``asyncio.timeout`` (one loop timer); with any
    other clock it is ``clock.call_later``, so tests move time with ``ManualClock.advance``.
    Synchronous functions run in a worker thread that keeps running after the caller gave
    up (threads cannot be cancelled).
    """

    __slots__ = ("_clock", "_loop_timer", "seconds")

    def __init__(self, seconds: float, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.seconds = validation.positive("seconds", seconds)
        self._clock = clock
        # Decided once: the loop's own timer is the cheapest deadline, but only the system
        # clock's time is the loop's time.
        self._loop_timer = isinstance(clock, SystemClock)

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
        if self._loop_timer:
            deadline = asyncio.timeout(self.seconds)
            try:
                async with deadline:
                    return await inner(fn, args, kwargs)
            except TimeoutError:
                # Only our deadline becomes CallTimeoutError; a TimeoutError raised by the
                # call itself passes through as it is.
                if deadline.expired():
                    raise CallTimeoutError(self.seconds) from None
                raise
        return await self._run_with_clock_timer(inner, fn, args, kwargs)

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
