"""Admin API: token protection, state views, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from shipyard.gateway import Gateway

from .conftest import Upstream, free_port_closed, request, running

TOKEN = "s3cret-admin"


def admin_yaml(url: str, admin: str = f"token: {TOKEN}", extra_routes: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0", {admin}}}
services:
  app: {{urls: [{url}], breaker_minimum_calls: 2, breaker_reset: 60}}
frontends:
  web:
    routes:
      - {{name: app, prefix: /, service: app, rate_limit: {{rate: 1, burst: 2}},
         cache: {{ttl: 30}}}}
{extra_routes}
"""


async def admin(gw: Gateway, method: str, path: str, token: str | None = TOKEN) -> Any:
    address = gw.admin_address
    assert address is not None
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await request(address[1], method, path, headers=headers)


async def test_the_admin_api_needs_the_bearer_token(upstream: Upstream) -> None:
    async with running(admin_yaml(upstream.url)) as gw:
        missing = await admin(gw, "GET", "/routes", token=None)
        wrong = await admin(gw, "GET", "/routes", token="guess")
        right = await admin(gw, "GET", "/routes")
    assert (missing.status, wrong.status, right.status) == (401, 401, 200)
    assert missing.headers["www-authenticate"].startswith("Bearer")


async def test_health_answers_without_the_token_and_reveals_nothing(upstream: Upstream) -> None:
    async with running(admin_yaml(upstream.url)) as gw:
        health = await admin(gw, "GET", "/health", token=None)
        routes = await admin(gw, "GET", "/routes", token=None)
    assert health.status == 200
    assert health.json() == {"status": "pass"}
    assert routes.status == 401


async def test_without_a_token_the_admin_api_is_not_started(
    upstream: Upstream, monkeypatch: Any
) -> None:
    monkeypatch.delenv("SHIPYARD_TEST_ADMIN_TOKEN", raising=False)
    async with running(admin_yaml(upstream.url, "token_env: SHIPYARD_TEST_ADMIN_TOKEN")) as gw:
        assert gw.admin_address is None


async def test_admin_lists_routes_frontends_upstreams_and_breakers(upstream: Upstream) -> None:
    async with running(admin_yaml(upstream.url)) as gw:
        routes = (await admin(gw, "GET", "/routes")).json()
        frontends = (await admin(gw, "GET", "/frontends")).json()
        upstreams = (await admin(gw, "GET", "/upstreams")).json()
        breakers = (await admin(gw, "GET", "/breakers")).json()
        missing = await admin(gw, "GET", "/nothing")
    assert routes[0]["name"] == "app"
    assert routes[0]["service"] == "app"
    assert routes[0]["cached"] is True
    assert frontends[0]["name"] == "web"
    assert frontends[0]["listen"] == "{}:{}".format(*gw.address("web"))
    assert upstreams["app"]["instances"] == [f"127.0.0.1:{upstream.port}"]
    assert breakers == {"app": "closed"}
    assert missing.status == 404


async def test_metrics_count_requests_cache_limits_and_breakers(upstream: Upstream) -> None:
    async with running(admin_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        statuses = [(await request(port, path="/same")).status for _ in range(3)]
        response = await admin(gw, "GET", "/metrics")
    text = response.body.decode()
    assert statuses == [200, 200, 429]
    assert response.headers["content-type"].startswith("text/plain")
    assert 'shipyard_gateway_requests_total{frontend="web",route="app",status="2xx"} 2.0' in text
    assert 'shipyard_gateway_requests_total{frontend="web",route="app",status="4xx"} 1.0' in text
    assert 'shipyard_gateway_request_duration_seconds_count{frontend="web",route="app"} 3.0' in text
    assert 'shipyard_gateway_rate_limited_total{frontend="web",route="app"} 1.0' in text
    assert 'shipyard_gateway_cache_total{frontend="web",result="hit",route="app"} 1.0' in text
    assert 'shipyard_gateway_cache_total{frontend="web",result="miss",route="app"} 1.0' in text
    assert 'shipyard_gateway_upstream_requests_total{service="app",status="2xx"} 1.0' in text
    assert 'shipyard_gateway_breaker_state{service="app",state="closed"} 1.0' in text


async def test_an_open_breaker_shows_in_metrics_and_breakers() -> None:
    dead = f"http://127.0.0.1:{free_port_closed()}"
    async with running(admin_yaml(dead)) as gw:
        port = gw.address("web")[1]
        for path in ("/a", "/b"):
            await request(port, path=path)
        breakers = (await admin(gw, "GET", "/breakers")).json()
        text = (await admin(gw, "GET", "/metrics")).body.decode()
    assert breakers == {"app": "open"}
    assert 'shipyard_gateway_breaker_state{service="app",state="open"} 1.0' in text
    assert 'shipyard_gateway_upstream_requests_total{service="app",status="5xx"} 2.0' in text
