"""CORS: preflights answered locally, headers on actual responses, others left bare."""

from __future__ import annotations

import pytest

from shipyard.gateway import GatewayConfigError, parse_config

from .conftest import Upstream, request, running

ORIGIN = "https://app.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}


def cors_yaml(url: str, cors: str, route: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
frontends:
  web:
    cors: {{{cors}}}
    api_keys: {{keys: [{{consumer: acme, key: k1}}]}}
    routes:
      - {{name: api, prefix: /api, upstream: "{url}", auth: api_key {route}}}
      - {{name: public, prefix: /, upstream: "{url}", auth: none, cors: false}}
"""


ALLOW = f"origins: [{ORIGIN}], methods: [GET, POST], headers: [Content-Type], max_age: 300"


async def test_a_preflight_is_answered_locally_without_credentials(upstream: Upstream) -> None:
    async with running(cors_yaml(upstream.url, ALLOW)) as gw:
        response = await request(
            gw.address("web")[1],
            "OPTIONS",
            "/api/orders",
            headers={**PREFLIGHT, "Access-Control-Request-Headers": "content-type"},
        )
    assert response.status == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    assert response.headers["access-control-allow-headers"] == "content-type"
    assert response.headers["access-control-max-age"] == "300"
    assert upstream.seen == []


async def test_an_actual_response_carries_the_cors_headers(upstream: Upstream) -> None:
    async with running(cors_yaml(upstream.url, ALLOW + ", expose: [X-Total]")) as gw:
        response = await request(
            gw.address("web")[1], path="/api/x", headers={"Origin": ORIGIN, "X-Api-Key": "k1"}
        )
    assert response.status == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-expose-headers"] == "x-total"
    assert response.headers["vary"] == "origin"


async def test_a_local_error_reply_carries_them_too(upstream: Upstream) -> None:
    async with running(cors_yaml(upstream.url, ALLOW)) as gw:
        response = await request(gw.address("web")[1], path="/api/x", headers={"Origin": ORIGIN})
    assert response.status == 401
    assert response.headers["access-control-allow-origin"] == ORIGIN


async def test_a_disallowed_origin_gets_no_cors_headers(upstream: Upstream) -> None:
    evil = "https://evil.example"
    async with running(cors_yaml(upstream.url, ALLOW)) as gw:
        port = gw.address("web")[1]
        actual = await request(port, path="/api/x", headers={"Origin": evil, "X-Api-Key": "k1"})
        preflight = await request(port, "OPTIONS", "/api/x", headers={**PREFLIGHT, "Origin": evil})
    assert actual.status == 200
    assert not [h for h in actual.headers if h.startswith("access-control-")]
    assert preflight.status == 403
    assert not [h for h in preflight.headers if h.startswith("access-control-")]


async def test_a_preflight_for_an_unlisted_method_or_header_is_refused(
    upstream: Upstream,
) -> None:
    async with running(cors_yaml(upstream.url, ALLOW)) as gw:
        port = gw.address("web")[1]
        method = await request(
            port,
            "OPTIONS",
            "/api/x",
            headers={**PREFLIGHT, "Access-Control-Request-Method": "DELETE"},
        )
        header = await request(
            port,
            "OPTIONS",
            "/api/x",
            headers={**PREFLIGHT, "Access-Control-Request-Headers": "x-evil"},
        )
    assert (method.status, header.status) == (403, 403)


async def test_any_origin_answers_with_a_star(upstream: Upstream) -> None:
    async with running(cors_yaml(upstream.url, 'origins: "*"')) as gw:
        response = await request(
            gw.address("web")[1], path="/api/x", headers={"Origin": ORIGIN, "X-Api-Key": "k1"}
        )
    assert response.headers["access-control-allow-origin"] == "*"


async def test_a_route_can_opt_out_of_the_frontend_cors(upstream: Upstream) -> None:
    async with running(cors_yaml(upstream.url, ALLOW)) as gw:
        response = await request(gw.address("web")[1], path="/x", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


def test_credentials_with_any_origin_is_a_config_error() -> None:
    with pytest.raises(GatewayConfigError, match="credentials"):
        parse_config(cors_yaml("http://127.0.0.1:1", 'origins: "*", credentials: true'))
