"""``LocalRateLimitStore``: the ``memory://`` rate-limit store, tuned for the gateway.

It is a ``MemoryRateLimitStore`` (same contract, same maths as ``token_bucket_step``)
whose token buckets are small lists updated in place, plus ``take()``: the one-token
decision a gateway makes on every request, which allocates nothing when the request is
allowed. ``MemoryRateLimitStore`` re-inserts each key on every call to keep LRU order and
builds a state and a decision tuple per call; here a bucket is only inserted once, and
memory is bounded by sweeping when ``max_keys`` is reached instead: keys back to full are
dropped first (their state equals a fresh one), then the oldest keys, which only ever lets
such a key through early, never blocks it.
"""

from __future__ import annotations

import math

from shipyard.resilience.ratelimit import MemoryRateLimitStore, RateLimitDecision

# The same tolerance as ``token_bucket_step``: waiting exactly ``retry_after`` is enough.
_EPSILON = 1e-9

# A bucket: [tokens, updated (wall seconds), full_at (when it is back to ``burst``)].
_Bucket = list[float]


class LocalRateLimitStore(MemoryRateLimitStore):
    """In-process counters for one gateway process; token buckets decide without
    allocating. Sliding windows are ``MemoryRateLimitStore``'s."""

    __slots__ = ("_tokens",)

    def __init__(self, *, max_keys: int = 100_000) -> None:
        super().__init__(max_keys=max_keys)
        self._tokens: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """Keys currently held (both algorithms)."""
        return len(self._tokens) + super().__len__()

    def take(self, key: str, rate: float, burst: int, now: float) -> RateLimitDecision | None:
        """Take one token from ``key``'s bucket: None when allowed, else the refusal."""
        bucket = self._tokens.get(key)
        if bucket is None:
            tokens = float(burst)
        else:
            tokens = bucket[0]
            elapsed = now - bucket[1]
            if elapsed > 0.0:
                tokens += elapsed * rate
                if tokens > burst:
                    tokens = float(burst)
        if tokens + _EPSILON >= 1:
            tokens = tokens - 1.0 if tokens > 1.0 else 0.0
            if bucket is None:
                self._insert(key, [tokens, now, now + (burst - tokens) / rate], now)
            else:  # _store, inlined: this is every allowed request
                bucket[0] = tokens
                bucket[1] = now
                bucket[2] = now + (burst - tokens) / rate
            return None
        return self._refuse(key, bucket, tokens, rate, burst, 1, now)

    def token_bucket_sync(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.token_bucket`` (any cost; ``take`` is the fast path)."""
        bucket = self._tokens.get(key)
        if bucket is None:
            tokens = float(burst)
        else:
            elapsed = max(0.0, now - bucket[1])
            tokens = min(float(burst), bucket[0] + elapsed * rate)
        if tokens + _EPSILON < cost:
            return self._refuse(key, bucket, tokens, rate, burst, cost, now)
        tokens = max(0.0, tokens - cost)
        reset_after = (burst - tokens) / rate
        self._store(key, bucket, tokens, now, now + reset_after)
        return RateLimitDecision(True, burst, math.floor(tokens + _EPSILON), reset_after, 0.0)

    async def token_bucket(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.token_bucket``."""
        return self.token_bucket_sync(key, rate, burst, cost, now)

    def _refuse(
        self,
        key: str,
        bucket: _Bucket | None,
        tokens: float,
        rate: float,
        burst: int,
        cost: int,
        now: float,
    ) -> RateLimitDecision:
        reset_after = (burst - tokens) / rate
        self._store(key, bucket, tokens, now, now + reset_after)
        return RateLimitDecision(
            False, burst, math.floor(tokens + _EPSILON), reset_after, (cost - tokens) / rate
        )

    def _store(
        self, key: str, bucket: _Bucket | None, tokens: float, now: float, full_at: float
    ) -> None:
        if bucket is None:
            self._insert(key, [tokens, now, full_at], now)
        else:
            bucket[0] = tokens
            bucket[1] = now
            bucket[2] = full_at

    def _insert(self, key: str, bucket: _Bucket, now: float) -> None:
        buckets = self._tokens
        if len(buckets) >= self.max_keys:
            self._sweep(now)
        buckets[key] = bucket

    def _sweep(self, now: float) -> None:
        """Make room: drop full buckets, then the oldest, down to 7/8 of ``max_keys``.

        One pass per ``max_keys / 8`` insertions at worst, so O(1) per insertion."""
        buckets = self._tokens
        for key in [k for k, bucket in buckets.items() if bucket[2] <= now]:
            del buckets[key]
        target = self.max_keys - max(1, self.max_keys // 8)
        if len(buckets) > target:
            for key in list(buckets)[: len(buckets) - target]:
                del buckets[key]
