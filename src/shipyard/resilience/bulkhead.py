"""``Bulkhead``: a cap on concurrent calls, and ``Bulkheads``: named pools of them.

A bulkhead keeps one slow dependency (or one kind of work) from taking every worker: at
most ``max_concurrent`` calls run, up to ``max_queue`` more wait in FIFO order for at most
``max_wait`` seconds, and the rest are rejected at once with ``BulkheadFullError``.

Async and sync callers share one count, guarded by a short ``threading.Lock`` that is never
held while a call runs. A freed slot is handed straight to the first waiter (so a newcomer
cannot overtake the queue); a waiter that is cancelled or times out gives its place back.

The uncontended path (a free slot, nobody queued, nobody listening to events) is inlined
in ``_run_async`` and in both decorator wrappers. It still takes the lock, because sync
callers and async callers on other threads' loops share the count; an uncontended
``threading.Lock`` taken with ``acquire()``/``release()`` costs far less than the frames
the inlining saves.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, cast

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock, TimerHandle
from shipyard.core.errors import ConfigError
from shipyard.core.events import EventPublisher
from shipyard.resilience.errors import BulkheadFullError, ResilienceError
from shipyard.resilience.policy import (
    Args,
    AsyncInvoker,
    Kwargs,
    Policy,
    SyncInvoker,
    WatchedEvents,
    invoke_coroutine_function,
    invoke_sync,
    is_async_callable,
)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BulkheadMetrics:
    """A snapshot: calls running, callers waiting, rejections so far, and the cap."""

    active: int
    queued: int
    rejected: int
    max_concurrent: int


@dataclass(frozen=True, slots=True)
class BulkheadEvent:
    """A slot was ``acquired`` or ``released``, or a call was ``rejected``."""

    kind: Literal["acquired", "rejected", "released"]
    bulkhead: str
    active: int
    queued: int


class _AsyncWaiter:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()


class _SyncWaiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False


class Bulkhead(Policy):
    """At most ``max_concurrent`` calls at once; ``max_queue`` callers may wait up to
    ``max_wait`` seconds (``None``: as long as it takes) for a slot, FIFO.

    Async waits are timed with ``clock`` timers (so ``ManualClock`` tests work); sync waits
    block the thread on real time.
    """

    __slots__ = (
        "_active",
        "_clock",
        "_lock",
        "_quiet",
        "_rejected",
        "_waiters",
        "events",
        "max_concurrent",
        "max_queue",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        name: str,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        max_wait: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "must be a non-empty string")
        self.name = name
        self.max_concurrent = validation.at_least("max_concurrent", max_concurrent, 1)
        self.max_queue = validation.at_least("max_queue", max_queue, 0)
        self.max_wait = validation.optional_positive("max_wait", max_wait)
        if self.max_wait is not None and self.max_queue == 0:
            raise ConfigError(
                "max_wait", max_wait, "needs max_queue >= 1 (with no queue nobody ever waits)"
            )
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._rejected = 0
        self._waiters: collections.deque[_AsyncWaiter | _SyncWaiter] = collections.deque()
        self.events: EventPublisher[BulkheadEvent] = WatchedEvents(
            f"bulkhead:{name}", self._refresh_quiet
        )
        # No listeners: the fast path need not build events (kept current by ``events``).
        self._quiet = True

    def __repr__(self) -> str:
        return (
            f"Bulkhead({self.name!r}, max_concurrent={self.max_concurrent}, "
            f"max_queue={self.max_queue}, max_wait={self.max_wait})"
        )

    @property
    def metrics(self) -> BulkheadMetrics:
        """Current counts (``queued`` may briefly include a waiter being cancelled)."""
        return BulkheadMetrics(
            self._active, len(self._waiters), self._rejected, self.max_concurrent
        )

    def _emit(self, kind: Literal["acquired", "rejected", "released"]) -> None:
        self.events.emit(BulkheadEvent(kind, self.name, self._active, len(self._waiters)))

    def _refresh_quiet(self) -> None:
        self._quiet = not self.events.has_listeners

    def _full(self, waited: float | None) -> BulkheadFullError:
        return BulkheadFullError(self.name, self.max_concurrent, waited)

    # -- async --------------------------------------------------------------------------

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        # The uncontended path inline (as in ``__call__``); anything else goes the long way.
        lock = self._lock
        # acquire()/release() rather than ``with``: half the cost on this path, and nothing
        # between them can raise (no calls, just attribute reads and an int increment).
        lock.acquire()
        admitted = self._quiet and self._active < self.max_concurrent and not self._waiters
        if admitted:
            self._active += 1
        lock.release()
        if not admitted:
            await self.acquire()
        try:
            return await (
                fn(*args, **kwargs)
                if inner is invoke_coroutine_function
                else inner(fn, args, kwargs)
            )
        finally:
            self._release_fast()

    def _release_fast(self) -> None:
        """``release()`` for the common case: nobody waiting, nobody listening."""
        lock = self._lock
        lock.acquire()
        freed = self._quiet and not self._waiters
        if freed:
            self._active -= 1
        lock.release()
        if not freed:
            self.release()

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``: sync stays sync, async stays async; both wrappers inline the
        uncontended acquire and release."""
        bulkhead = self
        lock = self._lock
        waiters = self._waiters
        limit = self.max_concurrent
        if not is_async_callable(fn):
            run_sync = self._run_sync

            @functools.wraps(fn)
            def bulkhead_sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                lock.acquire()
                admitted = bulkhead._quiet and bulkhead._active < limit and not waiters
                if admitted:
                    bulkhead._active += 1
                lock.release()
                if not admitted:
                    return run_sync(invoke_sync, fn, args, kwargs)
                try:
                    return fn(*args, **kwargs)
                finally:
                    bulkhead._release_fast()

            return cast(Callable[P, T], bulkhead_sync_wrapper)
        coroutine_fn = cast(Callable[..., Any], fn)

        @functools.wraps(fn)
        async def bulkhead_wrapper(*args: Any, **kwargs: Any) -> Any:
            lock.acquire()  # not ``with``: see ``_run_async``
            admitted = bulkhead._quiet and bulkhead._active < limit and not waiters
            if admitted:
                bulkhead._active += 1
            lock.release()
            if not admitted:
                return await bulkhead._run_async(invoke_coroutine_function, fn, args, kwargs)
            try:
                return await coroutine_fn(*args, **kwargs)
            finally:
                lock.acquire()
                freed = bulkhead._quiet and not waiters
                if freed:
                    bulkhead._active -= 1
                lock.release()
                if not freed:
                    bulkhead.release()

        return cast(Callable[P, T], bulkhead_wrapper)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; ``BulkheadFullError`` otherwise.

        Pair with ``release()``; ``call`` and the decorator do this for you.
        """
        with self._lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                waiter = None
            elif len(self._waiters) < self.max_queue:
                waiter = _AsyncWaiter(asyncio.get_running_loop())
                self._waiters.append(waiter)
            else:
                self._rejected += 1
                if self.events.has_listeners:
                    self._emit("rejected")
                raise self._full(None)
        if waiter is not None:
            await self._wait(waiter)
        if self.events.has_listeners:
            self._emit("acquired")

    def try_acquire(self) -> bool:
        """Take a free slot at once if there is one (and nobody queued ahead); never
        waits and never counts a rejection. Pair a ``True`` with ``release()``."""
        with self._lock:
            if self._active >= self.max_concurrent or self._waiters:
                return False
            self._active += 1
        if self.events.has_listeners:
            self._emit("acquired")
        return True

    async def _wait(self, waiter: _AsyncWaiter) -> None:
        timer: TimerHandle | None = None
        if self.max_wait is not None:
            timer = self._clock.call_later(self.max_wait, functools.partial(self._expire, waiter))
        try:
            await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    granted = False
                else:
                    # The slot may have been handed over just before the cancellation
                    # landed: give it to the next waiter rather than leak it.
                    future = waiter.future
                    granted = (
                        future.done() and not future.cancelled() and future.exception() is None
                    )
            if granted:
                self.release()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: _AsyncWaiter) -> None:
        """Timer callback: the waiter waited ``max_wait`` without getting a slot."""
        with self._lock:
            if waiter.future.done() or waiter not in self._waiters:
                return  # already granted (or a grant is on its way), or cancelled
            self._waiters.remove(waiter)
            self._rejected += 1
        waiter.future.set_exception(self._full(self.max_wait))
        if self.events.has_listeners:
            self._emit("rejected")

    def release(self) -> None:
        """Give a slot back: to the first live waiter if any, else to the pool."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if isinstance(waiter, _SyncWaiter):
                    waiter.granted = True
                    waiter.event.set()
                    break
                if waiter.future.done():
                    continue  # cancelled while queued; its task is cleaning up
                if _running_loop() is waiter.loop:
                    waiter.future.set_result(None)
                else:
                    waiter.loop.call_soon_threadsafe(self._grant, waiter)
                break
            else:
                self._active -= 1
        if self.events.has_listeners:
            self._emit("released")

    def _grant(self, waiter: _AsyncWaiter) -> None:
        """On the waiter's loop: hand it the slot, or pass the slot on if it gave up."""
        if waiter.future.done():
            self.release()
        else:
            waiter.future.set_result(None)

    # -- sync ---------------------------------------------------------------------------

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        self.acquire_sync()
        try:
            return inner(fn, args, kwargs)
        finally:
            self.release()

    def acquire_sync(self) -> None:
        """Blocking ``acquire`` for threads; ``max_wait`` is measured in real time."""
        with self._lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                waiter = None
            elif len(self._waiters) < self.max_queue:
                waiter = _SyncWaiter()
                self._waiters.append(waiter)
            else:
                self._rejected += 1
                if self.events.has_listeners:
                    self._emit("rejected")
                raise self._full(None)
        if waiter is not None and not waiter.event.wait(self.max_wait):
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    self._rejected += 1
                    rejected = True
                else:
                    rejected = False  # granted just as the wait ran out: keep the slot
            if rejected:
                if self.events.has_listeners:
                    self._emit("rejected")
                raise self._full(self.max_wait)
        if self.events.has_listeners:
            self._emit("acquired")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class UnknownBulkheadError(ResilienceError, KeyError):
    """No bulkhead pool has that name."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"no bulkhead pool named {name!r}; known pools: {', '.join(known) or '(none)'}"
        )

    def __str__(self) -> str:
        # KeyError would show the repr of the message; show the message itself.
        return str(self.args[0])


_POOL_KEYS = ("max_concurrent", "max_queue", "max_wait")


class Bulkheads(Mapping[str, Bulkhead]):
    """Named bulkhead pools, so one kind of work cannot starve another:
    ``bulkheads["api"]`` is a ``Bulkhead``; an unknown name raises ``UnknownBulkheadError``
    (a ``KeyError``) listing the known pools."""

    __slots__ = ("_pools",)

    def __init__(self, *pools: Bulkhead) -> None:
        self._pools: dict[str, Bulkhead] = {}
        for pool in pools:
            if pool.name in self._pools:
                raise ConfigError("name", pool.name, "each pool needs a distinct name")
            self._pools[pool.name] = pool

    @classmethod
    def defaults(cls, *, clock: Clock = SYSTEM_CLOCK) -> Bulkheads:
        """The usual three-way split of a service's work:

        * ``api``: 20 concurrent, 20 more queue for up to 5 s — user-facing requests wait
          briefly, then fail fast so the client can retry elsewhere;
        * ``analytics``: 5 concurrent, 10 queued for up to 30 s — heavy reports, few at once;
        * ``background``: 10 concurrent, 100 queued for up to 60 s — jobs tolerate waiting.
        """
        return cls(
            Bulkhead("api", 20, max_queue=20, max_wait=5.0, clock=clock),
            Bulkhead("analytics", 5, max_queue=10, max_wait=30.0, clock=clock),
            Bulkhead("background", 10, max_queue=100, max_wait=60.0, clock=clock),
        )

    @classmethod
    def from_dict(
        cls, config: Mapping[str, Mapping[str, Any]], *, clock: Clock = SYSTEM_CLOCK
    ) -> Bulkheads:
        """Build from config such as ``{"api": {"max_concurrent": 20, "max_queue": 20,
        "max_wait": 5}}``; a bad key or value raises ``ConfigError`` naming it."""
        if not isinstance(config, Mapping):
            raise ConfigError("bulkheads", config, "must be a mapping of pool name to settings")
        pools = []
        for name, settings in config.items():
            if not isinstance(settings, Mapping):
                raise ConfigError(f"bulkheads.{name}", settings, "must be a mapping")
            for key in settings:
                if key not in _POOL_KEYS:
                    raise ConfigError(
                        f"bulkheads.{name}.{key}", settings[key], f"unknown; allowed: {_POOL_KEYS}"
                    )
            if "max_concurrent" not in settings:
                raise ConfigError(f"bulkheads.{name}.max_concurrent", None, "is required")
            try:
                pools.append(Bulkhead(str(name), clock=clock, **settings))
            except ConfigError as error:
                raise ConfigError(
                    f"bulkheads.{name}.{error.field}", error.value, error.allowed
                ) from None
        return cls(*pools)

    def __getitem__(self, name: str) -> Bulkhead:
        try:
            return self._pools[name]
        except KeyError:
            raise UnknownBulkheadError(name, tuple(self._pools)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._pools)

    def __len__(self) -> int:
        return len(self._pools)

    def __repr__(self) -> str:
        return f"Bulkheads({', '.join(map(repr, self._pools.values()))})"
