"""Rate limiters (token bucket, sliding-window counter) over a pluggable counter store.

The algorithm runs INSIDE the store (``RateLimitStore.token_bucket`` / ``sliding_window``),
so a shared store can make each decision atomic across processes — a Redis store runs each
as one Lua script. The maths lives here as pure functions over small state objects
(``token_bucket_step``, ``sliding_window_step``) so other stores mirror them exactly.

Time passed to stores is wall time (``clock.now()``): a store shared between processes
needs a clock they agree on, which a per-process monotonic clock is not. A clock stepping
backwards is tolerated (elapsed time is clamped at zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.resilience.errors import RateLimitExceededError
from shipyard.resilience.policy import Args, AsyncInvoker, Kwargs, Policy, SyncInvoker

# Decisions and states are NamedTuples, not frozen dataclasses: they are built on every
# request a gateway admits, and a tuple is several times cheaper to create.

# Absorbs float noise so that waiting exactly ``retry_after`` is always enough.
_EPSILON = 1e-9


class RateLimitDecision(NamedTuple):
    """The answer for one request: ``allowed``; the ``limit`` (burst or requests per
    window); ``remaining`` requests right now; ``reset_after`` seconds until the limiter is
    back to full; ``retry_after`` seconds until this request would pass (0 if allowed).
    These map onto the ``RateLimit-*`` / ``Retry-After`` HTTP headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


# -- the pure algorithms --------------------------------------------------------------------


class TokenBucketState(NamedTuple):
    """Tokens left at time ``updated`` (wall seconds)."""

    tokens: float
    updated: float


def token_bucket_step(
    state: TokenBucketState | None, *, rate: float, burst: int, cost: int, now: float
) -> tuple[TokenBucketState, RateLimitDecision]:
    """One token-bucket decision: refill ``rate`` tokens/s up to ``burst``, then take
    ``cost`` tokens if there are enough. A missing state is a full bucket."""
    if state is None:
        tokens = float(burst)
    else:
        elapsed = max(0.0, now - state.updated)
        tokens = min(float(burst), state.tokens + elapsed * rate)
    allowed = tokens + _EPSILON >= cost
    if allowed:
        tokens = max(0.0, tokens - cost)
        retry_after = 0.0
    else:
        retry_after = (cost - tokens) / rate
    decision = RateLimitDecision(
        allowed=allowed,
        limit=burst,
        remaining=math.floor(tokens + _EPSILON),
        reset_after=(burst - tokens) / rate,
        retry_after=retry_after,
    )
    return TokenBucketState(tokens, now), decision


class SlidingWindowState(NamedTuple):
    """Counts in window ``window_number`` (``floor(now / window)``) and the one before."""

    window_number: int
    current: int
    previous: int


def sliding_window_step(
    state: SlidingWindowState | None, *, limit: int, window: float, cost: int, now: float
) -> tuple[SlidingWindowState, RateLimitDecision]:
    """One sliding-window-counter decision (Cloudflare's and Kong's): the previous fixed
    window's count, weighted by how much of it still overlaps the sliding window, plus the
    current window's count, must stay within ``limit``."""
    index = math.floor(now / window)
    if state is None or state.window_number < index - 1:
        previous, current = 0, 0
    elif state.window_number == index - 1:
        previous, current = state.current, 0
    else:
        # Same window, or the clock stepped back into an older one: keep the newer counts.
        index = max(index, state.window_number)
        previous, current = state.previous, state.current
    elapsed = min(window, max(0.0, now - index * window))
    estimated = previous * (1.0 - elapsed / window) + current
    allowed = estimated + cost <= limit + _EPSILON
    if allowed:
        current += cost
        estimated += cost
        retry_after = 0.0
    else:
        retry_after = _sliding_retry_after(previous, current, limit, window, cost, elapsed)
    if current:
        reset_after = (index + 2) * window - now
    elif previous:
        reset_after = (index + 1) * window - now
    else:
        reset_after = 0.0
    decision = RateLimitDecision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, math.floor(limit - estimated + _EPSILON)),
        reset_after=max(0.0, reset_after),
        retry_after=retry_after,
    )
    return SlidingWindowState(index, current, previous), decision


def _sliding_retry_after(
    previous: int, current: int, limit: int, window: float, cost: int, elapsed: float
) -> float:
    """Seconds until ``previous * weight + current + cost <= limit`` (``cost <= limit``)."""
    room = limit - current - cost
    if room >= 0:
        # Still in this window: wait until the previous window's weight has decayed enough.
        return max(0.0, window * (1.0 - room / previous) - elapsed)
    # Only the next window can fit it; there this window's count becomes "previous".
    until_next = window - elapsed
    room = limit - cost
    if current <= room:
        return until_next
    return until_next + window * (1.0 - room / current)


# -- stores ---------------------------------------------------------------------------------


class RateLimitStore(Protocol):
    """Where limiter counters live. Each operation is one ATOMIC read-decide-write."""

    async def token_bucket(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """Apply ``token_bucket_step`` to ``key``'s state atomically."""

    async def sliding_window(
        self, key: str, limit: int, window: float, cost: int, now: float
    ) -> RateLimitDecision:
        """Apply ``sliding_window_step`` to ``key``'s state atomically."""


@runtime_checkable
class SyncRateLimitStore(Protocol):
    """A store that can also decide without awaiting (needed by synchronous callers)."""

    def token_bucket_sync(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """Blocking ``token_bucket``."""

    def sliding_window_sync(
        self, key: str, limit: int, window: float, cost: int, now: float
    ) -> RateLimitDecision:
        """Blocking ``sliding_window``."""


class MemoryRateLimitStore:
    """In-process counters (``memory://``): atomic because each decision runs without
    awaiting. Memory stays bounded: a key is dropped once idle long enough to be back to
    full (its state then equals a fresh one), and beyond ``max_keys`` the least recently
    used key is dropped (which only ever lets that key through early, never blocks it)."""

    __slots__ = ("_buckets", "_windows", "max_keys")

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self.max_keys = validation.at_least("max_keys", max_keys, 1)
        # Insertion order is kept as least-recently-used first: each touch re-inserts.
        self._buckets: dict[str, tuple[float, TokenBucketState]] = {}
        self._windows: dict[str, tuple[float, SlidingWindowState]] = {}

    def __len__(self) -> int:
        """Keys currently held (both algorithms)."""
        return len(self._buckets) + len(self._windows)

    async def token_bucket(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.token_bucket``."""
        return self.token_bucket_sync(key, rate, burst, cost, now)

    async def sliding_window(
        self, key: str, limit: int, window: float, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.sliding_window``."""
        return self.sliding_window_sync(key, limit, window, cost, now)

    def token_bucket_sync(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.token_bucket``."""
        entry = self._buckets.pop(key, None)
        state, decision = token_bucket_step(
            None if entry is None else entry[1], rate=rate, burst=burst, cost=cost, now=now
        )
        self._buckets[key] = (now + decision.reset_after, state)
        _evict(self._buckets, now, self.max_keys)
        return decision

    def sliding_window_sync(
        self, key: str, limit: int, window: float, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.sliding_window``."""
        entry = self._windows.pop(key, None)
        state, decision = sliding_window_step(
            None if entry is None else entry[1], limit=limit, window=window, cost=cost, now=now
        )
        self._windows[key] = (now + decision.reset_after, state)
        _evict(self._windows, now, self.max_keys)
        return decision


def _evict(entries: dict[str, tuple[float, Any]], now: float, max_keys: int) -> None:
    """Drop up to two expired least-recently-used keys, and any beyond ``max_keys``.

    Two per call is enough to keep up with one insertion per call, and keeps it O(1).
    """
    for _ in range(2):
        oldest = next(iter(entries), None)
        if oldest is None or entries[oldest][0] > now:
            break
        del entries[oldest]
    while len(entries) > max_keys:
        del entries[next(iter(entries))]


# -- limiters -------------------------------------------------------------------------------


class RateLimiter(Protocol):
    """Anything that decides whether a request for ``key`` may pass now."""

    async def acquire(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units for ``key``; the decision says whether that was allowed."""


class _LimiterPolicy(Policy):
    """What both limiters share: key namespacing, ``max_wait`` and the policy hooks.

    As a policy (``call``, decorator, pipeline stage) the limiter uses one shared key, so
    it limits everything it guards together; use ``acquire(key)`` for per-client limits.
    """

    __slots__ = ("_clock", "_prefix", "_store", "_sync_store", "max_wait", "name")

    def __init__(self, name: str, store: RateLimitStore | None, clock: Clock, max_wait: float):
        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "must be a non-empty string")
        self.name = name
        self.max_wait = validation.non_negative("max_wait", max_wait)
        self._store: RateLimitStore = MemoryRateLimitStore() if store is None else store
        self._sync_store = self._store if isinstance(self._store, SyncRateLimitStore) else None
        self._clock = clock
        # Limiters sharing a store must not share counters.
        self._prefix = f"{name}:"

    async def acquire(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units for ``key`` (``ConfigError`` if ``cost`` could never pass)."""
        raise NotImplementedError

    def acquire_sync(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Blocking ``acquire``; needs a store with sync operations (the memory store)."""
        raise NotImplementedError

    def _require_sync_store(self) -> SyncRateLimitStore:
        if self._sync_store is None:
            raise ConfigError(
                "store",
                self._store,
                "synchronous calls need a store with sync operations (MemoryRateLimitStore)",
            )
        return self._sync_store

    async def _run_async(
        self, inner: AsyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        decision = await self.acquire()
        if not decision.allowed:
            await self._wait_async(decision)
        return await inner(fn, args, kwargs)

    async def _wait_async(self, decision: RateLimitDecision) -> None:
        """Sleep and retry until allowed, or raise once ``max_wait`` cannot cover it."""
        deadline = self._clock.monotonic() + self.max_wait
        while not decision.allowed:
            left = deadline - self._clock.monotonic()
            if decision.retry_after > left + _EPSILON:
                raise RateLimitExceededError(self.name, decision.retry_after)
            await self._clock.sleep(decision.retry_after)
            decision = await self.acquire()

    def _run_sync(
        self, inner: SyncInvoker, fn: Callable[..., Any], args: Args, kwargs: Kwargs
    ) -> Any:
        decision = self.acquire_sync()
        if not decision.allowed:
            deadline = self._clock.monotonic() + self.max_wait
            while not decision.allowed:
                left = deadline - self._clock.monotonic()
                if decision.retry_after > left + _EPSILON:
                    raise RateLimitExceededError(self.name, decision.retry_after)
                self._clock.sleep_blocking(decision.retry_after)
                decision = self.acquire_sync()
        return inner(fn, args, kwargs)


def _check_cost(cost: int, most: int, what: str) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= most:
        raise ConfigError("cost", cost, f"must be an integer from 1 to {what} ({most})")


class TokenBucketLimiter(_LimiterPolicy):
    """Token bucket: ``rate`` tokens per second refill a bucket of ``burst`` tokens; each
    request takes ``cost`` tokens. Allows bursts up to ``burst`` and ``rate`` on average.

    As a policy, a denied call raises ``RateLimitExceededError`` (with ``retry_after``),
    or first waits for tokens when that takes at most ``max_wait`` seconds.
    """

    __slots__ = ("burst", "rate")

    def __init__(
        self,
        name: str,
        rate: float,
        burst: int,
        *,
        store: RateLimitStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_wait: float = 0.0,
    ) -> None:
        super().__init__(name, store, clock, max_wait)
        self.rate = validation.positive("rate", rate)
        self.burst = validation.at_least("burst", burst, 1)

    def __repr__(self) -> str:
        return f"TokenBucketLimiter({self.name!r}, rate={self.rate}, burst={self.burst})"

    async def acquire(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them."""
        if cost != 1:
            _check_cost(cost, self.burst, "burst")
        return await self._store.token_bucket(
            self._prefix + key, self.rate, self.burst, cost, self._clock.now()
        )

    def acquire_sync(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Blocking ``acquire``."""
        if cost != 1:
            _check_cost(cost, self.burst, "burst")
        return self._require_sync_store().token_bucket_sync(
            self._prefix + key, self.rate, self.burst, cost, self._clock.now()
        )


class SlidingWindowLimiter(_LimiterPolicy):
    """Sliding-window counter: at most ``limit`` requests (cost units) in any ``window``
    seconds, estimated from the current and previous fixed windows — O(1) memory per key,
    and no burst of 2 * limit at a window boundary as with plain fixed windows.

    As a policy it raises ``RateLimitExceededError`` or waits up to ``max_wait``.
    """

    __slots__ = ("limit", "window")

    def __init__(
        self,
        name: str,
        limit: int,
        window: float,
        *,
        store: RateLimitStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_wait: float = 0.0,
    ) -> None:
        super().__init__(name, store, clock, max_wait)
        self.limit = validation.at_least("limit", limit, 1)
        self.window = validation.positive("window", window)

    def __repr__(self) -> str:
        return f"SlidingWindowLimiter({self.name!r}, limit={self.limit}, window={self.window})"

    async def acquire(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Count ``cost`` requests for ``key`` if they fit in the window."""
        if cost != 1:
            _check_cost(cost, self.limit, "limit")
        return await self._store.sliding_window(
            self._prefix + key, self.limit, self.window, cost, self._clock.now()
        )

    def acquire_sync(self, key: str = "", cost: int = 1) -> RateLimitDecision:
        """Blocking ``acquire``."""
        if cost != 1:
            _check_cost(cost, self.limit, "limit")
        return self._require_sync_store().sliding_window_sync(
            self._prefix + key, self.limit, self.window, cost, self._clock.now()
        )
