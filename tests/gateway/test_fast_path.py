"""The callback-driven fast path answers exactly as the coroutine path does.

Each scenario runs twice against the same kind of upstream: once as the gateway runs
(filters decide synchronously, the proxy answers from the upstream's callbacks) and once
with the fast path switched off (every filter's ``on_request`` awaited, the proxy's
``__call__``), and everything a user can observe must match: responses, what the upstream
received, access-log lines, breaker counts, rate-limit refusals, 502/503/504.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shipyard.core import ManualClock
from shipyard.gateway import Gateway
from shipyard.gateway import server as server_module
from shipyard.gateway.auth_jwt import JwtAuth
from shipyard.gateway.errors import UpstreamError
from shipyard.gateway.filters import Filter
from shipyard.gateway.inline import InlineRun
from shipyard.gateway.proxy import Proxy
from shipyard.gateway.rate_limit import RateLimit
from shipyard.resilience.breaker import CircuitBreaker
from shipyard.resilience.errors import CircuitOpenError

from .conftest import (
    WALL,
    Seen,
    Upstream,
    UpstreamReply,
    free_port_closed,
    make_token,
    parse_responses,
    running,
)

SECRET = b"fast-path-secret"
TOKEN = make_token({"sub": "alice", "exp": WALL + 3600}, secret=SECRET)
# Differ on every run by design (ids, times); everything else must be identical.
VOLATILE_LOG = {"ts", "request_id", "latency_ms", "trace_id"}
VOLATILE_HEADERS = {"x-request-id", "traceparent"}


def gateway_yaml(upstream: Upstream, service: str = "", route: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
services:
  app: {{urls: [{upstream.url}] {service}}}
frontends:
  web:
    jwt:
      keys: [{{alg: HS256, secret: {SECRET.decode()}}}]
      claim_headers: {{sub: X-User-Id}}
    routes:
      - {{name: api, prefix: /api, service: app, auth: jwt,
          rate_limit: {{rate: 0.001, burst: 5, per: consumer}} {route}}}
"""


class Counting(InlineRun):
    """InlineRun that counts the coroutines the server had to drive."""

    started = 0

    def __init__(self, *args: Any) -> None:
        Counting.started += 1
        super().__init__(*args)


@pytest.fixture
def inline_runs(monkeypatch: pytest.MonkeyPatch) -> type[Counting]:
    Counting.started = 0
    monkeypatch.setattr(server_module, "InlineRun", Counting)
    return Counting


def coroutine_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the fast path off: no filter decides, the proxy cannot answer from
    callbacks."""
    monkeypatch.setattr(JwtAuth, "decide", Filter.decide)
    monkeypatch.setattr(RateLimit, "decide", Filter.decide)
    monkeypatch.delattr(Proxy, "answer_from_callbacks")


class Client:
    """One keep-alive client connection (so the upstream connection is pooled)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *paths: str, token: str | None = TOKEN) -> list[tuple[Any, ...]]:
        """Send ``paths`` pipelined in one write; (status, headers, body) of each."""
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.writer.write(
            b"".join(f"GET {p} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n".encode() for p in paths)
        )
        data = b""
        async with asyncio.timeout(5):
            while len(parse_responses(data)) < len(paths):
                chunk = await self.reader.read(65536)
                assert chunk, "the gateway closed the connection"
                data += chunk
        return [
            (
                r.status,
                {k: v for k, v in r.headers.items() if k not in VOLATILE_HEADERS},
                r.body,
            )
            for r in parse_responses(data)
        ]


Scenario = Callable[[Gateway, Client], Awaitable[list[Any]]]


async def observe(upstream: Upstream, yaml: str, scenario: Scenario) -> dict[str, Any]:
    log = io.BytesIO()
    async with running(yaml, access_log=log) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.address("web")[1])
        try:
            answers = await scenario(gw, Client(reader, writer))
        finally:
            writer.close()
        breaker = gw.runtime.upstreams["app"].breaker.metrics
        rejected = gw.runtime.rate_limits["web", "api"].rejected
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    return {
        "answers": answers,
        "upstream saw": [
            (s.method, s.path, {k: v for k, v in s.headers.items() if k not in VOLATILE_HEADERS})
            for s in upstream.seen
        ],
        "log": [{k: v for k, v in line.items() if k not in VOLATILE_LOG} for line in lines],
        "breaker": (breaker.state, breaker.calls, breaker.failures),
        "rate limited": rejected,
    }


async def both_ways(
    monkeypatch: pytest.MonkeyPatch,
    make_upstream: Callable[[], Awaitable[Upstream]],
    yaml: Callable[[Upstream], str],
    scenario: Scenario,
) -> dict[str, Any]:
    """Run ``scenario`` on the fast path, then on the coroutine path; assert they match."""
    upstream = await make_upstream()
    try:
        fast = await observe(upstream, yaml(upstream), scenario)
        upstream.seen.clear()
        with monkeypatch.context() as patch:
            coroutine_path_only(patch)
            slow = await observe(upstream, yaml(upstream), scenario)
    finally:
        await upstream.close()
    for key, value in fast.items():
        assert value == slow[key], key
    return fast


async def started(upstream: Upstream) -> Upstream:
    await upstream.start()
    return upstream


async def test_proxied_rejected_and_limited_requests_match_the_coroutine_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario(gw: Gateway, client: Client) -> list[Any]:
        return [
            await client.send("/api/a"),  # a JWT cache miss and a new upstream connection
            await client.send("/api/b"),  # the fast path
            await client.send("/api/c", token=None),  # 401 from decide
            await client.send("/api/d", "/api/e"),  # pipelined
            await client.send("/api/f", "/api/g"),  # the bucket (burst 5) runs out: 429
        ]

    seen = await both_ways(
        monkeypatch, lambda: started(Upstream("a")), lambda up: gateway_yaml(up), scenario
    )
    statuses = [[status for status, _, _ in answer] for answer in seen["answers"]]
    assert statuses == [[200], [200], [401], [200, 200], [200, 429]]
    assert seen["answers"][4][1][1]["ratelimit-remaining"] == "0"
    assert seen["rate limited"] == 1
    forwarded = [path for _, path, _ in seen["upstream saw"]]
    assert forwarded == ["/api/a", "/api/b", "/api/d", "/api/e", "/api/f"]
    assert all(headers["x-user-id"] == "alice" for _, _, headers in seen["upstream saw"])
    assert [line["status"] for line in seen["log"]] == [200, 200, 401, 200, 200, 200, 429]
    assert seen["breaker"] == ("closed", 5, 0)


async def test_a_cached_token_on_a_pooled_connection_needs_no_coroutine(
    inline_runs: type[Counting],
) -> None:
    upstream = await started(Upstream("a"))
    async with running(gateway_yaml(upstream)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.address("web")[1])
        client = Client(reader, writer)
        assert [a[0] for a in await client.send("/api/a")] == [200]
        first = inline_runs.started  # the JWT cache miss and the upstream connect
        for path in ("/api/b", "/api/c", "/api/d"):
            assert [a[0] for a in await client.send(path)] == [200]
        assert [a[0] for a in await client.send("/api/e", token=None)] == [401]
        writer.close()
    await upstream.close()
    assert first >= 1
    assert inline_runs.started == first


async def test_upstream_timeouts_answer_504_and_count_as_breaker_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    never = asyncio.Event()

    async def make() -> Upstream:
        upstream = await started(Upstream("a"))

        async def respond(seen: Seen) -> UpstreamReply:
            if seen.path == "/api/slow":
                await never.wait()
            return UpstreamReply(body=b"ok")

        upstream.respond = respond
        return upstream

    async def scenario(gw: Gateway, client: Client) -> list[Any]:
        return [
            await client.send("/api/a"),
            await client.send("/api/slow"),  # on the pooled connection: the fast path
            await client.send("/api/b"),  # the timed-out connection was dropped
        ]

    try:
        seen = await both_ways(
            monkeypatch, make, lambda up: gateway_yaml(up, route=", timeout: 0.05"), scenario
        )
    finally:
        never.set()
    assert [answer[0][0] for answer in seen["answers"]] == [200, 504, 200]
    assert seen["breaker"] == ("closed", 3, 1)
    assert [line["status"] for line in seen["log"]] == [200, 504, 200]


async def test_upstream_failures_answer_502_then_open_the_breaker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def make() -> Upstream:
        upstream = await started(Upstream("a"))

        def respond(seen: Seen) -> object:
            if seen.path == "/api/ok":
                return UpstreamReply(body=b"ok")

            async def break_off(writer: asyncio.StreamWriter) -> None:
                writer.write(b"HTTP/1.1 200 OK\r\n")  # part of an answer: never resent
                await writer.drain()
                writer.close()

            return break_off

        upstream.respond = respond
        return upstream

    async def scenario(gw: Gateway, client: Client) -> list[Any]:
        return [
            await client.send("/api/ok"),
            await client.send("/api/broken"),  # on the pooled connection: the fast path
            await client.send("/api/broken"),  # a fresh connection: the coroutine path
            await client.send("/api/ok"),  # 2 of 3 failed: the breaker is open
        ]

    yaml = lambda up: gateway_yaml(  # noqa: E731
        up, service=", breaker_minimum_calls: 3, breaker_reset: 60"
    )
    seen = await both_ways(monkeypatch, make, yaml, scenario)
    assert [answer[0][0] for answer in seen["answers"]] == [200, 502, 502, 503]
    assert seen["breaker"] == ("open", 3, 2)
    assert seen["answers"][3][0][1]["retry-after"] == "60"


async def test_a_pooled_connection_closed_by_the_upstream_is_resent_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def make() -> Upstream:
        upstream = await started(Upstream("a"))

        def respond(seen: Seen) -> object:
            if len(upstream.seen) != 2:
                return UpstreamReply(body=b"ok")

            async def hang_up(writer: asyncio.StreamWriter) -> None:
                writer.close()  # closed idle just as the gateway reused it

            return hang_up

        upstream.respond = respond
        return upstream

    async def scenario(gw: Gateway, client: Client) -> list[Any]:
        return [await client.send("/api/a"), await client.send("/api/b")]

    seen = await both_ways(monkeypatch, make, lambda up: gateway_yaml(up), scenario)
    assert [answer[0][0] for answer in seen["answers"]] == [200, 200]
    assert [path for _, path, _ in seen["upstream saw"]] == ["/api/a", "/api/b", "/api/b"]
    assert seen["breaker"] == ("closed", 2, 0)  # the resend is part of the same call


async def test_an_unreachable_upstream_still_answers_502_from_the_fast_path_chain() -> None:
    yaml = gateway_yaml(Upstream("a")).replace(
        "http://127.0.0.1:0", f"http://127.0.0.1:{free_port_closed()}"
    )
    async with running(yaml) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.address("web")[1])
        answers = await Client(reader, writer).send("/api/a", "/api/b")
        writer.close()
    assert [status for status, _, _ in answers] == [502, 502]


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "coroutine path"])
async def test_a_response_that_ends_with_the_connection_is_relayed_whole(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    if not fast:
        coroutine_path_only(monkeypatch)
    upstream = await started(Upstream("a"))

    def respond(seen: Seen) -> object:
        if seen.path == "/api/a":
            return UpstreamReply(body=b"ok")

        async def until_close(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nno length, ")
            await writer.drain()
            for _ in range(5):  # a few loop turns: the rest comes in a later read
                await asyncio.sleep(0)
            writer.write(b"ends at close")
            await writer.drain()
            writer.close()

        return until_close

    upstream.respond = respond
    try:
        async with running(gateway_yaml(upstream)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.address("web")[1])
            client = Client(reader, writer)
            first = await client.send("/api/a")
            second = await client.send("/api/b")  # on the pooled connection
            writer.close()
    finally:
        await upstream.close()
    assert [(status, body) for status, _, body in first + second] == [
        (200, b"ok"),
        (200, b"no length, ends at close"),
    ]


async def test_the_breakers_inline_api_counts_as_its_decorator_does() -> None:
    """``inline_ticket``/``inline_complete`` (the proxy's fast path) leave a breaker in the
    same state, with the same counts, as the same outcomes through the decorator."""
    outcomes = [None, UpstreamError("x"), None, UpstreamError("y"), UpstreamError("z"), None]

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(
            "b",
            minimum_calls=4,
            reset_timeout=60,
            record=(UpstreamError,),
            clock=ManualClock(wall_start=WALL),
        )

    decorated, inline = breaker(), breaker()

    @decorated
    async def call(outcome: Exception | None) -> None:
        if outcome is not None:
            raise outcome

    decorated_seen, inline_seen = [], []
    for outcome in outcomes:
        try:
            await call(outcome)
            decorated_seen.append("ok")
        except UpstreamError:
            decorated_seen.append("failed")
        except CircuitOpenError:
            decorated_seen.append("rejected")
        ticket = inline.inline_ticket()
        if ticket < 0:
            inline_seen.append("rejected")  # the proxy then takes the decorated path
            continue
        inline.inline_complete(ticket, outcome)
        inline_seen.append("ok" if outcome is None else "failed")
    expected = ["ok", "failed", "ok", "failed", "rejected", "rejected"]
    assert inline_seen == decorated_seen == expected
    assert (inline.state, inline.metrics.calls, inline.metrics.failures) == (
        decorated.state,
        decorated.metrics.calls,
        decorated.metrics.failures,
    )


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "coroutine path"])
async def test_a_streamed_response_on_a_pooled_connection_flows_then_the_next_request(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    if not fast:
        coroutine_path_only(monkeypatch)
    finish = asyncio.Event()
    upstream = await started(Upstream("a"))

    def respond(seen: Seen) -> object:
        if seen.path != "/api/stream":
            return UpstreamReply(body=seen.path.encode())

        async def write(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await finish.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await writer.drain()

        return write

    upstream.respond = respond
    try:
        async with running(gateway_yaml(upstream)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.address("web")[1])
            client = Client(reader, writer)
            before = await client.send("/api/a")
            writer.write(f"GET /api/stream HTTP/1.1\r\nHost: gw\r\n{_auth()}\r\n".encode())
            data = b""
            while b"first" not in data:  # arrives while the upstream holds "second"
                data += await reader.read(65536)
            assert b"second" not in data
            finish.set()
            while not parse_responses(data):
                data += await reader.read(65536)
            after = await client.send("/api/b")
            writer.close()
    finally:
        await upstream.close()
    (streamed,) = parse_responses(data)
    assert (streamed.headers["transfer-encoding"], streamed.body) == ("chunked", b"firstsecond")
    assert [(status, body) for status, _, body in before + after] == [
        (200, b"/api/a"),
        (200, b"/api/b"),
    ]
    assert upstream.connections == 1  # the streamed connection went back to the pool


def _auth() -> str:
    return f"Authorization: Bearer {TOKEN}\r\n"
