"""Strangler fig: weighted, overridden and sticky splits; run-time weights; shadowing."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from structlog.testing import capture_logs

from shipyard.gateway import Gateway

from .conftest import Seen, Upstream, UpstreamReply, request, running

TOKEN = "admin-token"


def split_yaml(legacy: Upstream, new: Upstream, options: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0", token: {TOKEN}}}
frontends:
  web:
    routes:
      - name: shop
        prefix: /
        strangler: {{legacy: "{legacy.url}", new: "{new.url}" {options}}}
"""


async def served_by(port: int, n: int = 1, **kwargs: Any) -> list[str]:
    return [(await request(port, **kwargs)).headers["x-served-by"] for _ in range(n)]


@pytest.mark.parametrize("weight", [0, 30, 100])
async def test_the_weight_decides_the_share_sent_to_the_new_service(
    upstream: Upstream, upstream_b: Upstream, weight: int
) -> None:
    expected_rng = random.Random(7)
    expected = ["b" if expected_rng.random() * 100 < weight else "a" for _ in range(60)]
    yaml = split_yaml(upstream, upstream_b, f", weight: {weight}")
    async with running(yaml, rng=random.Random(7).random) as gw:
        sides = await served_by(gw.address("web")[1], 60)
    assert sides == expected
    if weight == 30:
        assert 0 < sides.count("b") < 60


async def test_an_override_header_or_cookie_picks_the_side(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    options = ", weight: 0, override_header: X-Backend, override_cookie: backend"
    async with running(split_yaml(upstream, upstream_b, options)) as gw:
        port = gw.address("web")[1]
        by_header = await served_by(port, headers={"X-Backend": "new"})
        by_cookie = await served_by(port, headers={"Cookie": "a=1; backend=new"})
        plain = await served_by(port)
    assert (by_header, by_cookie, plain) == (["b"], ["b"], ["a"])


async def test_a_sticky_cookie_keeps_each_client_on_one_side_as_the_weight_grows(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    users = [f"user-{i}" for i in range(40)]
    yaml = split_yaml(upstream, upstream_b, ", weight: 30, sticky: {cookie: uid}")
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        at_30 = {u: await served_by(port, 3, headers={"Cookie": f"uid={u}"}) for u in users}
        gw.runtime.stranglers[("web", "shop")].weight = 60
        at_60 = {u: (await served_by(port, headers={"Cookie": f"uid={u}"}))[0] for u in users}
    assert all(len(set(sides)) == 1 for sides in at_30.values())
    new_at_30 = {u for u, sides in at_30.items() if sides[0] == "b"}
    new_at_60 = {u for u, side in at_60.items() if side == "b"}
    assert 0 < len(new_at_30) < len(new_at_60) < len(users)
    assert new_at_30 <= new_at_60  # nobody moved back to legacy


async def admin(gw: Gateway, method: str, path: str, body: bytes = b"", token: str = TOKEN) -> Any:
    address = gw.admin_address
    assert address is not None
    return await request(
        address[1], method, path, body=body, headers={"Authorization": f"Bearer {token}"}
    )


async def test_the_admin_api_moves_the_weight_at_run_time(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    async with running(split_yaml(upstream, upstream_b, ", weight: 0")) as gw:
        port = gw.address("web")[1]
        before = await served_by(port, 3)
        moved = await admin(gw, "PUT", "/strangler/web/shop", b'{"weight": 100}')
        after = await served_by(port, 3)
        listing = (await admin(gw, "GET", "/strangler")).json()
        refused = await admin(gw, "PUT", "/strangler/web/shop", b'{"weight": 101}')
        unknown = await admin(gw, "PUT", "/strangler/web/nope", b'{"weight": 5}')
    assert (before, after) == (["a"] * 3, ["b"] * 3)
    assert moved.json()["weight"] == 100
    assert listing[0]["weight"] == 100
    assert (listing[0]["to_legacy"], listing[0]["to_new"]) == (3, 3)
    assert refused.status == 400
    assert unknown.status == 404


def same_body(extra: dict[str, Any]) -> Any:
    def respond(seen: Seen) -> UpstreamReply:
        return UpstreamReply(body=json.dumps({"id": 1, "items": [1, 2], **extra}).encode())

    return respond


async def test_equal_shadow_responses_are_counted_not_logged(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    upstream.respond = same_body({"generated_at": "10:00"})
    upstream_b.respond = same_body({"generated_at": "10:01"})
    options = ", weight: 0, shadow: {share: 1.0, ignore: [generated_at]}"
    with capture_logs() as logs:
        async with running(split_yaml(upstream, upstream_b, options)) as gw:
            response = await request(gw.address("web")[1], path="/p")
            shadow = gw.runtime.shadows[("web", "shop")]
            await shadow.drain()
    assert response.json()["generated_at"] == "10:00"  # legacy's answer
    assert upstream_b.seen[0].headers["x-shadow-request"] == "1"
    assert (shadow.matches, shadow.diffs) == (1, 0)
    assert not [e for e in logs if e["event"] == "shadow response differs"]


async def test_a_different_shadow_response_is_logged_and_counted(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    upstream.respond = same_body({"price": 10})
    upstream_b.respond = same_body({"price": 12, "extra": True})
    options = ", weight: 0, shadow: {share: 1.0}"
    with capture_logs() as logs:
        async with running(split_yaml(upstream, upstream_b, options)) as gw:
            response = await request(gw.address("web")[1], path="/p?x=1")
            shadow = gw.runtime.shadows[("web", "shop")]
            await shadow.drain()
            metrics = (await admin(gw, "GET", "/metrics")).body.decode()
    assert response.json()["price"] == 10  # the client always gets the legacy answer
    (entry,) = [e for e in logs if e["event"] == "shadow response differs"]
    assert entry["route"] == "shop"
    assert entry["differences"] == ["extra", "price"]
    assert shadow.diffs == 1
    assert (
        'shipyard_gateway_shadow_total{frontend="web",outcome="diff",route="shop"} 1.0' in metrics
    )


async def test_a_slow_shadow_target_never_delays_the_client(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(seen: Seen) -> UpstreamReply:
        arrived.set()
        await release.wait()
        return UpstreamReply(body=b"{}")

    upstream_b.respond = hang
    options = ", weight: 0, shadow: {share: 1.0, timeout: 5}"
    async with running(split_yaml(upstream, upstream_b, options)) as gw:
        response = await request(gw.address("web")[1], path="/p")
        # The client has its answer while the shadow copy is still unanswered.
        assert response.status == 200
        await arrived.wait()
        release.set()
        await gw.runtime.shadows[("web", "shop")].drain()


async def test_post_requests_are_not_shadowed_by_default(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    options = ", weight: 0, shadow: {share: 1.0}"
    async with running(split_yaml(upstream, upstream_b, options)) as gw:
        await request(gw.address("web")[1], "POST", "/orders", body=b"{}")
        await gw.runtime.shadows[("web", "shop")].drain()
    assert upstream_b.seen == []
