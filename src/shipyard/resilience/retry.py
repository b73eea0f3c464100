"""``Retry``: run a call again after transient failures, with backoff, jitter and limits.

When it gives up, ``Retry`` re-raises the ORIGINAL last exception (so ``except HTTPError``
keeps working, as with Polly and Resilience4j) with the attempt history attached: a PEP 678
note for humans and ``retry_attempts(exc)`` for code.

The call that succeeds first time is the hot path: it runs in a plain ``try`` that
allocates nothing; history, backoff state and events exist only after a failure.
"""

from __future__ import annotations

import functools
import inspect
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, Literal, cast, overload

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock, SystemClock
from shipyard.core.errors import ConfigError
from shipyard.core.events import EventPublisher
from shipyard.resilience.backoff import JITTERS, Jitter, backoff_delay
from shipyard.resilience.budget import RetryBudget
from shipyard.resilience.policy import (
    Args,
    AsyncInvoker,
    Kwargs,
    P,
    Policy,
    SyncInvoker,
    T,
    invoke_any,
    invoke_coroutine_function,
    invoke_sync,
    is_async_callable,
)

ErrorPredicate = Callable[[BaseException], bool]
ErrorFilter = type[BaseException] | tuple[type[BaseException], ...] | ErrorPredicate
"""Which errors a policy acts on: an exception type, a tuple of types, or a predicate."""

# Request timeout, too early, too many requests: client-side codes that are worth retrying.
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


def is_client_error(exc: BaseException) -> bool:
    """True when ``exc`` carries an HTTP 4xx ``status`` / ``status_code`` that a retry
    cannot fix (every 4xx except 408, 425 and 429). ``Retry``'s default ``give_up_on``."""
    for attribute in ("status", "status_code"):
        status = getattr(exc, attribute, None)
        if isinstance(status, int) and not isinstance(status, bool):
            return 400 <= status <= 499 and status not in _RETRYABLE_CLIENT_STATUSES
    return False


def error_predicate(field: str, spec: ErrorFilter) -> ErrorPredicate:
    """Turn an ``ErrorFilter`` into a predicate, once, at build time (``ConfigError`` if
    ``spec`` is none of the accepted shapes; ``field`` names the parameter)."""
    if isinstance(spec, type) and issubclass(spec, BaseException):
        exc_type: type[BaseException] = spec
        return lambda exc: isinstance(exc, exc_type)
    if isinstance(spec, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in spec):
            raise ConfigError(field, spec, "a tuple must hold only exception types")
        types = spec
        return lambda exc: isinstance(exc, types)
    if callable(spec):
        return cast(ErrorPredicate, spec)
    raise ConfigError(field, spec, "must be an exception type, a tuple of them, or a predicate")


def _never(exc: BaseException) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed attempt: its ``number`` (1 = first call), the error, and the ``delay``
    waited before the next attempt (``None`` when no further attempt was made)."""

    number: int
    error_type: str
    error: str
    delay: float | None


RetryEventKind = Literal["retry", "success_after_retry", "give_up", "budget_exhausted"]


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """What a ``Retry`` did: ``retry`` (waiting ``delay`` after failed ``attempt``),
    ``success_after_retry``, ``give_up`` (``reason`` says why) or ``budget_exhausted``."""

    kind: RetryEventKind
    retry: str
    attempt: int
    delay: float | None = None
    error: BaseException | None = None
    reason: str | None = None


_ATTEMPTS_ATTRIBUTE = "__shipyard_retry_attempts__"


def retry_attempts(exc: BaseException) -> tuple[Attempt, ...]:
    """The attempts a ``Retry`` made before giving up with ``exc`` (empty if none did)."""
    attempts = getattr(exc, _ATTEMPTS_ATTRIBUTE, ())
    return cast(tuple[Attempt, ...], attempts)


class Retry(Policy):
    """Retry failed calls with capped exponential backoff and jitter.

    * ``max_attempts`` counts the first call (3 = one call and up to two retries).
    * ``retry_on``: errors worth retrying; ``give_up_on``: errors that are final even if
      ``retry_on`` matches (default ``is_client_error``: never retry a 4xx). Both take
      exception types or a predicate. ``asyncio.CancelledError`` is never retried.
    * An error's ``retry_after`` attribute (seconds; ``CircuitOpenError``,
      ``RateLimitExceededError`` and HTTP 429/503 errors carry one) stretches the wait to
      ``max(backoff, retry_after)``.
    * ``deadline``: seconds for all attempts together; no retry starts whose wait would
      cross it. ``budget``: a shared ``RetryBudget`` that every retry must draw from.
    """

    __slots__ = (
        "_budget",
        "_clock",
        "_deadline",
        "_give_up_on",
        "_random",
        "_retry_on",
        "base_delay",
        "events",
        "jitter",
        "max_attempts",
        "max_delay",
        "multiplier",
        "name",
    )

    def __init__(
        self,
        max_attempts: int = 3,
        base_delay: float = 0.1,
        multiplier: float = 2.0,
        max_delay: float = 10.0,
        jitter: Jitter = "full",
        retry_on: ErrorFilter = (Exception,),
        give_up_on: ErrorFilter | None = is_client_error,
        deadline: float | None = None,
        budget: RetryBudget | None = None,
        clock: Clock = SYSTEM_CLOCK,
        random: Callable[[], float] = _random.random,
        *,
        name: str = "retry",
    ) -> None:
        self.max_attempts = validation.at_least("max_attempts", max_attempts, 1)
        self.base_delay = validation.non_negative("base_delay", base_delay)
        self.multiplier = validation.positive("multiplier", multiplier)
        if self.multiplier < 1:
            raise ConfigError("multiplier", multiplier, "must be >= 1 (1 = constant delay)")
        self.max_delay = validation.non_negative("max_delay", max_delay)
        if self.max_delay < self.base_delay:
            raise ConfigError("max_delay", max_delay, f"must be >= base_delay ({base_delay})")
        validation.one_of("jitter", jitter, JITTERS)
        self.jitter: Jitter = jitter
        self._retry_on = error_predicate("retry_on", retry_on)
        self._give_up_on = (
            _never if give_up_on is None else error_predicate("give_up_on", give_up_on)
        )
        self._deadline = validation.optional_positive("deadline", deadline)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigError("budget", budget, "must be a RetryBudget or None")
        self._budget = budget
        self._clock = clock
        if not callable(random):
            raise ConfigError("random", random, "must be a callable returning a float in [0, 1)")
        self._random = random
        self.name = name
        self.events: EventPublisher[RetryEvent] = EventPublisher(f"retry:{name}")

    def __repr__(self) -> str:
        return (
            f"Retry(name={self.name!r}, max_attempts={self.max_attempts}, "
            f"base_delay={self.base_delay}, jitter={self.jitter!r})"
        )

    def should_retry(self, error: BaseException, *, attempt: int | None = None) -> bool:
        """Whether this retry would try again after ``error``: it is an ``Exception`` (never
        a cancellation), ``retry_on`` matches it and ``give_up_on`` does not. With
        ``attempt`` (the number of the attempt that just failed, 1 = first call) it is also
        False once ``max_attempts`` are used up. Deadline and budget are not consulted:
        they depend on when the call started and on other callers.

        For code that runs attempts itself (a saga step, a message handler) but wants the
        same rules as the ``Retry`` it was given.
        """
        if attempt is not None and attempt >= self.max_attempts:
            return False
        return (
            isinstance(error, Exception) and self._retry_on(error) and not self._give_up_on(error)
        )

    # -- the hot path -------------------------------------------------------------------

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        started = self._start()
        try:
            return await inner(fn, args, kwargs)
        except Exception as exc:
            error = exc
        # Outside the except block, so later errors do not chain to this one.
        return await self._retry_async(inner, fn, args, kwargs, error, started)

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        started = self._start()
        try:
            return inner(fn, args, kwargs)
        except Exception as exc:
            error = exc
        return self._retry_sync(inner, fn, args, kwargs, error, started)

    def _stage_async(self, next_stage: AsyncInvoker) -> AsyncInvoker:
        """A pipeline stage whose first attempt is a plain ``try``, like the decorator."""
        retry_async = self._retry_async
        start = self._starter()

        async def retry_stage(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
            started = 0.0 if start is None else start()
            try:
                return await next_stage(fn, args, kwargs)
            except Exception as exc:
                error = exc
            # Outside the except block, so later errors do not chain to this one.
            return await retry_async(next_stage, fn, args, kwargs, error, started)

        return retry_stage

    @overload
    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under this retry; ``fn`` may be sync or async."""
        if self._budget is not None:
            self._budget.deposit()
        started = 0.0 if self._deadline is None else self._clock.monotonic()
        try:
            result = fn(*args, **kwargs)
            # Checking the exact coroutine type first skips inspect's slower generic test.
            if type(result) is CoroutineType or inspect.isawaitable(result):
                return await result
            return result
        except Exception as exc:
            error = exc
        return await self._retry_async(invoke_any, fn, args, kwargs, error, started)

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``. The wrapper calls ``fn`` directly, so a call that succeeds
        costs one extra frame and a ``try`` (plus a clock read with a ``deadline``)."""
        start = self._starter()
        if is_async_callable(fn):
            retry_async = self._retry_async
            coroutine_fn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = 0.0 if start is None else start()
                try:
                    return await coroutine_fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                return await retry_async(
                    invoke_coroutine_function, fn, args, kwargs, error, started
                )

            return cast(Callable[P, T], async_wrapper)

        retry_sync = self._retry_sync

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            started = 0.0 if start is None else start()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                error = exc
            return retry_sync(invoke_sync, fn, args, kwargs, error, started)

        return cast(Callable[P, T], sync_wrapper)

    def _start(self) -> float:
        """Deposit into the budget and note the start time, only when configured."""
        budget = self._budget
        if budget is not None:
            budget.deposit()
        return 0.0 if self._deadline is None else self._clock.monotonic()

    def _starter(self) -> Callable[[], float] | None:
        """What a wrapped call runs before its first attempt, decided once: nothing without
        budget and deadline, the bare clock with only a deadline, else ``_start``."""
        if self._budget is not None:
            return self._start
        if self._deadline is None:
            return None
        # The system clock's own reading, without its method's frame.
        return time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic

    # -- after a failure ----------------------------------------------------------------

    async def _retry_async(
        self,
        inner: AsyncInvoker,
        fn: Callable[..., Any],
        args: Args,
        kwargs: Kwargs,
        error: Exception,
        started: float,
    ) -> Any:
        history: list[Attempt] = []
        attempt = 1
        while True:
            delay = self._next_delay(attempt, error, history, started)
            if delay is None:
                raise error
            await self._clock.sleep(delay)
            attempt += 1
            try:
                result = await inner(fn, args, kwargs)
            except Exception as exc:
                error = exc
                continue
            self._succeeded(attempt)
            return result

    def _retry_sync(
        self,
        inner: SyncInvoker,
        fn: Callable[..., Any],
        args: Args,
        kwargs: Kwargs,
        error: Exception,
        started: float,
    ) -> Any:
        history: list[Attempt] = []
        attempt = 1
        while True:
            delay = self._next_delay(attempt, error, history, started)
            if delay is None:
                raise error
            self._clock.sleep_blocking(delay)
            attempt += 1
            try:
                result = inner(fn, args, kwargs)
            except Exception as exc:
                error = exc
                continue
            self._succeeded(attempt)
            return result

    def _succeeded(self, attempt: int) -> None:
        if self.events.has_listeners:
            self.events.emit(RetryEvent("success_after_retry", self.name, attempt))

    def _next_delay(
        self, attempt: int, error: Exception, history: list[Attempt], started: float
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up with ``error``
        (after attaching the history to it)."""
        if not self._retry_on(error):
            if attempt > 1:
                self._give_up(attempt, error, history, "error is not retryable")
            return None
        if self._give_up_on(error):
            self._give_up(attempt, error, history, "error is final (give_up_on)")
            return None
        if attempt >= self.max_attempts:
            self._give_up(attempt, error, history, f"all {self.max_attempts} attempts failed")
            return None
        previous = history[-1].delay if history else None
        delay = backoff_delay(
            attempt,
            base_delay=self.base_delay,
            multiplier=self.multiplier,
            max_delay=self.max_delay,
            jitter=self.jitter,
            previous_delay=previous,
            random=self._random,
        )
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > delay:
            delay = float(hint)
        if self._deadline is not None:
            elapsed = self._clock.monotonic() - started
            if elapsed + delay > self._deadline:
                self._give_up(
                    attempt,
                    error,
                    history,
                    f"waiting {delay:.3f}s more would cross the {self._deadline:g}s deadline",
                )
                return None
        if self._budget is not None and not self._budget.try_withdraw():
            if self.events.has_listeners:
                self.events.emit(RetryEvent("budget_exhausted", self.name, attempt, None, error))
            self._give_up(
                attempt, error, history, "retry budget exhausted (too many retries fleet-wide)"
            )
            return None
        history.append(Attempt(attempt, type(error).__qualname__, repr(error), delay))
        if self.events.has_listeners:
            self.events.emit(RetryEvent("retry", self.name, attempt, delay, error))
        return delay

    def _give_up(self, attempt: int, error: Exception, history: list[Attempt], reason: str) -> None:
        attempts = (*history, Attempt(attempt, type(error).__qualname__, repr(error), None))
        setattr(error, _ATTEMPTS_ATTRIBUTE, attempts)
        lines = [f"retry {self.name!r} gave up after {attempt} attempt(s): {reason}"]
        lines.extend(
            f"  attempt {a.number}: {a.error_type}"
            + (f", waited {a.delay:.3f}s" if a.delay is not None else "")
            for a in attempts
        )
        error.add_note("\n".join(lines))
        if self.events.has_listeners:
            self.events.emit(RetryEvent("give_up", self.name, attempt, None, error, reason))
