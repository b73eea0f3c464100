"""Response caching for GET/HEAD routes: memory LRU bounded by bytes, or Redis.

The cache wraps a route's router (it must see the response), after authentication and
rate limiting. It honours ``Cache-Control`` (``no-store``, ``private``, ``no-cache``,
``max-age``, ``s-maxage``; a request's ``no-cache``/``max-age=0`` skips the lookup) and
``Vary`` (the varied request headers join the key: the entry under the base key is then a
marker listing them). Responses to authenticated requests are only cached when the route
says so, and then per consumer. With ``serve_stale_on_error`` an expired entry answers
when the upstream fails or times out, marked ``X-Cache: STALE`` with a ``Warning``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import msgspec
from redis.asyncio import Redis

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.logging import get_logger
from shipyard.gateway.config import CacheConfig
from shipyard.gateway.filters import Exchange, Handler, Header, Reply, runs_inline

_log = get_logger("shipyard.gateway.cache")

CACHEABLE_STATUS = frozenset({200, 203, 204, 300, 301, 308, 404, 410})
_STALE_WARNING: Header = (b"warning", b'110 - "Response is Stale"')


class CachedResponse(msgspec.Struct, array_like=True):
    """One stored response (or, with ``status`` 0, a marker naming the Vary headers)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored: float
    """Wall time it was stored, minus any ``Age`` the upstream reported."""
    expires: float
    """Wall time it stops being fresh."""
    keep_until: float
    """Wall time after which it is useless even as a stale fallback."""
    vary: tuple[bytes, ...] = ()

    def size(self) -> int:
        """Approximate bytes held (what the memory LRU budget counts)."""
        return len(self.body) + sum(len(n) + len(v) + 16 for n, v in self.headers) + 128


class ResponseCacheStore(Protocol):
    """Where cached responses live; entries may vanish at any time (it is a cache)."""

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``, if any."""

    async def put(self, key: str, entry: CachedResponse, keep_for: float) -> None:
        """Store ``entry`` for at most ``keep_for`` seconds."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryCacheStore:
    """An in-process LRU whose budget is bytes, not entries (one big body counts big)."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[CachedResponse, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key`` (and mark it recently used)."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    async def put(self, key: str, entry: CachedResponse, keep_for: float) -> None:
        """Store ``entry``, evicting least recently used entries to stay within budget."""
        size = entry.size() + len(key)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (entry, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisCacheStore:
    """Cached responses in Redis (msgpack, with a PX expiry), shared by every gateway."""

    def __init__(self, client: Redis, *, prefix: str = "shipyard:gw:cache") -> None:
        self._client = client
        self._prefix = prefix + ":"
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(CachedResponse).decode

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "shipyard:gw:cache") -> RedisCacheStore:
        """A store on the Redis server at ``url``."""
        return cls(Redis.from_url(url), prefix=prefix)

    async def get(self, key: str) -> CachedResponse | None:
        """The entry under ``key``; a Redis failure is a miss (logged), never an error."""
        try:
            raw = await self._client.get(self._prefix + key)
        except Exception as exc:  # a cache outage must not fail requests
            _log.warning("response cache unavailable", error=str(exc))
            return None
        if not isinstance(raw, bytes):
            return None
        try:
            return self._decode(raw)
        except msgspec.DecodeError:
            return None

    async def put(self, key: str, entry: CachedResponse, keep_for: float) -> None:
        """Store ``entry`` with an expiry of ``keep_for`` seconds."""
        try:
            await self._client.set(
                self._prefix + key, self._encode(entry), px=max(1, int(keep_for * 1000))
            )
        except Exception as exc:  # a cache outage must not fail requests
            _log.warning("response cache unavailable", error=str(exc))

    async def aclose(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()


def cache_store_from_url(url: str, *, max_bytes: int, prefix: str) -> ResponseCacheStore:
    """``memory://`` → an in-process LRU of ``max_bytes``; ``redis://…`` → Redis."""
    if url.startswith("memory://"):
        return MemoryCacheStore(max_bytes)
    return RedisCacheStore.from_url(url, prefix=prefix)


def cache_control(value: bytes | None) -> dict[bytes, bytes]:
    """``Cache-Control`` directives, lower-cased: ``{b"max-age": b"60", b"no-store": b""}``."""
    if not value:
        return {}
    directives: dict[bytes, bytes] = {}
    for part in value.split(b","):
        name, _, arg = part.strip().partition(b"=")
        if name:
            directives[name.lower()] = arg.strip(b'"')
    return directives


def _seconds(text: bytes) -> float | None:
    try:
        return max(0.0, float(int(text)))
    except ValueError:
        return None


class CacheCounters:
    """Hits, misses and stale answers of one route (read by the metrics collector)."""

    __slots__ = ("hits", "misses", "stale")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.stale = 0


class ResponseCache:
    """A route's router wrapped with a response cache (a ``Handler`` itself)."""

    def __init__(
        self,
        config: CacheConfig,
        store: ResponseCacheStore,
        inner: Handler,
        *,
        scope: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self._store = store
        self._inner = inner
        self._scope = scope + "|"
        self._now = clock.now
        self.counters = CacheCounters()
        # In memory the cache awaits nothing task-bound; Redis (redis-py) does.
        self.runs_inline = isinstance(store, MemoryCacheStore) and runs_inline(inner)

    def _base_key(self, ex: Exchange) -> str:
        key = self._scope + (ex.host + b"|" + ex.path + b"?" + ex.query).decode("latin-1")
        if ex.consumer is not None:
            key += "|c:" + ex.consumer
        return key

    async def _lookup(self, base: str, ex: Exchange) -> CachedResponse | None:
        entry = await self._store.get(base)
        if entry is None or entry.status:
            return entry
        return await self._store.get(_variant_key(base, entry.vary, ex))

    async def __call__(self, ex: Exchange) -> Reply:
        method = ex.method
        if method != b"GET" and method != b"HEAD":
            return await self._inner(ex)
        if (ex.consumer is not None or b"authorization" in ex.header_map) and (
            not self.config.authenticated or ex.consumer is None
        ):
            # Only a verified consumer can key a private entry; anything else is shared.
            return await self._inner(ex)
        request_cc = cache_control(ex.header_map.get(b"cache-control"))
        if b"no-store" in request_cc:
            return await self._inner(ex)
        base = self._base_key(ex)
        entry = await self._lookup(base, ex)
        now = self._now()
        if entry is not None and now >= entry.keep_until:
            entry = None
        revalidate = b"no-cache" in request_cc or request_cc.get(b"max-age") == b"0"
        if entry is not None and now < entry.expires and not revalidate:
            self.counters.hits += 1
            return _serve(entry, now, b"HIT")
        reply = await self._inner(ex)
        if reply.status >= 500 and entry is not None:
            if reply.stream is not None:
                reply.stream.close()
            self.counters.stale += 1
            return _serve(entry, now, b"STALE")
        self.counters.misses += 1
        if method == b"GET":
            reply = await self._store_reply(base, ex, reply, now)
        reply.headers.append((b"x-cache", b"MISS"))
        return reply

    async def _store_reply(self, base: str, ex: Exchange, reply: Reply, now: float) -> Reply:
        if reply.status not in CACHEABLE_STATUS:
            return reply
        headers = reply.headers
        response_cc: dict[bytes, bytes] = {}
        vary: tuple[bytes, ...] = ()
        age = 0.0
        for name, value in headers:
            if name == b"cache-control":
                response_cc.update(cache_control(value))
            elif name == b"set-cookie":
                return reply  # a per-user cookie must never be handed to someone else
            elif name == b"vary":
                vary += tuple(v.strip().lower() for v in value.split(b",") if v.strip())
            elif name == b"age":
                age = _seconds(value) or 0.0
        if b"no-store" in response_cc or b"private" in response_cc or b"no-cache" in response_cc:
            return reply
        if b"*" in vary:
            return reply
        ttl = self.config.ttl
        for directive in (b"s-maxage", b"max-age"):
            if directive in response_cc:
                given = _seconds(response_cc[directive])
                if given is not None:
                    ttl = given
                    break
        ttl -= age
        if ttl <= 0:
            return reply
        if reply.stream is not None:
            conn = reply.stream
            length = next((v for n, v in conn.headers if n == b"content-length"), None)
            if length is None or int(length) > self.config.max_entry_bytes:
                return reply  # too big (or of unknown size) to hold: stream it through
            await conn.wait_done()
            body = b"".join(conn.chunks)
            conn.finish()
            reply = Reply(reply.status, headers, body)
        if len(reply.body) > self.config.max_entry_bytes:
            return reply
        stale = self.config.serve_stale_on_error
        entry = CachedResponse(
            status=reply.status,
            headers=[(n, v) for n, v in headers if n != b"age"],
            body=reply.body,
            stored=now - age,
            expires=now + ttl,
            keep_until=now + ttl + stale,
            vary=vary,
        )
        key = base
        if vary:
            marker = CachedResponse(0, [], b"", now, now + ttl, now + ttl + stale, vary)
            await self._store.put(base, marker, ttl + stale)
            key = _variant_key(base, vary, ex)
        await self._store.put(key, entry, ttl + stale)
        # The reply's header list goes on to later filters; the entry keeps its own copy.
        reply.headers = list(headers)
        return reply


def _variant_key(base: str, vary: tuple[bytes, ...], ex: Exchange) -> str:
    values = b"|".join(name + b"=" + ex.header_map.get(name, b"") for name in vary)
    return base + "|v:" + values.decode("latin-1")


def _serve(entry: CachedResponse, now: float, state: bytes) -> Reply:
    headers = list(entry.headers)
    headers.append((b"age", b"%d" % max(0, int(now - entry.stored))))
    headers.append((b"x-cache", state))
    if state == b"STALE":
        headers.append(_STALE_WARNING)
    return Reply(entry.status, headers, entry.body)
