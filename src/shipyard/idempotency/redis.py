"""``RedisIdempotencyStore``: keys in Redis, shared by every instance of a service.

A key is one Redis string ``{prefix}:{key}`` whose expiry IS the lease or the TTL, so Redis
itself frees abandoned leases and forgets old responses (``purge_expired`` has nothing to
do). The value is a 32-byte owner field — the lease token while in progress, dashes once
completed — followed by the msgpack-encoded record. Claiming is ``SET NX PX`` (inside a
script that also returns the current holder in the same round trip); completing and
releasing are scripts that act only while the owner field still equals the caller's token.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import msgspec
from redis.asyncio import Redis

from shipyard.core import SYSTEM_CLOCK, Clock
from shipyard.idempotency.store import Headers, IdempotencyRecord, Lease, StoredResponse

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""

_COMPLETE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""

_COMPLETED_OWNER = b"-" * 32


class _Wire(msgspec.Struct, array_like=True):
    fingerprint: str
    expires_at: float
    status: int | None = None
    headers: Headers = ()
    body: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisIdempotencyStore:
    """An :class:`~shipyard.idempotency.IdempotencyStore` in Redis.

    Leases and TTLs are enforced by Redis's own clock; ``clock`` only stamps the
    informational ``expires_at`` of the records this store returns.
    """

    def __init__(
        self, client: Redis, *, prefix: str = "shipyard:idem", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "shipyard:idem", clock: Clock = SYSTEM_CLOCK
    ) -> RedisIdempotencyStore:
        """A store on a new client for ``url`` (``redis://127.0.0.1:6379/0``)."""
        return cls(Redis.from_url(url), prefix=prefix, clock=clock)

    def _redis_key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def acquire(
        self, key: str, fingerprint: str, *, lease: float
    ) -> Lease | IdempotencyRecord:
        """``SET NX PX``; when it loses, the holder's record comes back in the same call."""
        token = secrets.token_hex(16)
        expires_at = self._clock.now() + lease
        value = token.encode() + _encoder.encode(_Wire(fingerprint, expires_at))
        current: Any = await self._acquire(
            keys=[self._redis_key(key)], args=[value, _milliseconds(lease)]
        )
        if current is None:
            return Lease(key, fingerprint, token, expires_at)
        return _record(key, bytes(current))

    async def complete(self, lease: Lease, response: StoredResponse, *, ttl: float) -> bool:
        """Replace the lease with the response (expiring after ``ttl``) if still ours."""
        wire = _Wire(
            lease.fingerprint,
            self._clock.now() + ttl,
            response.status,
            response.headers,
            response.body,
        )
        stored: Any = await self._complete(
            keys=[self._redis_key(lease.key)],
            args=[lease.token, _COMPLETED_OWNER + _encoder.encode(wire), _milliseconds(ttl)],
        )
        return bool(stored)

    async def release(self, lease: Lease) -> None:
        """Delete the key if ``lease`` still holds it."""
        await self._release(keys=[self._redis_key(lease.key)], args=[lease.token])

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The live record for ``key``."""
        value: Any = await self._client.get(self._redis_key(key))
        return None if value is None else _record(key, bytes(value))

    async def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Always 0."""
        return 0

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()


def _record(key: str, value: bytes) -> IdempotencyRecord:
    wire = _decoder.decode(value[32:])
    if value[:32] != _COMPLETED_OWNER:
        return IdempotencyRecord(key, wire.fingerprint, "in_progress", wire.expires_at)
    response = StoredResponse(wire.status or 0, wire.headers, wire.body)
    return IdempotencyRecord(key, wire.fingerprint, "completed", wire.expires_at, response)
