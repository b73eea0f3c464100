"""The circuit breaker: stop calling a dependency that keeps failing, probe it, recover.

Closed → (failure or slow-call rate over the threshold) → open → (``reset_timeout``
elapsed) → half-open → (trial calls healthy) → closed, or back to open. Plus the manual
states ``forced_open`` and ``disabled``. The health window lives in
:mod:`shipyard.resilience.window`; named breakers sharing a configuration come from a
:class:`BreakerRegistry`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock, SystemClock
from shipyard.core.errors import ConfigError
from shipyard.core.events import EventPublisher
from shipyard.resilience.errors import CallTimeoutError, CircuitOpenError
from shipyard.resilience.policy import (
    Args,
    AsyncInvoker,
    Kwargs,
    Policy,
    SyncInvoker,
    WatchedEvents,
    invoke_any,
    invoke_coroutine_function,
    invoke_sync,
    is_async_callable,
)
from shipyard.resilience.timeout import Timeout, invoke_in_thread
from shipyard.resilience.window import CountWindow, HealthWindow, TimeWindow

P = ParamSpec("P")
T = TypeVar("T")


class BreakerState(StrEnum):
    """Where a breaker is; compares equal to its plain string (``state == "open"``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_FORCED_OPEN = BreakerState.FORCED_OPEN
_DISABLED = BreakerState.DISABLED

EventKind = Literal["state_change", "success", "failure", "rejected", "timeout", "slow"]


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """Something a breaker did. ``from_state``/``to_state`` are set for ``state_change``;
    ``duration`` (seconds) for call outcomes; ``error`` for failures and timeouts."""

    kind: EventKind
    breaker: str
    from_state: BreakerState | None = None
    to_state: BreakerState | None = None
    duration: float | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of a breaker. In ``half_open`` the counts are those of the trial calls;
    otherwise those of the sliding window. ``rejected`` counts calls not permitted since
    the breaker was created or last ``reset()``."""

    state: BreakerState
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    rejected: int


ExceptionFilter = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""Which exceptions a rule matches: a type, a tuple of types, or a predicate ``exc -> bool``."""

# How a finished call counts.
_IGNORED = 0
_FAILURE = 1
_SUCCESS = 2


def _exception_filter(field: str, value: object) -> Callable[[BaseException], bool]:
    allowed = "must be an exception type, a tuple of exception types, or a predicate exc -> bool"
    if isinstance(value, type):
        if not issubclass(value, BaseException):
            raise ConfigError(field, value, allowed)
        value = (value,)
    if isinstance(value, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
            raise ConfigError(field, value, allowed)
        types: tuple[type[BaseException], ...] = value
        return lambda exc: isinstance(exc, types)
    if callable(value):
        return cast(Callable[[BaseException], bool], value)
    raise ConfigError(field, value, allowed)


class CircuitBreaker(Policy):
    """Fail fast while a dependency is unhealthy, and let a few trial calls find out when it
    has recovered.

    * **closed** — calls pass and their outcomes go into a sliding window (the last
      ``window`` seconds, or the last ``window`` calls with ``window_type="count"``). Once
      the window holds ``minimum_calls`` outcomes, the breaker opens when the failure rate
      reaches ``failure_rate_threshold`` or the slow-call rate (calls taking at least
      ``slow_call_duration`` seconds, successful or not) reaches ``slow_call_rate_threshold``.
    * **open** — calls are rejected with :class:`CircuitOpenError` (``remaining`` says how
      long until trial calls) without being made. After ``reset_timeout`` seconds the
      breaker is half-open (checked lazily on the next call or ``state`` read).
    * **half_open** — at most ``half_open_max_calls`` trial calls run at a time; the rest
      are rejected. When ``half_open_max_calls`` trial outcomes are in, their failure and
      slow-call rates are compared with the same thresholds: reached → open again (for a
      new ``reset_timeout``), otherwise → closed with an empty window.
    * **forced_open** (``force_open()``) rejects everything; **disabled** (``disable()``)
      lets everything through and records nothing; ``reset()`` returns to closed with
      cleared metrics.

    Exceptions: ``ignore`` wins over ``record``; an ignored exception passes through and is
    not counted (a half-open trial slot it held is freed); an exception that is not recorded
    counts as a success (as in Resilience4j). ``asyncio.CancelledError`` and other
    ``BaseException``\\ s that are not ``Exception``\\ s are always ignored. ``record`` and
    ``ignore`` take a type, a tuple of types or a predicate ``exc -> bool``.

    ``timeout`` cancels a call that runs longer (a :class:`Timeout` inside the breaker):
    it counts as a failure, emits a ``timeout`` event and raises :class:`CallTimeoutError`.
    With ``timeout`` set, any ``CallTimeoutError`` out of the call counts as a failure.

    Coming from opossum: ``timeout`` (ms) → ``timeout`` (s);
    ``errorThresholdPercentage`` → ``failure_rate_threshold = pct / 100``;
    ``resetTimeout`` (ms) → ``reset_timeout`` (s); ``volumeThreshold`` → ``minimum_calls``;
    ``rollingCountTimeout`` (ms) → ``window`` (s, time window).

    Events (``events``): ``state_change``, ``success``, ``failure``, ``rejected``,
    ``timeout``, ``slow`` as :class:`BreakerEvent`; built only when someone listens.

    Concurrency: no lock is held while the protected call runs. Async calls are expected
    on one event-loop thread and do their bookkeeping without locking (that is what keeps
    the closed path at a few hundred nanoseconds); synchronous calls from several threads
    serialise only their bookkeeping on a lock.
    """

    __slots__ = (
        "_clock",
        "_fast",
        "_gen",
        "_ignore",
        "_lean",
        "_lock",
        "_now",
        "_open_until",
        "_record",
        "_rejected",
        "_state",
        "_timeout",
        "_trial_active",
        "_trial_done",
        "_trial_failures",
        "_trial_slow",
        "_window",
        "events",
        "failure_rate_threshold",
        "half_open_max_calls",
        "minimum_calls",
        "name",
        "reset_timeout",
        "slow_call_duration",
        "slow_call_rate_threshold",
        "timeout",
        "window",
        "window_type",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float = 0.5,
        minimum_calls: int = 10,
        window: float = 10,
        window_type: Literal["time", "count"] = "time",
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        timeout: float | None = None,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        record: ExceptionFilter = (Exception,),
        ignore: ExceptionFilter = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "must be a non-empty string")
        self.name = name
        self.failure_rate_threshold = validation.fraction(
            "failure_rate_threshold", failure_rate_threshold
        )
        self.minimum_calls = validation.at_least("minimum_calls", minimum_calls, 1)
        validation.one_of("window_type", window_type, ("time", "count"))
        self.window_type = window_type
        self._window: HealthWindow
        if window_type == "count":
            self._window = CountWindow(validation.at_least("window", cast(int, window), 1))
        else:
            self._window = TimeWindow(validation.positive("window", window))
        self.window = window
        self.slow_call_duration = validation.optional_positive(
            "slow_call_duration", slow_call_duration
        )
        self.slow_call_rate_threshold = validation.fraction(
            "slow_call_rate_threshold", slow_call_rate_threshold
        )
        self.timeout = validation.optional_positive("timeout", timeout)
        self.reset_timeout = validation.positive("reset_timeout", reset_timeout)
        self.half_open_max_calls = validation.at_least(
            "half_open_max_calls", half_open_max_calls, 1
        )
        self._record = _exception_filter("record", record)
        self._ignore = _exception_filter("ignore", ignore)
        self._clock = clock
        # Decided once: the system clock's monotonic() is time.monotonic, so skip the
        # method call on the hot path.
        self._now: Callable[[], float] = (
            time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
        )
        self._timeout = None if self.timeout is None else Timeout(self.timeout, clock=clock)
        self.events: EventPublisher[BreakerEvent] = WatchedEvents(
            f"breaker:{name}", self._refresh_fast
        )
        # RLock: listeners run inside the bookkeeping and may read ``state``/``metrics``.
        self._lock = threading.RLock()
        self._state = _CLOSED
        # Bumped on every transition; a call only counts toward the state it started in.
        self._gen = 0
        self._open_until = 0.0
        self._trial_active = 0
        self._trial_done = 0
        self._trial_failures = 0
        self._trial_slow = 0
        self._rejected = 0
        # Without a timeout or slow-call detection a successful closed call needs no start
        # time and no classification: only then may the fast path run...
        self._lean = self._timeout is None and self.slow_call_duration is None
        # ...and only while closed with no listeners (kept up to date on every change).
        self._fast = self._lean

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value!r})"

    # -- public state -------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose ``reset_timeout`` has elapsed reports,
        and becomes, ``half_open``)."""
        if self._state is _OPEN:
            with self._lock:
                now = self._now()
                if self._state is _OPEN and now >= self._open_until:
                    self._transition(_HALF_OPEN, now)
        return self._state

    @property
    def metrics(self) -> BreakerMetrics:
        """A snapshot of the state and the counts that drive it."""
        with self._lock:
            state = self.state
            if state is _HALF_OPEN:
                calls, failures, slow = self._trial_done, self._trial_failures, self._trial_slow
            else:
                snap = self._window.snapshot(self._now())
                calls, failures, slow = snap.calls, snap.failures, snap.slow_calls
            return BreakerMetrics(
                state=state,
                calls=calls,
                failures=failures,
                slow_calls=slow,
                failure_rate=failures / calls if calls else 0.0,
                slow_call_rate=slow / calls if calls else 0.0,
                rejected=self._rejected,
            )

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (or ``disable()``)."""
        with self._lock:
            self._transition(_FORCED_OPEN, self._now())

    def disable(self) -> None:
        """Let every call through and record nothing until ``reset()`` (or ``force_open()``)."""
        with self._lock:
            self._transition(_DISABLED, self._now())

    def reset(self) -> None:
        """Back to closed with an empty window and a zero rejected count."""
        with self._lock:
            self._rejected = 0
            self._transition(_CLOSED, self._now())  # which also empties the window

    # -- bookkeeping (callers hold the lock in sync code) ---------------------------------

    def _refresh_fast(self) -> None:
        self._fast = self._lean and self._state is _CLOSED and not self.events.has_listeners

    def _transition(self, to: BreakerState, now: float) -> None:
        previous = self._state
        self._state = to
        self._fast = self._lean and to is _CLOSED and not self.events.has_listeners
        self._gen += 1
        if to is _OPEN:
            self._open_until = now + self.reset_timeout
        elif to is _HALF_OPEN:
            self._trial_active = self._trial_done = self._trial_failures = self._trial_slow = 0
        elif to is _CLOSED:
            self._window.reset()
        if self.events.has_listeners and previous is not to:
            self.events.emit(BreakerEvent("state_change", self.name, previous, to))

    def _reject(self, state: BreakerState, remaining: float | None) -> CircuitOpenError:
        self._rejected += 1
        if self.events.has_listeners:
            self.events.emit(BreakerEvent("rejected", self.name))
        return CircuitOpenError(self.name, state.value, remaining)

    def _acquire(self, now: float) -> int:
        """Permission for one call: returns the ticket to complete it with (``-1``: record
        nothing), or raises ``CircuitOpenError``."""
        state = self._state
        if state is _CLOSED:
            return self._gen
        if state is _OPEN:
            if now < self._open_until:
                raise self._reject(state, self._open_until - now)
            self._transition(_HALF_OPEN, now)
            state = _HALF_OPEN
        if state is _HALF_OPEN:
            if self._trial_active + self._trial_done < self.half_open_max_calls:
                self._trial_active += 1
                return self._gen
            raise self._reject(state, None)
        if state is _DISABLED:
            return -1
        raise self._reject(state, None)

    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return _IGNORED  # cancellation, interpreter exit: says nothing about the upstream
        if self._timeout is not None and isinstance(exc, CallTimeoutError):
            # Checked before ``ignore``: the breaker's own deadline always counts.
            if self.events.has_listeners:
                self.events.emit(BreakerEvent("timeout", self.name, error=exc))
            return _FAILURE
        if self._ignore(exc):
            return _IGNORED
        return _FAILURE if self._record(exc) else _SUCCESS

    def _complete(
        self, ticket: int, now: float, duration: float, exc: BaseException | None
    ) -> None:
        """Count one finished call that was admitted with ``ticket``."""
        if ticket != self._gen:
            return  # admitted under an earlier state (or disabled): it no longer counts
        outcome = _SUCCESS if exc is None else self._classify(exc)
        state = self._state
        if state is _HALF_OPEN:
            self._trial_active -= 1
        if outcome == _IGNORED:
            return
        failed = outcome == _FAILURE
        limit = self.slow_call_duration
        slow = limit is not None and duration >= limit
        if self.events.has_listeners:
            self._emit_outcome(failed, slow, duration, exc)
        if state is _CLOSED:
            window = self._window
            window.record(now, failed, slow)
            if window.failures or window.slow_calls:  # a healthy window cannot trip
                self._check_window(now)
        elif state is _HALF_OPEN:
            self._trial_done += 1
            self._trial_failures += failed
            self._trial_slow += slow
            done = self._trial_done
            if done >= self.half_open_max_calls:
                unhealthy = (
                    self._trial_failures / done >= self.failure_rate_threshold
                    or self._trial_slow / done >= self.slow_call_rate_threshold
                )
                self._transition(_OPEN if unhealthy else _CLOSED, now)

    def _emit_outcome(
        self, failed: bool, slow: bool, duration: float, exc: BaseException | None
    ) -> None:
        name = self.name
        if slow:
            self.events.emit(BreakerEvent("slow", name, duration=duration, error=exc))
        kind: EventKind = "failure" if failed else "success"
        self.events.emit(BreakerEvent(kind, name, duration=duration, error=exc))

    def _check_window(self, now: float) -> None:
        window = self._window
        calls = window.calls
        if calls >= self.minimum_calls and (
            window.failures / calls >= self.failure_rate_threshold
            or window.slow_calls / calls >= self.slow_call_rate_threshold
        ):
            self._transition(_OPEN, now)

    # -- callback-driven callers ----------------------------------------------------------

    def inline_ticket(self) -> int:
        """Admit one call the caller completes from callbacks (no coroutine to wrap, e.g.
        the gateway's fast path), the way the decorator's closed-state path admits it: the
        ticket to pass to ``inline_complete``, or ``-1`` when the breaker is not closed and
        lean (then use the decorated or ``call`` path, which rejects or times calls).

        For event-loop code only: like that async path, it takes no lock."""
        return self._gen if self._fast else -1

    def inline_complete(self, ticket: int, exc: BaseException | None = None) -> None:
        """Count a call admitted by ``inline_ticket``: exactly what the decorator's
        closed-state path records for a success or for ``exc``."""
        now = self._now
        if exc is not None:
            self._complete(ticket, now(), 0.0, exc)
        elif self._gen == ticket and self._window.record_success(now()):
            self._check_window(now())

    # -- Policy hooks -----------------------------------------------------------------------

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        now = self._now
        if self._fast:
            # The same closed-state path the decorator inlines (see ``__call__``).
            ticket = self._gen
            try:
                result = await (
                    fn(*args, **kwargs)
                    if inner is invoke_coroutine_function
                    else inner(fn, args, kwargs)
                )
            except BaseException as exc:
                self._complete(ticket, now(), 0.0, exc)
                raise
            if self._gen == ticket and self._window.record_success(now()):
                self._check_window(now())
            return result
        start = now()
        ticket = self._gen if self._state is _CLOSED else self._acquire(start)
        try:
            if self._timeout is None:
                result = await inner(fn, args, kwargs)
            else:
                result = await self._timeout._run_async(inner, fn, args, kwargs)
        except BaseException as exc:
            end = now()
            self._complete(ticket, end, end - start, exc)
            raise
        end = now()
        self._complete(ticket, end, end - start, None)
        return result

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        now = self._now
        lock = self._lock
        with lock:
            start = now()
            ticket = self._acquire(start)
        try:
            if self._timeout is None:
                result = inner(fn, args, kwargs)
            else:
                result = self._timeout._run_sync(inner, fn, args, kwargs)
        except BaseException as exc:
            if ticket >= 0:
                with lock:
                    end = now()
                    self._complete(ticket, end, end - start, exc)
            raise
        if ticket >= 0:
            with lock:
                end = now()
                self._complete(ticket, end, end - start, None)
        return result

    # Overloads rather than one union parameter: with the union mypy infers ``Never`` for
    # an ``async def`` argument; this way ``await policy.call(fetch)`` has fetch's type.
    @overload
    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` through the breaker; ``fn`` may be sync or async (with
        ``timeout`` set, a sync ``fn`` runs in a worker thread so it can be timed out)."""
        inner = invoke_any
        if self._timeout is not None and not is_async_callable(fn):
            inner = invoke_in_thread
        return await self._run_async(inner, fn, args, kwargs)

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``: sync stays sync, async stays async, methods work.

        With no ``timeout`` and no ``slow_call_duration`` the wrapper inlines the
        closed-state path (one state check, one clock read, one record), which is what a
        breaker costs on nearly every call; a sync wrapper takes the lock once, for the
        record only.
        """
        if self._timeout is not None or self.slow_call_duration is not None:
            return super().__call__(fn)
        if not is_async_callable(fn):
            return self._lean_sync_wrapper(fn)
        breaker = self
        now = self._now
        record_success = self._window.record_success
        run_async = self._run_async

        @functools.wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if not breaker._fast:
                return await run_async(invoke_coroutine_function, fn, args, kwargs)
            ticket = breaker._gen
            try:
                result = await fn(*args, **kwargs)  # type: ignore[misc]
            except BaseException as exc:
                breaker._complete(ticket, now(), 0.0, exc)
                raise
            # Still the same closed period (no transition since the call started)?
            if breaker._gen == ticket and record_success(now()):
                # Failures are in the window: this success may complete minimum_calls.
                breaker._check_window(now())
            return result

        return cast(Callable[P, T], guarded)

    def _lean_sync_wrapper(self, fn: Callable[P, T]) -> Callable[P, T]:
        """The sync twin of the async closed-state path in ``__call__``."""
        breaker = self
        now = self._now
        lock = self._lock
        record_success = self._window.record_success
        run_sync = self._run_sync

        @functools.wraps(fn)
        def guarded_sync(*args: Any, **kwargs: Any) -> Any:
            # No lock for these reads. ``_gen`` first: if a transition lands between the
            # two reads, either ``_fast`` is False now or the ticket is stale and the
            # record below (which rechecks it under the lock) counts nothing.
            ticket = breaker._gen
            if not breaker._fast:
                return run_sync(invoke_sync, fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                with lock:
                    breaker._complete(ticket, now(), 0.0, exc)
                raise
            # acquire()/release() rather than ``with``: about half the cost of the statement.
            lock.acquire()
            try:
                if breaker._gen == ticket and record_success(now()):
                    breaker._check_window(now())
            finally:
                lock.release()
            return result

        return cast(Callable[P, T], guarded_sync)


class BreakerRegistry:
    """Named breakers sharing one default configuration (Resilience4j's registry).

    ``registry.get("payments")`` creates the breaker on first use and returns the same one
    afterwards; ``all()`` lists them (for dashboards and metrics exporters). The defaults
    are validated at construction.
    """

    __slots__ = ("_breakers", "_defaults", "_lock")

    def __init__(self, **defaults: Any) -> None:
        if "name" in defaults:
            raise ConfigError("name", defaults["name"], "is given per breaker to get(), not here")
        try:
            CircuitBreaker("defaults", **defaults)
        except TypeError as exc:
            raise ConfigError(
                "defaults", sorted(defaults), f"unknown CircuitBreaker parameter ({exc})"
            ) from None
        self._defaults = defaults
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, name: str, **overrides: Any) -> CircuitBreaker:
        """The breaker called ``name``; created with the defaults (updated by
        ``overrides``) on first use. Later ``overrides`` do not change an existing one."""
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    breaker = CircuitBreaker(name, **{**self._defaults, **overrides})
                    self._breakers[name] = breaker
        return breaker

    def all(self) -> tuple[CircuitBreaker, ...]:
        """Every breaker created so far, in creation order."""
        return tuple(self._breakers.values())

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)
