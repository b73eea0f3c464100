"""The shape every resilience policy shares, and how policies are invoked.

A policy is built once and then applied many times, Polly-style: whether a call is sync or
async and which policy wraps which is decided when the decorator or pipeline is built, not on
each call. A policy implements two hooks:

* ``_run_async(inner, fn, args, kwargs)`` — guard one call in async code; ``inner`` runs
  the next stage (another policy, or finally ``fn`` itself) and must be awaited;
* ``_run_sync(inner, fn, args, kwargs)`` — the same for a plain synchronous function.

``inner`` is a pre-bound callable chosen at build time, so composing policies costs no
closure per call. Everything else (``call``, ``call_sync``, the decorator) derives from the
two hooks. A policy whose common path can be inlined also overrides ``_stage_async(next)``,
which a :class:`~shipyard.resilience.Pipeline` calls once at build time to get the stage
that runs this policy around ``next``.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from shipyard.core.events import EventPublisher

P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E")

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
AsyncInvoker = Callable[[Callable[..., Any], Args, Kwargs], Awaitable[Any]]
"""Runs ``fn(*args, **kwargs)`` (or the rest of a pipeline around it) and awaits it."""
SyncInvoker = Callable[[Callable[..., Any], Args, Kwargs], Any]
"""Runs ``fn(*args, **kwargs)`` (or the rest of a pipeline around it) synchronously."""


async def invoke_coroutine_function(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
    """Innermost stage for a function known (at build time) to be ``async def``.

    Policies whose ``inner`` is this very function call ``fn`` directly instead, which
    saves a coroutine frame per call (one identity test decides it).
    """
    return await fn(*args, **kwargs)


async def invoke_any(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
    """Innermost stage when ``fn`` may be sync or async: await the result if awaitable."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def invoke_sync(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
    """Innermost stage for a synchronous function."""
    return fn(*args, **kwargs)


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, including ``functools.partial`` and callables whose
    ``__call__`` is ``async def``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    )


class WatchedEvents(EventPublisher[E]):
    """An ``EventPublisher`` that calls ``changed()`` whenever listeners come or go, so
    its policy keeps a fast-path flag up to date instead of asking on every call."""

    __slots__ = ("_changed",)

    def __init__(self, source: str, changed: Callable[[], None]) -> None:
        super().__init__(source)
        self._changed = changed

    def subscribe(self, listener: Callable[[E], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that unsubscribes."""
        unsubscribe_listener = super().subscribe(listener)
        self._changed()

        def unsubscribe() -> None:
            unsubscribe_listener()
            self._changed()

        return unsubscribe


class Policy(ABC):
    """Base class of resilience policies: breaker, retry, timeout, bulkhead, limiter, fallback.

    Use a policy as a decorator (keeps the function's type for mypy, sync stays sync and
    async stays async), or call through it: ``await policy.call(fn, *args)`` for sync or
    async ``fn`` in async code, ``policy.call_sync(fn, *args)`` in sync code.
    """

    __slots__ = ()

    @abstractmethod
    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        """Guard one asynchronous invocation of ``inner(fn, args, kwargs)``."""

    @abstractmethod
    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        """Guard one synchronous invocation of ``inner(fn, args, kwargs)``."""

    def _stage_async(self, next_stage: AsyncInvoker) -> AsyncInvoker:
        """This policy as one pipeline stage around ``next_stage``, built once.

        The default binds ``_run_async``; policies override it with a closure that inlines
        their common path (no extra method lookups or frames per call).
        """
        return functools.partial(self._run_async, next_stage)

    @overload
    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under this policy; ``fn`` may be sync or async."""
        return await self._run_async(invoke_any, fn, args, kwargs)

    def call_sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the synchronous ``fn(*args, **kwargs)`` under this policy, blocking."""
        return cast(T, self._run_sync(invoke_sync, fn, args, kwargs))

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn``; the wrapper has the same signature and sync/async nature."""
        if is_async_callable(fn):
            run_async = self._run_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await run_async(invoke_coroutine_function, fn, args, kwargs)

            return cast(Callable[P, T], async_wrapper)

        run_sync = self._run_sync

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return run_sync(invoke_sync, fn, args, kwargs)

        return cast(Callable[P, T], sync_wrapper)
