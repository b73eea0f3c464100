"""Routing through a running gateway: match kinds, conditions, rewrites, targets, BFFs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shipyard.gateway import StaticResolver

from .conftest import Upstream, request, running


def routes_yaml(upstream: Upstream) -> str:
    return f"""
listen: 127.0.0.1:0
frontends:
  web:
    routes:
      - {{name: health, exact: /health, upstream: {upstream.url}}}
      - {{name: user, template: "/users/{{id}}", methods: [GET], upstream: {upstream.url},
          rewrite: "/v2/accounts/{{id}}"}}
      - {{name: order, regex: '^/orders/(?P<num>[0-9]+)$', upstream: {upstream.url},
          rewrite: "/o/{{num}}"}}
      - {{name: api, prefix: /api, strip_prefix: true, upstream: {upstream.url}}}
      - {{name: api-admin, prefix: /api/admin, upstream: {upstream.url}}}
      - {{name: tenant, prefix: /t, headers: {{x-tenant: acme}}, upstream: {upstream.url}}}
      - {{name: vhost, prefix: /v, hosts: [shop.example], upstream: {upstream.url}}}
"""


async def test_each_match_kind_routes_and_rewrites(upstream: Upstream) -> None:
    async with running(routes_yaml(upstream)) as gw:
        port = gw.address("web")[1]
        assert (await request(port, path="/health")).status == 200
        assert (await request(port, path="/users/7?x=1")).status == 200
        assert (await request(port, path="/orders/99")).status == 200
        assert (await request(port, path="/api/items/3")).status == 200
        assert (await request(port, path="/api/admin/x")).status == 200
    assert [seen.path for seen in upstream.seen] == [
        "/health",
        "/v2/accounts/7?x=1",
        "/o/99",
        "/items/3",
        "/api/admin/x",
    ]


async def test_a_prefix_matches_whole_segments_only(upstream: Upstream) -> None:
    async with running(routes_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/apix")
    assert response.status == 404
    assert response.json() == {"error": "no route matches this request"}
    assert upstream.seen == []


async def test_a_path_served_for_other_methods_answers_405(upstream: Upstream) -> None:
    async with running(routes_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], "DELETE", "/users/7")
    assert response.status == 405
    assert response.headers["allow"] == "GET"


async def test_header_and_host_conditions_must_hold(upstream: Upstream) -> None:
    async with running(routes_yaml(upstream)) as gw:
        port = gw.address("web")[1]
        assert (await request(port, path="/t/1")).status == 404
        assert (await request(port, path="/t/1", headers={"X-Tenant": "acme"})).status == 200
        assert (await request(port, path="/v/1", host="other.example")).status == 404
        assert (await request(port, path="/v/1", host="shop.example:8080")).status == 200


async def test_a_service_with_several_urls_is_balanced_round_robin(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    yaml = f"""
listen: 127.0.0.1:0
services:
  users: {{urls: [{upstream.url}, {upstream_b.url}]}}
frontends:
  web:
    routes: [{{prefix: /, service: users}}]
"""
    async with running(yaml) as gw:
        served = [
            (await request(gw.address("web")[1], path=f"/{i}")).headers["x-served-by"]
            for i in range(4)
        ]
    assert served == ["a", "b", "a", "b"]


@dataclass(frozen=True)
class Instance:
    address: str
    port: int


async def test_a_service_without_urls_is_resolved_through_the_resolver(
    upstream: Upstream,
) -> None:
    instances: dict[str, Sequence[Instance]] = {"users": [Instance("127.0.0.1", upstream.port)]}
    yaml = """
listen: 127.0.0.1:0
services:
  users: {}
frontends:
  web:
    routes: [{prefix: /, service: users}]
"""
    async with running(yaml, resolver=StaticResolver(instances)) as gw:
        response = await request(gw.address("web")[1], path="/me")
    assert response.status == 200
    assert upstream.seen[0].path == "/me"


async def test_shipyard_discovery_works_as_the_resolver(upstream: Upstream) -> None:
    from shipyard.discovery import Discovery

    yaml = """
listen: 127.0.0.1:0
services:
  users: {}
frontends:
  web:
    routes: [{prefix: /, service: users}]
"""
    discovery = Discovery(f"static://users=127.0.0.1:{upstream.port}")
    try:
        async with running(yaml, resolver=discovery) as gw:
            response = await request(gw.address("web")[1], path="/found")
    finally:
        await discovery.aclose()
    assert response.status == 200
    assert upstream.seen[0].path == "/found"


async def test_a_service_with_no_instances_answers_503(upstream: Upstream) -> None:
    yaml = """
listen: 127.0.0.1:0
services:
  users: {}
frontends:
  web:
    routes: [{prefix: /, service: users}]
"""
    async with running(yaml, resolver=StaticResolver({})) as gw:
        response = await request(gw.address("web")[1], path="/me")
    assert response.status == 503


async def test_frontends_can_share_a_listener_by_prefix_or_have_their_own(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    yaml = f"""
listen: 127.0.0.1:0
frontends:
  web:
    prefix: /web
    routes: [{{name: home, prefix: /, upstream: {upstream.url}}}]
  mobile:
    prefix: /mobile
    routes: [{{name: home, prefix: /, upstream: {upstream_b.url}}}]
  partner:
    listen: 127.0.0.1:0
    routes: [{{name: home, prefix: /, upstream: {upstream_b.url}}}]
"""
    async with running(yaml) as gw:
        shared = gw.address("web")[1]
        assert gw.address("mobile")[1] == shared
        assert gw.address("partner")[1] != shared
        web = await request(shared, path="/web/cart")
        mobile = await request(shared, path="/mobile/cart")
        partner = await request(gw.address("partner")[1], path="/cart")
        neither = await request(shared, path="/cart")
    assert (web.headers["x-served-by"], mobile.headers["x-served-by"]) == ("a", "b")
    assert partner.headers["x-served-by"] == "b"
    assert neither.status == 404
    # The frontend's prefix is not part of the route's path.
    assert [s.path for s in upstream.seen] == ["/cart"]
