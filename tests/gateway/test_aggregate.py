"""Aggregation routes: parallel and sequential fan-out, merging, shaping, fallbacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shipyard.gateway import GatewayConfigError, parse_config

from .conftest import Seen, Upstream, UpstreamReply, free_port_closed, request, running


def serve_json(upstream: Upstream, answers: dict[str, Any]) -> None:
    def respond(seen: Seen) -> UpstreamReply:
        if seen.path not in answers:
            return UpstreamReply(status=404, body=b'{"error":"not found"}')
        return UpstreamReply(body=json.dumps(answers[seen.path]).encode())

    upstream.respond = respond


@pytest.fixture
async def slow() -> AsyncIterator[Upstream]:
    """A backend that accepts requests and never answers."""
    server = Upstream("slow")
    never = asyncio.Event()

    async def hang(seen: Seen) -> None:
        await never.wait()

    server.respond = hang
    await server.start()
    yield server
    never.set()
    await server.close()


def page_yaml(backends: str, *, mode: str = "parallel", budget: float = 2.0) -> str:
    return f"""
listen: 127.0.0.1:0
frontends:
  web:
    routes:
      - name: page
        template: /page/{{id}}
        aggregate:
          mode: {mode}
          budget: {budget}
          backends:
{backends}
"""


async def test_backends_are_merged_under_their_keys(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    serve_json(upstream, {"/users/7": {"id": 7, "name": "Ada", "password_hash": "x"}})
    serve_json(upstream_b, {"/reviews?user=7": [{"stars": 5, "text": "great"}]})
    yaml = page_yaml(f"""
            - {{name: user, upstream: "{upstream.url}", path: "/users/{{id}}",
               select: [id, name], rename: {{name: full_name}}}}
            - {{name: reviews, upstream: "{upstream_b.url}", path: "/reviews?user={{id}}"}}
""")
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/7")
    assert response.status == 200
    assert "x-partial-response" not in response.headers
    assert response.json() == {
        "user": {"id": 7, "full_name": "Ada"},
        "reviews": [{"stars": 5, "text": "great"}],
    }


async def test_a_flattened_backend_merges_its_fields_at_the_top(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    serve_json(upstream, {"/users/1": {"id": 1, "name": "Ada"}})
    serve_json(upstream_b, {"/stats/1": {"orders": 3}})
    yaml = page_yaml(f"""
            - {{name: user, upstream: "{upstream.url}", path: "/users/{{id}}", flatten: true}}
            - {{name: stats, upstream: "{upstream_b.url}", path: "/stats/{{id}}", flatten: true}}
""")
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/1")
    assert response.json() == {"id": 1, "name": "Ada", "orders": 3}


async def test_a_down_and_a_slow_backend_give_a_partial_response(
    upstream: Upstream, slow: Upstream
) -> None:
    serve_json(upstream, {"/users/7": {"id": 7}})
    dead = f"http://127.0.0.1:{free_port_closed()}"
    yaml = page_yaml(
        f"""
            - {{name: user, upstream: "{upstream.url}", path: "/users/{{id}}"}}
            - {{name: reviews, upstream: "{dead}", path: "/reviews/{{id}}",
               fallback: {{value: []}}}}
            - {{name: recommendations, upstream: "{slow.url}", path: "/recs/{{id}}"}}
""",
        budget=0.05,
    )
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/7")
    assert response.status == 200
    assert response.headers["x-partial-response"] == "reviews,recommendations"
    assert response.json() == {"user": {"id": 7}, "reviews": []}


async def test_a_backend_timeout_shorter_than_the_budget_cuts_it_off(
    upstream: Upstream, slow: Upstream
) -> None:
    serve_json(upstream, {"/users/7": {"id": 7}})
    yaml = page_yaml(
        f"""
            - {{name: user, upstream: "{upstream.url}", path: "/users/{{id}}"}}
            - {{name: recs, upstream: "{slow.url}", path: "/recs", timeout: 0.02,
               fallback: {{value: {{items: []}}}}}}
""",
        budget=30,
    )
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/7")
    assert response.headers["x-partial-response"] == "recs"
    assert response.json()["recs"] == {"items": []}


async def test_the_cached_fallback_repeats_the_last_good_answer(upstream: Upstream) -> None:
    serve_json(upstream, {"/users/7": {"id": 7}, "/recs/7": ["book"]})
    yaml = page_yaml(f"""
            - {{name: user, upstream: "{upstream.url}", path: "/users/{{id}}"}}
            - {{name: recs, upstream: "{upstream.url}", path: "/recs/{{id}}", fallback: cached}}
""")
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        good = await request(port, path="/page/7")
        serve_json(upstream, {"/users/7": {"id": 7}})  # recs now answers 404
        fallback = await request(port, path="/page/7")
    assert "x-partial-response" not in good.headers
    assert fallback.headers["x-partial-response"] == "recs"
    assert fallback.json()["recs"] == ["book"]


async def test_sequence_feeds_a_field_of_one_answer_into_the_next_path(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    serve_json(upstream, {"/orders/9": {"id": 9, "user_id": "u 1/2"}})
    serve_json(upstream_b, {"/users/u%201%2F2": {"name": "Ada"}})
    yaml = page_yaml(
        f"""
            - {{name: order, upstream: "{upstream.url}", path: "/orders/{{id}}"}}
            - {{name: customer, upstream: "{upstream_b.url}", path: "/users/{{order.user_id}}"}}
""",
        mode="sequence",
    )
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/9")
    assert response.json() == {"order": {"id": 9, "user_id": "u 1/2"}, "customer": {"name": "Ada"}}
    assert upstream_b.seen[0].path == "/users/u%201%2F2"  # encoded: no path injection


async def test_in_sequence_a_failed_backend_fails_those_that_need_it(
    upstream_b: Upstream,
) -> None:
    serve_json(upstream_b, {})
    dead = f"http://127.0.0.1:{free_port_closed()}"
    yaml = page_yaml(
        f"""
            - {{name: order, upstream: "{dead}", path: "/orders/{{id}}"}}
            - {{name: customer, upstream: "{upstream_b.url}", path: "/users/{{order.user_id}}",
               fallback: {{value: null}}}}
""",
        mode="sequence",
    )
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/9")
    assert response.headers["x-partial-response"] == "order,customer"
    assert response.json() == {"customer": None}
    assert upstream_b.seen == []


async def test_when_every_backend_fails_without_fallback_the_route_answers_502() -> None:
    dead = f"http://127.0.0.1:{free_port_closed()}"
    yaml = page_yaml(f"""
            - {{name: user, upstream: "{dead}", path: "/users/{{id}}"}}
""")
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/page/1")
    assert response.status == 502
    assert response.headers["x-partial-response"] == "user"


def test_a_reference_to_another_backend_needs_sequence_mode() -> None:
    yaml = page_yaml("""
            - {name: order, upstream: "http://127.0.0.1:1", path: "/orders/{id}"}
            - {name: customer, upstream: "http://127.0.0.1:1", path: "/users/{order.user_id}"}
""")
    with pytest.raises(GatewayConfigError, match=r"mode: sequence"):
        parse_config(yaml)


def test_a_backend_path_may_only_use_the_route_parameters() -> None:
    yaml = page_yaml("""
            - {name: order, upstream: "http://127.0.0.1:1", path: "/orders/{nope}"}
""")
    with pytest.raises(GatewayConfigError, match=r"\{nope\} is not a parameter"):
        parse_config(yaml)
