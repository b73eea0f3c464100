"""Response cache: hits and misses, Cache-Control, Vary, byte-bounded LRU, Redis, stale."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from shipyard.core import ManualClock
from shipyard.gateway.cache import CachedResponse, MemoryCacheStore, RedisCacheStore

from ..conftest import require_server
from .conftest import (
    WALL,
    Seen,
    Upstream,
    UpstreamReply,
    free_port_closed,
    make_token,
    request,
    running,
)

SECRET = "cache-secret"
REDIS = "redis://127.0.0.1:6379/0"


def cache_yaml(url: str, cache: str = "ttl: 30", extra: str = "", top: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
{top}
services:
  app: {{urls: [{url}]}}
frontends:
  web:
    {extra}
    routes:
      - {{name: items, prefix: /, service: app, cache: {{{cache}}}}}
"""


def counting(upstream: Upstream, headers: list[tuple[str, str]] | None = None) -> None:
    def respond(seen: Seen) -> UpstreamReply:
        return UpstreamReply(
            headers=list(headers or []),
            body=json.dumps({"n": len(upstream.seen), "path": seen.path}).encode(),
        )

    upstream.respond = respond


async def test_a_second_get_is_served_from_the_cache(upstream: Upstream) -> None:
    counting(upstream)
    async with running(cache_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        first = await request(port, path="/item/1")
        second = await request(port, path="/item/1")
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.body == first.body
    assert len(upstream.seen) == 1


async def test_age_grows_and_the_entry_expires_after_the_ttl(upstream: Upstream) -> None:
    counting(upstream)
    clock = ManualClock(wall_start=WALL)
    async with running(cache_yaml(upstream.url), clock=clock) as gw:
        port = gw.address("web")[1]
        await request(port, path="/a")
        clock.advance(12)
        aged = await request(port, path="/a")
        clock.advance(20)
        expired = await request(port, path="/a")
    assert aged.headers["age"] == "12"
    assert expired.headers["x-cache"] == "MISS"
    assert len(upstream.seen) == 2


async def test_response_max_age_overrides_the_route_ttl(upstream: Upstream) -> None:
    counting(upstream, [("cache-control", "public, max-age=5")])
    clock = ManualClock(wall_start=WALL)
    async with running(cache_yaml(upstream.url, "ttl: 300"), clock=clock) as gw:
        port = gw.address("web")[1]
        await request(port, path="/m")
        clock.advance(6)
        again = await request(port, path="/m")
    assert again.headers["x-cache"] == "MISS"


@pytest.mark.parametrize("directive", ["no-store", "private", "no-cache"])
async def test_responses_marked_uncacheable_are_not_stored(
    upstream: Upstream, directive: str
) -> None:
    counting(upstream, [("cache-control", directive)])
    async with running(cache_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        await request(port, path="/p")
        again = await request(port, path="/p")
    assert again.headers["x-cache"] == "MISS"
    assert len(upstream.seen) == 2


async def test_a_request_with_no_cache_goes_to_the_upstream_and_refreshes(
    upstream: Upstream,
) -> None:
    counting(upstream)
    async with running(cache_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        await request(port, path="/r")
        fresh = await request(port, path="/r", headers={"Cache-Control": "no-cache"})
        cached = await request(port, path="/r")
    assert fresh.headers["x-cache"] == "MISS"
    assert cached.json()["n"] == 2  # the refreshed copy
    assert len(upstream.seen) == 2


async def test_vary_keys_the_entry_by_the_varied_request_header(upstream: Upstream) -> None:
    def respond(seen: Seen) -> UpstreamReply:
        language = seen.headers.get("accept-language", "")
        return UpstreamReply(headers=[("vary", "Accept-Language")], body=language.encode())

    upstream.respond = respond
    async with running(cache_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        english = await request(port, path="/v", headers={"Accept-Language": "en"})
        german = await request(port, path="/v", headers={"Accept-Language": "de"})
        english_again = await request(port, path="/v", headers={"Accept-Language": "en"})
    assert (english.body, german.body, english_again.body) == (b"en", b"de", b"en")
    assert german.headers["x-cache"] == "MISS"
    assert english_again.headers["x-cache"] == "HIT"


async def test_post_and_set_cookie_responses_are_never_cached(upstream: Upstream) -> None:
    counting(upstream, [("set-cookie", "session=abc")])
    async with running(cache_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        await request(port, "POST", "/c", body=b"{}")
        await request(port, path="/c")
        again = await request(port, path="/c")
    assert again.headers["x-cache"] == "MISS"
    assert len(upstream.seen) == 3


async def test_head_is_answered_from_a_cached_get(upstream: Upstream) -> None:
    upstream.respond = lambda seen: UpstreamReply(body=b"x" * 10)
    async with running(cache_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        await request(port, path="/h")
        head = await request(port, "HEAD", "/h")
    assert head.headers["x-cache"] == "HIT"
    assert head.headers["content-length"] == "10"
    assert len(upstream.seen) == 1


def jwt_frontend() -> str:
    return f"jwt: {{keys: [{{alg: HS256, secret: {SECRET}}}]}}"


def bearer(sub: str) -> dict[str, str]:
    token = make_token({"sub": sub, "exp": WALL + 600}, secret=SECRET.encode())
    return {"Authorization": f"Bearer {token}"}


async def test_authenticated_responses_are_not_cached_by_default(upstream: Upstream) -> None:
    counting(upstream)
    async with running(cache_yaml(upstream.url, extra=jwt_frontend())) as gw:
        port = gw.address("web")[1]
        await request(port, path="/me", headers=bearer("alice"))
        again = await request(port, path="/me", headers=bearer("alice"))
    assert "x-cache" not in again.headers  # the cache stood aside
    assert len(upstream.seen) == 2


async def test_a_route_may_cache_authenticated_responses_per_consumer(upstream: Upstream) -> None:
    upstream.respond = lambda seen: UpstreamReply(body=seen.headers["authorization"][-8:].encode())
    yaml = cache_yaml(upstream.url, "ttl: 30, authenticated: true", extra=jwt_frontend())
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        alice = await request(port, path="/me", headers=bearer("alice"))
        bob = await request(port, path="/me", headers=bearer("bob"))
        alice_again = await request(port, path="/me", headers=bearer("alice"))
    assert bob.headers["x-cache"] == "MISS"
    assert bob.body != alice.body
    assert (alice_again.headers["x-cache"], alice_again.body) == ("HIT", alice.body)


async def test_an_expired_entry_is_served_stale_when_the_upstream_fails(
    upstream: Upstream,
) -> None:
    counting(upstream)
    clock = ManualClock(wall_start=WALL)
    yaml = cache_yaml(upstream.url, "ttl: 10, serve_stale_on_error: 60")
    async with running(yaml, clock=clock) as gw:
        port = gw.address("web")[1]
        first = await request(port, path="/s")
        upstream.respond = lambda seen: UpstreamReply(status=503, body=b"down")
        clock.advance(30)
        stale = await request(port, path="/s")
        clock.advance(60)
        gone = await request(port, path="/s")
    assert (stale.status, stale.body) == (200, first.body)
    assert stale.headers["x-cache"] == "STALE"
    assert "110" in stale.headers["warning"]
    assert gone.status == 503


async def test_stale_is_served_when_the_upstream_is_unreachable() -> None:
    dead = free_port_closed()
    store = MemoryCacheStore()
    clock = ManualClock(wall_start=WALL)
    yaml = cache_yaml(f"http://127.0.0.1:{dead}", "ttl: 10, serve_stale_on_error: 60")
    entry = CachedResponse(200, [], b"old", WALL - 20, WALL - 10, WALL + 50)
    await store.put("web:items|gateway.test|/u?", entry, 60)
    async with running(yaml, clock=clock, cache_store=store) as gw:
        response = await request(gw.address("web")[1], path="/u")
    assert (response.status, response.body, response.headers["x-cache"]) == (200, b"old", "STALE")


async def test_the_memory_store_evicts_least_recently_used_entries_by_bytes() -> None:
    store = MemoryCacheStore(max_bytes=3000)

    def entry(size: int) -> CachedResponse:
        return CachedResponse(200, [], b"x" * size, 0.0, 10.0, 10.0)

    await store.put("a", entry(1000), 10)
    await store.put("b", entry(1000), 10)
    assert await store.get("a") is not None  # a is now the most recently used
    await store.put("c", entry(1000), 10)
    assert await store.get("b") is None
    assert await store.get("a") is not None
    assert store.bytes <= 3000
    await store.put("huge", entry(5000), 10)
    assert await store.get("huge") is None


@pytest.fixture
def redis_prefix() -> str:
    require_server("Redis", 6379)
    return f"test:gwcache:{uuid.uuid4().hex}"


@pytest.fixture
async def redis_store(redis_prefix: str) -> AsyncIterator[RedisCacheStore]:
    store = RedisCacheStore.from_url(REDIS, prefix=redis_prefix)
    yield store
    await store.aclose()


async def test_redis_backed_cache_is_shared_by_two_gateways(
    upstream: Upstream, redis_prefix: str
) -> None:
    counting(upstream)
    yaml = cache_yaml(upstream.url, top=f"cache: {{store: '{REDIS}', prefix: '{redis_prefix}'}}")
    async with running(yaml) as one, running(yaml) as two:
        first = await request(one.address("web")[1], path="/shared")
        second = await request(two.address("web")[1], path="/shared")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert len(upstream.seen) == 1


async def test_the_redis_store_round_trips_an_entry_with_expiry(
    redis_store: RedisCacheStore,
) -> None:
    entry = CachedResponse(200, [(b"content-type", b"text/plain")], b"body", 1.0, 2.0, 3.0, ())
    await redis_store.put("k", entry, 30)
    assert await redis_store.get("k") == entry
    assert await redis_store.get("missing") is None
