"""Proxying: failures (502/503/504), keep-alive, pipelining, streaming, retries, logs."""

from __future__ import annotations

import asyncio
import io
import json

from shipyard.gateway import Chain, Exchange, Filter, Limits, Reply, parse_config
from shipyard.gateway.routing import Router
from shipyard.gateway.server import Frontend, HttpConnection, Listener

from .conftest import (
    Seen,
    Upstream,
    UpstreamReply,
    free_port_closed,
    parse_responses,
    request,
    running,
    send_raw,
)


def proxy_yaml(url: str, service: str = "", route: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
services:
  app: {{urls: [{url}] {service}}}
frontends:
  web:
    routes: [{{name: app, prefix: /, service: app {route}}}]
"""


async def test_an_unreachable_upstream_answers_502() -> None:
    async with running(proxy_yaml(f"http://127.0.0.1:{free_port_closed()}")) as gw:
        response = await request(gw.address("web")[1], path="/x")
    assert response.status == 502
    assert "app" in response.json()["error"]


async def test_an_upstream_that_does_not_answer_in_time_gives_504(upstream: Upstream) -> None:
    never = asyncio.Event()

    async def hang(seen: Seen) -> None:
        await never.wait()

    upstream.respond = hang
    async with running(proxy_yaml(upstream.url, route=", timeout: 0.02")) as gw:
        response = await request(gw.address("web")[1], path="/slow")
    never.set()
    assert response.status == 504


async def test_keep_alive_reuses_both_client_and_upstream_connections(upstream: Upstream) -> None:
    async with running(proxy_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        for i in range(3):
            writer.write(f"GET /k{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            data = b""
            while not parse_responses(data):
                data += await reader.read(65536)
            statuses.append(parse_responses(data)[0].status)
        writer.close()
    assert statuses == [200, 200, 200]
    assert upstream.connections == 1


async def test_pipelined_requests_are_answered_in_order(upstream: Upstream) -> None:
    async with running(proxy_yaml(upstream.url)) as gw:
        data = await send_raw(
            gw.address("web")[1],
            b"".join(f"GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5)),
            expect=5,
        )
    assert [json.loads(r.body)["path"] for r in parse_responses(data)] == [
        f"/p{i}" for i in range(5)
    ]


async def test_a_chunked_upstream_response_is_streamed_before_it_ends(upstream: Upstream) -> None:
    finish = asyncio.Event()

    def respond(seen: Seen) -> object:
        async def write(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await finish.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await writer.drain()

        return write

    upstream.respond = respond
    async with running(proxy_yaml(upstream.url)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.address("web")[1])
        writer.write(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while b"first" not in data:  # arrives while the upstream is still holding "second"
            data += await reader.read(65536)
        assert b"second" not in data
        finish.set()
        while not parse_responses(data):
            data += await reader.read(65536)
        writer.close()
    response = parse_responses(data)[0]
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body == b"firstsecond"


async def test_http_1_0_clients_get_a_response_and_a_closed_connection(upstream: Upstream) -> None:
    async with running(proxy_yaml(upstream.url)) as gw:
        data = await send_raw(gw.address("web")[1], b"GET /old HTTP/1.0\r\n\r\n", expect=2)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200]
    assert responses[0].headers["connection"] == "close"


async def test_head_requests_keep_the_upstream_content_length(upstream: Upstream) -> None:
    upstream.respond = lambda seen: UpstreamReply(body=b"x" * 42)
    async with running(proxy_yaml(upstream.url)) as gw:
        response = await request(gw.address("web")[1], "HEAD", "/h")
    assert response.status == 200
    assert response.headers["content-length"] == "42"


def flaky_pair(first: Upstream, second: Upstream) -> None:
    first.respond = lambda seen: UpstreamReply(status=503, body=b"busy")
    second.respond = lambda seen: UpstreamReply(body=b"ok")


async def test_idempotent_requests_are_retried_on_another_instance(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    flaky_pair(upstream, upstream_b)
    yaml = proxy_yaml(f"{upstream.url}, {upstream_b.url}", service=", retries: 1")
    async with running(yaml) as gw:
        response = await request(gw.address("web")[1], path="/r")
    assert (response.status, response.body) == (200, b"ok")
    assert (len(upstream.seen), len(upstream_b.seen)) == (1, 1)


async def test_a_post_is_retried_only_with_an_idempotency_key(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    flaky_pair(upstream, upstream_b)
    yaml = proxy_yaml(f"{upstream.url}, {upstream_b.url}", service=", retries: 1")
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        plain = await request(port, "POST", "/pay", body=b"{}")
        keyed = await request(port, "POST", "/pay", body=b"{}", headers={"Idempotency-Key": "k1"})
    assert plain.status == 503
    assert keyed.status == 200


async def test_a_failing_upstream_opens_its_breaker(upstream: Upstream) -> None:
    port = free_port_closed()
    yaml = proxy_yaml(
        f"http://127.0.0.1:{port}", service=", breaker_minimum_calls: 2, breaker_reset: 60"
    )
    async with running(yaml) as gw:
        gateway = gw.address("web")[1]
        statuses = [(await request(gateway, path="/b")).status for _ in range(3)]
        last = await request(gateway, path="/b")
    assert statuses == [502, 502, 503]
    assert "breaker open" in last.json()["error"]
    assert last.headers["retry-after"] == "60"


async def test_each_request_writes_one_json_access_log_line(upstream: Upstream) -> None:
    log = io.BytesIO()
    async with running(proxy_yaml(upstream.url), access_log=log) as gw:
        response = await request(
            gw.address("web")[1],
            path="/logged",
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
    (line,) = log.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["route"] == "app"
    assert entry["frontend"] == "web"
    assert entry["status"] == 200
    assert entry["bytes"] > len(response.body)
    assert entry["upstream"] == f"127.0.0.1:{upstream.port}"
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert entry["latency_ms"] >= 0


async def test_access_log_sampling_can_drop_lines(upstream: Upstream) -> None:
    log = io.BytesIO()
    yaml = proxy_yaml(upstream.url) + "access_log: {sample: 0}\n"
    async with running(yaml, access_log=log) as gw:
        await request(gw.address("web")[1], path="/quiet")
    assert log.getvalue() == b""


async def test_the_gateway_starts_the_trace_when_the_client_sent_none(upstream: Upstream) -> None:
    log = io.BytesIO()
    async with running(proxy_yaml(upstream.url), access_log=log) as gw:
        await request(gw.address("web")[1], path="/untraced")
    traceparent = upstream.seen[0].headers["traceparent"]
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, flags, len(trace_id), len(span_id)) == ("00", "01", 32, 16)
    assert int(trace_id, 16) != 0
    (line,) = log.getvalue().splitlines()
    assert json.loads(line)["trace_id"] == trace_id


async def test_an_upstream_echo_of_the_request_id_is_not_sent_twice(upstream: Upstream) -> None:
    upstream.respond = lambda seen: UpstreamReply(
        headers=[("X-Request-Id", seen.headers["x-request-id"])]
    )
    async with running(proxy_yaml(upstream.url)) as gw:
        raw = await send_raw(
            gw.address("web")[1], b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
    assert raw.lower().count(b"x-request-id:") == 1


async def test_requests_pipelined_after_a_connection_close_are_never_forwarded(
    upstream: Upstream,
) -> None:
    async with running(proxy_yaml(upstream.url)) as gw:
        data = await send_raw(
            gw.address("web")[1],
            b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n",
            expect=2,
        )
    assert [json.loads(r.body)["path"] for r in parse_responses(data)] == ["/first"]
    assert [seen.path for seen in upstream.seen] == ["/first"]


class NeedsATask(Filter):
    """A filter built on ``asyncio.timeout`` (as redis-py and aiohttp are): it only works
    with a current task."""

    async def on_request(self, exchange: Exchange) -> Reply | None:
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return None


async def test_a_route_whose_filter_needs_a_task_gets_one() -> None:
    async def answer(exchange: Exchange) -> Reply:
        return Reply(200, [], b"answered")

    chain = Chain([NeedsATask()], answer)
    assert not chain.runs_inline  # a filter (or router) that does not say so gets a Task
    yaml = "listen: 127.0.0.1:0\nfrontends: {web: {routes: [{prefix: /, upstream: http://a:1}]}}"
    route = parse_config(yaml, source="test.yaml").frontends[0].routes[0]
    listener = Listener([Frontend("web", "", Router([(route, ("r", chain))]))], limits=Limits())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(listener), "127.0.0.1", 0)
    try:
        response = await request(server.sockets[0].getsockname()[1], path="/x")
    finally:
        server.close()
        await server.wait_closed()
    assert (response.status, response.body) == (200, b"answered")
