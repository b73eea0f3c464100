"""Rate limiting: a token bucket per route x (consumer | client IP | header value).

The bucket lives in a ``RateLimitStore`` (in process, or Redis so every gateway shares
one budget). A refused request gets 429 with ``Retry-After`` and the ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` headers.
"""

from __future__ import annotations

import math
import time

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.gateway.config import RateLimitConfig
from shipyard.gateway.filters import UNDECIDED, Decision, Exchange, Filter, Reply, local_reply
from shipyard.gateway.local_ratelimit import LocalRateLimitStore
from shipyard.resilience.ratelimit import RateLimitDecision, RateLimitStore, SyncRateLimitStore


class RateLimit(Filter):
    """429 once a route's bucket for this caller is empty."""

    def __init__(
        self,
        config: RateLimitConfig,
        store: RateLimitStore,
        *,
        scope: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._store = store
        # An in-process store can decide without awaiting (the gateway's own without
        # allocating when it allows): chosen once, here.
        self._take = store.take if isinstance(store, LocalRateLimitStore) else None
        self._sync = store if isinstance(store, SyncRateLimitStore) else None
        self.runs_inline = self._sync is not None  # a shared (Redis) store needs a Task
        self._rate = config.rate
        self._burst = config.burst
        self._by_consumer = config.per == "consumer"
        self._consumer_scope = scope + ":c:"
        self._scope = scope + ":"
        self._now = time.time if clock is SYSTEM_CLOCK else clock.now
        self._header = config.header.encode() if config.header else None
        self._limit_header = str(config.burst).encode()
        self.rejected = 0
        """Requests refused with 429 (exported as a metric)."""

    def _key(self, ex: Exchange) -> str:
        if self._by_consumer and ex.consumer is not None:
            return self._consumer_scope + ex.consumer
        if self._config.per == "header" and self._header is not None:
            value = ex.header_map.get(self._header)
            if value is not None:
                return self._scope + "h:" + value.decode("latin-1")
        # Anonymous callers (and callers without the header) are limited by address.
        return self._scope + "ip:" + ex.client_ip

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """Take one token, or answer 429."""
        decided = self.decide(exchange)
        if decided is not UNDECIDED:
            return decided
        config = self._config
        decision = await self._store.token_bucket(
            self._key(exchange), config.rate, config.burst, 1, self._now()
        )
        return None if decision.allowed else self._refuse(decision)

    def decide(self, exchange: Exchange) -> Decision:
        """``on_request`` without awaiting, for an in-process store (a shared one is
        awaited by ``on_request``)."""
        take = self._take
        sync = self._sync
        if take is None and sync is None:
            return UNDECIDED
        consumer = exchange.consumer
        key = (
            self._consumer_scope + consumer
            if self._by_consumer and consumer is not None
            else self._key(exchange)
        )
        decision: RateLimitDecision | None
        if take is not None:
            decision = take(key, self._rate, self._burst, self._now())
            if decision is None:
                return None
        else:
            assert sync is not None
            decision = sync.token_bucket_sync(key, self._rate, self._burst, 1, self._now())
        if decision.allowed:
            return None
        return self._refuse(decision)

    def _refuse(self, decision: RateLimitDecision) -> Reply:
        self.rejected += 1
        return local_reply(
            429,
            "rate limit exceeded; retry after the Retry-After seconds",
            [
                (b"retry-after", str(max(1, math.ceil(decision.retry_after))).encode()),
                (b"ratelimit-limit", self._limit_header),
                (b"ratelimit-remaining", str(decision.remaining).encode()),
                (b"ratelimit-reset", str(math.ceil(decision.reset_after)).encode()),
            ],
        )
