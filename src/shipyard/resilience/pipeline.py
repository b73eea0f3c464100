"""``Pipeline``: several policies composed once into one, outermost first.

The recommended order, outermost to innermost, and why::

    Pipeline(
        Fallback(...),          # 1. catches whatever the rest finally raises
        Timeout(total),         # 2. bounds the whole operation, retry sleeps included
        Retry(...),             # 3. each attempt below is a fresh trip through the breaker
        CircuitBreaker(...),    # 4. counts every attempt; when open, fails fast and its
                                #    retry_after hint tells Retry how long to wait
        RateLimiter / Bulkhead, # 5. only calls the breaker admits take a token or a slot
        Timeout(per_attempt),   # 6. a hung attempt becomes a failure the breaker counts
    )

This is the order Polly v8 and Resilience4j document. ``Pipeline.from_dict`` places the
stages of a mapping in this order whatever the key order; a list keeps the given order.

Everything is decided when the pipeline is built (Polly's "decide at build time"), so a
call allocates no closures and makes no sync/async decisions. ``call`` runs a chain of
stages, each the policy's ``_stage_async(next)`` (by default a pre-bound
``functools.partial`` of ``_run_async``); the decorator nests the policies' own decorators,
whose wrappers inline each policy's common path.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.resilience.breaker import CircuitBreaker
from shipyard.resilience.bulkhead import Bulkhead
from shipyard.resilience.policy import (
    Args,
    AsyncInvoker,
    Kwargs,
    P,
    Policy,
    SyncInvoker,
    T,
    invoke_any,
    invoke_sync,
)
from shipyard.resilience.ratelimit import SlidingWindowLimiter, TokenBucketLimiter
from shipyard.resilience.retry import Retry
from shipyard.resilience.timeout import Timeout


def _chain_async(policies: Sequence[Policy], innermost: AsyncInvoker) -> AsyncInvoker:
    invoker = innermost
    for policy in reversed(policies):
        invoker = policy._stage_async(invoker)
    return invoker


def _chain_sync(policies: Sequence[Policy], innermost: SyncInvoker) -> SyncInvoker:
    invoker = innermost
    for policy in reversed(policies):
        invoker = functools.partial(policy._run_sync, invoker)
    return invoker


class Pipeline(Policy):
    """Policies composed into one, ``Pipeline(outermost, ..., innermost)``.

    A pipeline is itself a policy: decorate with it, ``await pipeline.call(fn, *args)``,
    ``pipeline.call_sync(fn, *args)``, or nest it in another pipeline (it is flattened).
    """

    __slots__ = ("_any", "_sync", "policies")

    def __init__(self, *policies: Policy) -> None:
        flat: list[Policy] = []
        for index, policy in enumerate(policies):
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, Policy):
                flat.append(policy)
            else:
                raise ConfigError(
                    f"policies[{index}]", policy, "must be a Policy (breaker, retry, ...)"
                )
        self.policies: tuple[Policy, ...] = tuple(flat)
        self._any = _chain_async(self.policies, invoke_any)
        self._sync = _chain_sync(self.policies, invoke_sync)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(type(p).__name__ for p in self.policies)})"

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        # Only reached when a pipeline is used as a stage of a foreign composition.
        return await _chain_async(self.policies, inner)(fn, args, kwargs)

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        return _chain_sync(self.policies, inner)(fn, args, kwargs)

    @overload
    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` through every stage; ``fn`` may be sync or async."""
        return await self._any(fn, args, kwargs)

    def call_sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the synchronous ``fn`` through every stage, blocking."""
        result: T = self._sync(fn, args, kwargs)
        return result

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn`` with the whole pipeline (sync stays sync, async stays async).

        The policies' own decorators are nested, innermost first: each one inlines its
        common path and calls the next wrapper directly, which is one frame less than the
        wrapper-plus-stages chain ``call`` uses (the outcome is the same).
        """
        wrapped: Callable[P, T] = fn
        for policy in reversed(self.policies):
            wrapped = policy(wrapped)
        if wrapped is not fn:
            wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapped

    @classmethod
    def from_dict(
        cls,
        config: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        name: str = "default",
        clock: Clock = SYSTEM_CLOCK,
    ) -> Pipeline:
        """Build a pipeline from plain data, e.g. a YAML config section.

        A mapping such as ``{"timeout": 2, "retry": {"max_attempts": 3},
        "circuit_breaker": {"failure_rate_threshold": 0.5}, "bulkhead": {"max_concurrent":
        10}}`` is placed in the recommended order; a list of one-key mappings keeps its
        order. Keys: ``total_timeout``, ``retry``, ``circuit_breaker``, ``rate_limiter``,
        ``bulkhead``, ``timeout``. A bad key or parameter raises ``ConfigError`` naming it.
        """
        if isinstance(config, Mapping):
            unknown = [key for key in config if key not in _STAGES]
            if unknown:
                _unknown_stage(str(unknown[0]))
            items = [(key, config[key]) for key in _STAGES if key in config]
        elif isinstance(config, Sequence) and not isinstance(config, str | bytes):
            items = []
            for index, entry in enumerate(config):
                if not isinstance(entry, Mapping) or len(entry) != 1:
                    raise ConfigError(
                        f"[{index}]", entry, "each list entry must be a one-key mapping"
                    )
                ((key, value),) = entry.items()
                if key not in _STAGES:
                    _unknown_stage(f"[{index}].{key}")
                items.append((key, value))
        else:
            raise ConfigError("pipeline", config, "must be a mapping or a list of mappings")
        return cls(*(_STAGES[key](key, value, name, clock) for key, value in items))


def _unknown_stage(key: str) -> None:
    stages = ", ".join(_STAGES)
    raise ConfigError(key, key.rsplit(".", 1)[-1], f"unknown stage; use one of {stages}")


def _construct(
    key: str, factory: Callable[..., Policy], params: Mapping[str, Any], fixed: Mapping[str, Any]
) -> Policy:
    accepted = inspect.signature(factory).parameters
    for param in params:
        if param not in accepted or param in fixed:
            allowed = sorted(p for p in accepted if p not in fixed and p != "self")
            raise ConfigError(f"{key}.{param}", params[param], f"unknown; allowed: {allowed}")
    try:
        return factory(**fixed, **params)
    except ConfigError as error:
        raise ConfigError(f"{key}.{error.field}", error.value, error.allowed) from None
    except TypeError as error:
        raise ConfigError(key, dict(params), str(error)) from None


def _params(key: str, value: Any, scalar: str | None = None) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if scalar is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return {scalar: value}
    shape = f"a number ({scalar}) or a mapping" if scalar else "a mapping of parameters"
    raise ConfigError(key, value, f"must be {shape}")


def _timeout(key: str, value: Any, name: str, clock: Clock) -> Policy:
    return _construct(key, Timeout, _params(key, value, "seconds"), {"clock": clock})


def _retry(key: str, value: Any, name: str, clock: Clock) -> Policy:
    return _construct(key, Retry, _params(key, value), {"clock": clock})


def _breaker(key: str, value: Any, name: str, clock: Clock) -> Policy:
    return _construct(key, CircuitBreaker, _params(key, value), {"name": name, "clock": clock})


def _bulkhead(key: str, value: Any, name: str, clock: Clock) -> Policy:
    params = _params(key, value, "max_concurrent")
    return _construct(key, Bulkhead, params, {"name": name, "clock": clock})


def _rate_limiter(key: str, value: Any, name: str, clock: Clock) -> Policy:
    params = dict(_params(key, value))
    kind = params.pop("kind", "token_bucket")
    factories: dict[str, Callable[..., Policy]] = {
        "token_bucket": TokenBucketLimiter,
        "sliding_window": SlidingWindowLimiter,
    }
    if kind not in factories:
        raise ConfigError(f"{key}.kind", kind, "must be 'token_bucket' or 'sliding_window'")
    return _construct(key, factories[kind], params, {"name": name, "clock": clock})


_STAGES: dict[str, Callable[[str, Any, str, Clock], Policy]] = {
    "total_timeout": _timeout,
    "retry": _retry,
    "circuit_breaker": _breaker,
    "rate_limiter": _rate_limiter,
    "bulkhead": _bulkhead,
    "timeout": _timeout,
}
