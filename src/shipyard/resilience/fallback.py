"""``Fallback``: tiered degradation — live → cache → default.

``await Fallback(from_cache, {"items": []}).call(fetch_live, user_id)`` tries ``fetch_live``;
if it fails with a handled error, ``from_cache(user_id)``; if that fails too, the static
default. When every tier fails the LAST tier's error is raised, chained (``__context__``)
through every earlier tier's error back to the primary's, so the root cause stays visible in
the traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shipyard.core.errors import ConfigError
from shipyard.core.events import EventPublisher
from shipyard.resilience.policy import (
    Args,
    AsyncInvoker,
    Kwargs,
    Policy,
    SyncInvoker,
    is_async_callable,
)
from shipyard.resilience.retry import ErrorFilter, error_predicate


@dataclass(frozen=True, slots=True)
class FallbackEvent:
    """``served``: tier number ``tier`` (1 = first fallback) answered after ``error``;
    ``exhausted``: every tier failed and ``error`` (the last one) is being raised."""

    kind: Literal["served", "exhausted"]
    fallback: str
    tier: int
    tier_name: str
    error: BaseException


_VALUE, _SYNC, _ASYNC = 0, 1, 2


def _tier_name(tier: object) -> str:
    if callable(tier):
        return str(getattr(tier, "__qualname__", None) or type(tier).__qualname__)
    return f"value {tier!r}"[:80]


class Fallback(Policy):
    """On a handled error, try each tier in order until one answers.

    A tier is a callable (sync or async) called with the primary's exact arguments, or a
    plain value (not callable) returned as is. ``handle`` (exception types or a predicate,
    default every ``Exception``) says which errors fall through to the next tier; other
    errors, and ``asyncio.CancelledError`` always, propagate at once.
    """

    __slots__ = ("_handle", "_kinds", "_names", "events", "name", "tiers")

    def __init__(
        self, *tiers: object, handle: ErrorFilter = (Exception,), name: str = "fallback"
    ) -> None:
        if not tiers:
            raise ConfigError("tiers", tiers, "give at least one fallback (callable or value)")
        self.tiers = tiers
        self._kinds = tuple(
            _ASYNC if is_async_callable(t) else _SYNC if callable(t) else _VALUE for t in tiers
        )
        self._names = tuple(_tier_name(t) for t in tiers)
        self._handle = error_predicate("handle", handle)
        self.name = name
        self.events: EventPublisher[FallbackEvent] = EventPublisher(f"fallback:{name}")

    def __repr__(self) -> str:
        return f"Fallback({', '.join(self._names)})"

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        try:
            return await inner(fn, args, kwargs)
        except Exception as exc:
            if not self._handle(exc):
                raise
            # Called inside the except block, so a failing tier chains to this error.
            return await self._tier_async(0, args, kwargs, exc)

    async def _tier_async(self, index: int, args: Args, kwargs: Kwargs, error: Exception) -> Any:
        tier = self.tiers[index]
        kind = self._kinds[index]
        try:
            if kind == _VALUE:
                result = tier
            else:
                result = tier(*args, **kwargs)  # type: ignore[operator]
                if kind == _ASYNC or inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            if not self._handle(exc) or index + 1 == len(self.tiers):
                if self.events.has_listeners:
                    self._emit("exhausted", index, exc)
                raise
            return await self._tier_async(index + 1, args, kwargs, exc)
        if self.events.has_listeners:
            self._emit("served", index, error)
        return result

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        try:
            return inner(fn, args, kwargs)
        except Exception as exc:
            if not self._handle(exc):
                raise
            return self._tier_sync(0, args, kwargs, exc)

    def _tier_sync(self, index: int, args: Args, kwargs: Kwargs, error: Exception) -> Any:
        tier = self.tiers[index]
        kind = self._kinds[index]
        if kind == _ASYNC:
            raise ConfigError(
                f"tiers[{index}]", tier, "is async; synchronous calls need sync tiers or values"
            )
        try:
            result = tier if kind == _VALUE else tier(*args, **kwargs)  # type: ignore[operator]
        except Exception as exc:
            if not self._handle(exc) or index + 1 == len(self.tiers):
                if self.events.has_listeners:
                    self._emit("exhausted", index, exc)
                raise
            return self._tier_sync(index + 1, args, kwargs, exc)
        if self.events.has_listeners:
            self._emit("served", index, error)
        return result

    def _emit(self, kind: Literal["served", "exhausted"], index: int, error: Exception) -> None:
        self.events.emit(FallbackEvent(kind, self.name, index + 1, self._names[index], error))
