"""HTTP hardening: limits, malformed requests, path tricks, SSRF, header hygiene."""

from __future__ import annotations

import json

import pytest

from .conftest import Upstream, make_token, parse_responses, request, running, send_raw

SECRET = b"k" * 32


def guarded_yaml(upstream: Upstream, *, case_insensitive: bool = False) -> str:
    return f"""
listen: 127.0.0.1:0
limits: {{max_body_bytes: 1000, max_header_bytes: 4096, max_headers: 20}}
frontends:
  web:
    case_insensitive: {str(case_insensitive).lower()}
    jwt: {{keys: [{{alg: HS256, secret: {SECRET.decode()}}}]}}
    routes:
      - {{name: admin, prefix: /admin, upstream: {upstream.url}, auth: jwt}}
      - {{name: public, prefix: /, upstream: {upstream.url}, auth: none}}
"""


async def test_oversized_headers_get_431_and_never_reach_the_upstream(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        port = gw.address("web")[1]
        big = await request(port, headers={"X-Big": "x" * 5000})
        many = await request(port, headers={f"X-H{i}": "1" for i in range(25)})
    assert (big.status, many.status) == (431, 431)
    assert upstream.seen == []


async def test_oversized_bodies_get_413_whether_declared_or_chunked(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        port = gw.address("web")[1]
        declared = await request(port, "POST", "/upload", body=b"x" * 1001)
        chunk = b"x" * 600
        chunked = await send_raw(
            port,
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%b\r\n" % (len(chunk), chunk) * 2
            + b"0\r\n\r\n",
        )
    assert declared.status == 413
    assert parse_responses(chunked)[0].status == 413
    assert upstream.seen == []


@pytest.mark.parametrize(
    "raw",
    [
        # chunk size that is not hex
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        # Content-Length and Transfer-Encoding together: the request-smuggling classic
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        # two different Content-Lengths
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        # a space inside a header name
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        # a control character in a header value
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
        # no Host header in HTTP/1.1
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
        # two Host headers
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        # garbage
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ],
)
async def test_malformed_http_gets_400_and_is_never_forwarded(
    upstream: Upstream, raw: bytes
) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        data = await send_raw(gw.address("web")[1], raw, expect=2)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [400]
    assert "error" in responses[0].json()
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/public/../admin",
        "/x/%2e%2e/admin",
        "/x/%2E%2E/admin/",
        "//admin",
        "/.//admin",
        "/\\admin",
        "/%61dmin",
        "/admin;/../admin",
    ],
)
async def test_path_tricks_cannot_reach_a_protected_route_without_auth(
    upstream: Upstream, path: str
) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path=path)
    assert response.status in (401, 400)
    assert all(not seen.path.lower().startswith("/admin") for seen in upstream.seen)


async def test_a_path_climbing_above_the_root_gets_400(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/%2e%2e/admin")
    assert response.status == 400
    assert upstream.seen == []


async def test_case_insensitive_frontends_protect_every_spelling(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream, case_insensitive=True)) as gw:
        response = await request(gw.address("web")[1], path="/ADMIN/users")
    assert response.status == 401


async def test_a_normalised_path_is_what_the_upstream_receives(upstream: Upstream) -> None:
    token = make_token({"sub": "a", "exp": 2_000_000_000}, secret=SECRET)
    async with running(guarded_yaml(upstream)) as gw:
        response = await request(
            gw.address("web")[1],
            path="/public/../admin/./x//y",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status == 200
    assert upstream.seen[0].path == "/admin/x/y"


async def test_absolute_form_targets_and_evil_hosts_never_choose_the_upstream(
    upstream: Upstream,
) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        data = await send_raw(
            gw.address("web")[1],
            b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\n"
            b"Host: 169.254.169.254\r\n\r\n",
        )
    assert parse_responses(data)[0].status == 200
    seen = upstream.seen[0]
    assert seen.path == "/latest/meta-data"
    assert seen.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert seen.headers["x-forwarded-host"] == "169.254.169.254"


async def test_hop_by_hop_headers_are_stripped_and_forwarding_headers_set(
    upstream: Upstream,
) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        response = await request(
            gw.address("web")[1],
            path="/p",
            host="shop.example",
            headers={
                "Connection": "close, X-Private",
                "X-Private": "secret",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic abc",
                "X-Kept": "yes",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
    seen = upstream.seen[0].headers
    for name in ("x-private", "keep-alive", "te", "proxy-authorization", "connection"):
        assert name not in seen
    assert seen["x-kept"] == "yes"
    assert seen["traceparent"].startswith("00-0af7")
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example"
    assert seen["forwarded"] == 'for=127.0.0.1;proto=http;host="shop.example"'
    assert seen["x-request-id"] == response.headers["x-request-id"]


async def test_a_client_request_id_is_propagated_when_well_formed(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        port = gw.address("web")[1]
        kept = await request(port, headers={"X-Request-Id": "abc-123"})
        replaced = await request(port, headers={"X-Request-Id": "bad id\twith junk"})
    assert kept.headers["x-request-id"] == "abc-123"
    assert replaced.headers["x-request-id"] != "bad id\twith junk"
    assert upstream.seen[1].headers["x-request-id"] == replaced.headers["x-request-id"]


async def test_a_chunked_request_body_is_forwarded_with_a_length(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        data = await send_raw(
            gw.address("web")[1],
            b"POST /in HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
    assert parse_responses(data)[0].status == 200
    assert upstream.seen[0].body == b"hello world"
    assert upstream.seen[0].headers["content-length"] == "11"
    assert "transfer-encoding" not in upstream.seen[0].headers


async def test_local_errors_are_short_json(upstream: Upstream) -> None:
    async with running(guarded_yaml(upstream)) as gw:
        response = await request(gw.address("web")[1], path="/admin")
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"error": "a bearer token is required"}
