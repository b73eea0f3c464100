"""``RedisRateLimitStore``: rate-limit counters in Redis, shared by every gateway process.

Each algorithm is ONE Lua script, so read-refill-decide-write is atomic on the Redis
server even with many gateways deciding for the same key at once. The scripts mirror
``token_bucket_step`` and ``sliding_window_step`` in ``shipyard.resilience.ratelimit``
line for line; the shared contract test holds them to the same answers. Fractional values
travel as strings because Redis truncates Lua numbers to integers on the way out.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shipyard.resilience.ratelimit import RateLimitDecision

_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local eps = 1e-9
local state = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens
if state[1] == false then
  tokens = burst
else
  local elapsed = math.max(0, now - tonumber(state[2]))
  tokens = math.min(burst, tonumber(state[1]) + elapsed * rate)
end
local allowed = 0
local retry_after = 0
if tokens + eps >= cost then
  allowed = 1
  tokens = math.max(0, tokens - cost)
else
  retry_after = (cost - tokens) / rate
end
local reset_after = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(reset_after * 1000) + 1000)
return {allowed, burst, math.floor(tokens + eps),
        string.format('%.17g', reset_after), string.format('%.17g', retry_after)}
"""

_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local eps = 1e-9
local index = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
local previous, current = 0, 0
if state[1] ~= false then
  local si = tonumber(state[1])
  if si == index - 1 then
    previous = tonumber(state[2])
  elseif si >= index then
    index = math.max(index, si)
    previous = tonumber(state[3])
    current = tonumber(state[2])
  end
end
local elapsed = math.min(window, math.max(0, now - index * window))
local estimated = previous * (1 - elapsed / window) + current
local allowed = 0
local retry_after = 0
if estimated + cost <= limit + eps then
  allowed = 1
  current = current + cost
  estimated = estimated + cost
else
  local room = limit - current - cost
  if room >= 0 then
    retry_after = math.max(0, window * (1 - room / previous) - elapsed)
  else
    local until_next = window - elapsed
    room = limit - cost
    if current <= room then
      retry_after = until_next
    else
      retry_after = until_next + window * (1 - room / current)
    end
  end
end
local reset_after = 0
if current > 0 then
  reset_after = (index + 2) * window - now
elseif previous > 0 then
  reset_after = (index + 1) * window - now
end
reset_after = math.max(0, reset_after)
redis.call('HSET', KEYS[1], 'i', index, 'c', current, 'p', previous)
redis.call('PEXPIRE', KEYS[1], math.ceil(reset_after * 1000) + 1000)
return {allowed, limit, math.max(0, math.floor(limit - estimated + eps)),
        string.format('%.17g', reset_after), string.format('%.17g', retry_after)}
"""


def _decision(reply: list[Any]) -> RateLimitDecision:
    return RateLimitDecision(
        allowed=bool(int(reply[0])),
        limit=int(reply[1]),
        remaining=int(reply[2]),
        reset_after=float(reply[3]),
        retry_after=float(reply[4]),
    )


class RedisRateLimitStore:
    """A ``RateLimitStore`` in Redis (``redis://host:port/db``), atomic across processes.

    Keys are ``{prefix}:tb:{key}`` / ``{prefix}:sw:{key}`` and expire once the limiter
    would be back to full, so idle keys cost nothing.
    """

    def __init__(self, client: Redis, *, prefix: str = "shipyard:rl") -> None:
        self._client = client
        self._prefix = prefix
        self._token_bucket = client.register_script(_TOKEN_BUCKET)
        self._sliding_window = client.register_script(_SLIDING_WINDOW)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "shipyard:rl") -> RedisRateLimitStore:
        """A store on a new client for ``url`` (``redis://127.0.0.1:6379/0``)."""
        return cls(Redis.from_url(url), prefix=prefix)

    async def token_bucket(
        self, key: str, rate: float, burst: int, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.token_bucket``; runs as one Lua script."""
        reply = await self._token_bucket(
            keys=[f"{self._prefix}:tb:{key}"], args=[repr(rate), burst, cost, repr(now)]
        )
        return _decision(reply)

    async def sliding_window(
        self, key: str, limit: int, window: float, cost: int, now: float
    ) -> RateLimitDecision:
        """See ``RateLimitStore.sliding_window``; runs as one Lua script."""
        reply = await self._sliding_window(
            keys=[f"{self._prefix}:sw:{key}"], args=[limit, repr(window), cost, repr(now)]
        )
        return _decision(reply)

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()
