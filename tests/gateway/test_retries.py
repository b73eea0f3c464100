"""Upstream retries: the retry budget, and the pooled-connection race that is not a 502."""

from __future__ import annotations

import asyncio

from .conftest import Seen, Upstream, UpstreamReply, request, running


def proxy_yaml(urls: str, service: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
services:
  app: {{urls: [{urls}] {service}}}
frontends:
  web:
    routes: [{{name: app, prefix: /, service: app}}]
"""


def close_on_second_request(upstream: Upstream, write: bytes = b"") -> None:
    """The upstream closes its idle keep-alive connection just as the gateway reuses it."""

    def respond(seen: Seen) -> object:
        if len(upstream.seen) != 2:
            return UpstreamReply(body=b"ok")

        async def hang_up(writer: asyncio.StreamWriter) -> None:
            writer.write(write)
            await writer.drain()
            writer.close()

        return hang_up

    upstream.respond = respond


async def test_a_reused_connection_closed_before_answering_is_retried_fresh(
    upstream: Upstream,
) -> None:
    close_on_second_request(upstream)
    async with running(proxy_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        first = await request(port, "POST", "/a", body=b"{}")
        second = await request(port, "POST", "/b", body=b"{}")
    assert (first.status, second.status) == (200, 200)
    assert upstream.connections == 2
    assert [s.path for s in upstream.seen] == ["/a", "/b", "/b"]


async def test_a_connection_that_closes_mid_answer_is_not_resent(upstream: Upstream) -> None:
    close_on_second_request(upstream, write=b"HTTP/1.1 200 OK\r\n")
    async with running(proxy_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        await request(port, "POST", "/a", body=b"{}")
        second = await request(port, "POST", "/b", body=b"{}")
    assert second.status == 502  # it may have been processed: a POST is not sent twice
    assert [s.path for s in upstream.seen] == ["/a", "/b"]


async def test_retries_stop_when_the_retry_budget_is_spent(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    for server in (upstream, upstream_b):
        server.respond = lambda seen: UpstreamReply(status=503, body=b"busy")
    budget = "retry_budget: {ratio: 0, min_per_second: 0.1, window: 10}"
    yaml = proxy_yaml(f"{upstream.url}, {upstream_b.url}", f", retries: 1, {budget}")
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        statuses = [(await request(port, path=f"/{i}")).status for i in range(3)]
        denied = gw.runtime.upstreams["app"].retries_denied
    assert statuses == [503, 503, 503]
    assert len(upstream.seen) + len(upstream_b.seen) == 4  # 3 first attempts + 1 retry
    assert denied == 2


async def test_a_generous_budget_retries_every_failed_idempotent_request(
    upstream: Upstream, upstream_b: Upstream
) -> None:
    upstream.respond = lambda seen: UpstreamReply(status=503, body=b"busy")
    upstream_b.respond = lambda seen: UpstreamReply(body=b"ok")
    yaml = proxy_yaml(f"{upstream.url}, {upstream_b.url}", ", retries: 1")
    async with running(yaml) as gw:
        port = gw.address("web")[1]
        statuses = [(await request(port, path=f"/{i}")).status for i in range(4)]
    assert statuses == [200] * 4
