"""Rate limiting: 429 with headers, keys per consumer / IP / header, shared Redis budgets."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.core import SYSTEM_CLOCK, ManualClock
from shipyard.gateway import LocalRateLimitStore, RedisRateLimitStore
from shipyard.resilience.ratelimit import (
    MemoryRateLimitStore,
    RateLimitStore,
    sliding_window_step,
    token_bucket_step,
)
from tests.conftest import require_server

from .conftest import WALL, Upstream, request, running


def limited_yaml(upstream: Upstream, limit: str, extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
{extra}
frontends:
  web:
    routes:
      - {{name: api, prefix: /, upstream: {upstream.url}, rate_limit: {limit}}}
"""


async def test_an_exhausted_bucket_answers_429_with_rate_limit_headers(upstream: Upstream) -> None:
    clock = ManualClock(wall_start=WALL)
    async with running(limited_yaml(upstream, "{rate: 1, burst: 2}"), clock=clock) as gw:
        port = gw.address("web")[1]
        statuses = [(await request(port, path="/x")).status for _ in range(2)]
        refused = await request(port, path="/x")
        clock.advance(1.0)
        again = await request(port, path="/x")
    assert statuses == [200, 200]
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-limit"] == "2"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-reset"] == "2"
    assert again.status == 200
    assert len(upstream.seen) == 3


async def test_limits_keyed_by_header_give_each_value_its_own_bucket(upstream: Upstream) -> None:
    limit = "{rate: 0.001, burst: 1, per: header, header: X-Tenant}"
    async with running(limited_yaml(upstream, limit)) as gw:
        port = gw.address("web")[1]
        acme = [(await request(port, headers={"X-Tenant": "acme"})).status for _ in range(2)]
        globex = (await request(port, headers={"X-Tenant": "globex"})).status
    assert acme == [200, 429]
    assert globex == 200


async def test_limits_keyed_by_consumer_follow_the_authenticated_consumer(
    upstream: Upstream,
) -> None:
    yaml = f"""
listen: 127.0.0.1:0
frontends:
  partner:
    api_keys: {{keys: [{{consumer: acme, key: k1}}, {{consumer: globex, key: k2}}]}}
    rate_limit: {{rate: 0.001, burst: 1, per: consumer}}
    routes: [{{prefix: /, upstream: {upstream.url}}}]
"""
    async with running(yaml) as gw:
        port = gw.address("partner")[1]
        acme = [(await request(port, headers={"X-Api-Key": "k1"})).status for _ in range(2)]
        globex = (await request(port, headers={"X-Api-Key": "k2"})).status
    assert (acme, globex) == ([200, 429], 200)


async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(upstream: Upstream) -> None:
    limit = "{rate: 0.001, burst: 1, per: ip}"
    trusted = limited_yaml(upstream, limit, "trusted_proxies: [127.0.0.1]")
    untrusted = limited_yaml(upstream, limit, "trusted_proxies: [10.0.0.0/8]")
    async with running(trusted) as gw:
        port = gw.address("web")[1]
        # Rightmost untrusted hop: the client cannot spoof by prepending addresses.
        first = await request(port, headers={"X-Forwarded-For": "9.9.9.9, 203.0.113.7"})
        second = await request(port, headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.8"})
        repeat = await request(port, headers={"X-Forwarded-For": "8.8.8.8, 203.0.113.7"})
    assert (first.status, second.status, repeat.status) == (200, 200, 429)
    assert upstream.seen[0].headers["x-forwarded-for"] == "9.9.9.9, 203.0.113.7, 127.0.0.1"
    async with running(untrusted) as gw:
        port = gw.address("web")[1]
        one = await request(port, headers={"X-Forwarded-For": "203.0.113.1"})
        two = await request(port, headers={"X-Forwarded-For": "203.0.113.2"})
    assert (one.status, two.status) == (200, 429)
    # From an untrusted peer the client's X-Forwarded-For is replaced, not extended.
    assert upstream.seen[-1].headers["x-forwarded-for"] == "127.0.0.1"


# -- one contract for every RateLimitStore ---------------------------------------------------


@pytest.fixture(params=["memory", "local", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RateLimitStore]:
    if request.param == "memory":
        yield MemoryRateLimitStore()
        return
    if request.param == "local":
        yield LocalRateLimitStore()
        return
    require_server("Redis", 6379)
    redis_store = RedisRateLimitStore.from_url(
        "redis://127.0.0.1:6379/0", prefix=f"test:{uuid.uuid4().hex}"
    )
    yield redis_store
    await redis_store.aclose()


async def test_store_token_bucket_matches_the_reference_maths(store: RateLimitStore) -> None:
    state = None
    calls = [(0.0, 1), (0.0, 1), (0.0, 1), (0.0, 1), (0.4, 1), (1.25, 2), (1.3, 5), (10.0, 1)]
    for offset, cost in calls:
        now = WALL + offset
        got = await store.token_bucket("k", 2.0, 3, cost, now)
        state, expected = token_bucket_step(state, rate=2.0, burst=3, cost=cost, now=now)
        assert (got.allowed, got.limit, got.remaining) == (
            expected.allowed,
            expected.limit,
            expected.remaining,
        )
        assert got.retry_after == pytest.approx(expected.retry_after, abs=1e-6)
        assert got.reset_after == pytest.approx(expected.reset_after, abs=1e-6)


async def test_store_sliding_window_matches_the_reference_maths(store: RateLimitStore) -> None:
    state = None
    calls = [0.0, 0.1, 0.2, 0.3, 1.5, 1.6, 1.7, 2.9, 5.0]
    for offset in calls:
        now = WALL + offset
        got = await store.sliding_window("w", 3, 1.0, 1, now)
        state, expected = sliding_window_step(state, limit=3, window=1.0, cost=1, now=now)
        assert (got.allowed, got.remaining) == (expected.allowed, expected.remaining)
        assert got.retry_after == pytest.approx(expected.retry_after, abs=1e-6)
        assert got.reset_after == pytest.approx(expected.reset_after, abs=1e-6)


async def test_store_keys_are_independent(store: RateLimitStore) -> None:
    assert (await store.token_bucket("a", 1.0, 1, 1, WALL)).allowed
    assert not (await store.token_bucket("a", 1.0, 1, 1, WALL)).allowed
    assert (await store.token_bucket("b", 1.0, 1, 1, WALL)).allowed


# -- the gateway's own in-process store ------------------------------------------------------


def test_take_decides_as_the_reference_maths_and_shares_state_with_token_bucket() -> None:
    local = LocalRateLimitStore()
    state = None
    offsets = [0.0, 0.0, 0.0, 0.0, 0.2, 0.4, 0.45, 1.0, 1.0, 5.0, 4.0, 4.0]  # 4.0: clock back
    for step, offset in enumerate(offsets):
        now = WALL + offset
        state, expected = token_bucket_step(state, rate=2.0, burst=3, cost=1, now=now)
        if step % 3 == 2:  # the general entry point on the same bucket
            got = local.token_bucket_sync("k", 2.0, 3, 1, now)
            assert (got.allowed, got.remaining) == (expected.allowed, expected.remaining)
            continue
        refusal = local.take("k", 2.0, 3, now)
        assert (refusal is None) == expected.allowed
        if refusal is not None:
            assert refusal.remaining == expected.remaining
            assert refusal.retry_after == pytest.approx(expected.retry_after, abs=1e-9)
            assert refusal.reset_after == pytest.approx(expected.reset_after, abs=1e-9)


def test_the_local_store_stays_bounded_and_never_blocks_an_evicted_key() -> None:
    local = LocalRateLimitStore(max_keys=64)
    assert local.take("busy", 1.0, 1, WALL) is None
    assert local.take("busy", 1.0, 1, WALL) is not None
    for n in range(1000):
        local.take(f"client-{n}", 0.001, 1, WALL)  # each key empty for a long time
        assert len(local) <= 64
    # Dropping a key only ever lets it through early: "busy" is allowed again.
    assert local.take("busy", 1.0, 1, WALL) is None


def test_keys_back_to_full_are_dropped_before_any_other() -> None:
    local = LocalRateLimitStore(max_keys=8)
    local.take("hot", 0.001, 5, WALL)  # takes ~1000 s to refill
    for n in range(7):
        local.take(f"idle-{n}", 1000.0, 1, WALL)  # full again a millisecond later
    local.take("new", 1.0, 1, WALL + 1)
    decision = local.token_bucket_sync("hot", 0.001, 5, 0, WALL + 1)
    assert decision.remaining == 4  # "hot" kept its state: the full idle keys went first


# -- two gateway processes sharing one Redis budget ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(2000):
        assert process.poll() is None, "the gateway process exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.005)
            continue
        writer.close()
        return
    raise AssertionError("the gateway process never listened")


async def test_two_gateway_processes_share_one_redis_budget(
    upstream: Upstream, tmp_path: Path
) -> None:
    require_server("Redis", 6379)
    prefix = f"test:{uuid.uuid4().hex}"
    port = free_port()
    yaml = f"""
listen: 127.0.0.1:{port}
rate_limit_store: redis://127.0.0.1:6379/0
rate_limit_prefix: "{prefix}"
access_log: {{enabled: false}}
frontends:
  web:
    routes:
      - {{name: api, prefix: /, upstream: {upstream.url}, rate_limit: {{rate: 0.001, burst: 5}}}}
"""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml)
    other = subprocess.Popen(  # noqa: ASYNC220 - starting a second gateway is the point
        [
            sys.executable,
            "-c",
            "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))",
            "gateway",
            "--config",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, other)
        local_yaml = yaml.replace(f"127.0.0.1:{port}", "127.0.0.1:0", 1)
        async with running(local_yaml, clock=SYSTEM_CLOCK) as gw:
            mine = gw.address("web")[1]
            statuses = []
            for _ in range(4):
                statuses.append((await request(port, path="/p")).status)
                statuses.append((await request(mine, path="/p")).status)
    finally:
        other.terminate()
        other.wait(timeout=10)
    assert statuses.count(200) == 5
    assert statuses.count(429) == 3
    assert len(upstream.seen) == 5
