"""ServiceClient against real local upstreams: balancing, retries, breakers, ejection,
timeouts, fallbacks, tracing, and discovery errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest

from shipyard.client import (
    ClientClosedError,
    HTTPClientStatusError,
    HTTPServerStatusError,
    ServiceClient,
    TraceContext,
    UpstreamConnectionError,
    trace_scope,
)
from shipyard.core import ManualClock
from shipyard.discovery import (
    Discovery,
    LeastOutstanding,
    NoHealthyInstance,
    OutlierDetector,
    Registration,
    RoundRobin,
    ServiceNotFound,
    StaticBackend,
)
from shipyard.discovery.registry import RegistryServer
from shipyard.resilience import CallTimeoutError, CircuitBreaker, CircuitOpenError, Fallback

from .conftest import SERVICE, StartUpstreams, Upstream, closed_port, discovery_for

RETRY_ONLY: dict[str, Any] = {"retry": {"max_attempts": 3, "base_delay": 0.01}}


@asynccontextmanager
async def client_for(*upstreams: Upstream | str, **options: Any) -> AsyncIterator[ServiceClient]:
    options.setdefault("clock", ManualClock())
    async with (
        discovery_for(*upstreams) as discovery,
        ServiceClient(SERVICE, discovery=discovery, **options) as client,
    ):
        yield client


def total_requests(*upstreams: Upstream) -> int:
    return sum(len(u.seen) for u in upstreams)


async def test_calls_are_spread_across_instances(start_upstreams: StartUpstreams) -> None:
    upstreams = await start_upstreams(3)
    async with client_for(*upstreams) as client:
        answered = [(await client.get("/items")).json()["instance"] for _ in range(6)]
    assert answered == ["a", "b", "c", "a", "b", "c"]
    assert [len(u.seen) for u in upstreams] == [2, 2, 2]


async def test_a_503_is_retried_on_another_instance(start_upstreams: StartUpstreams) -> None:
    a, b = await start_upstreams(2)
    a.status = 503
    async with client_for(a, b, policy=RETRY_ONLY) as client:
        response = await client.get("/items/1")
    assert response.json() == {"instance": "b"}
    assert response.instance is not None
    assert response.instance.port == b.port
    assert (len(a.seen), len(b.seen)) == (1, 1)


async def test_a_4xx_is_never_retried(start_upstreams: StartUpstreams) -> None:
    a, b = await start_upstreams(2)
    a.status = b.status = 404
    async with client_for(a, b, policy=RETRY_ONLY) as client:
        with pytest.raises(HTTPClientStatusError) as caught:
            await client.get("/missing")
    assert caught.value.status == 404
    assert total_requests(a, b) == 1


async def test_a_post_without_idempotency_key_is_not_retried(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.status = b.status = 503
    async with client_for(a, b, policy=RETRY_ONLY, idempotency_keys=False) as client:
        with pytest.raises(HTTPServerStatusError):
            await client.post("/orders", json={"sku": "x"})
    assert total_requests(a, b) == 1
    assert "Idempotency-Key" not in a.seen[0].headers


async def test_a_post_gets_one_generated_key_reused_by_its_retry(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.status = 503
    async with client_for(a, b, policy=RETRY_ONLY) as client:
        created = await client.post_json("/orders", {"sku": "x"})
    assert created == {"instance": "b"}
    keys = [u.seen[0].headers.get("Idempotency-Key") for u in (a, b)]
    assert keys[0] is not None
    assert keys[0] == keys[1]
    assert b.seen[0].body == b'{"sku":"x"}'


async def test_a_post_with_the_callers_key_is_retried_with_that_key(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.status = 502
    async with client_for(a, b, policy=RETRY_ONLY, idempotency_keys=False) as client:
        await client.post("/orders", data=b"{}", headers={"idempotency-key": "order-7"})
    assert [u.seen[0].headers["Idempotency-Key"] for u in (a, b)] == ["order-7", "order-7"]


async def test_retry_after_in_seconds_sets_the_backoff(start_upstreams: StartUpstreams) -> None:
    (a,) = await start_upstreams(1)
    a.script = [(503, {"Retry-After": "7"})]
    clock = ManualClock()
    async with client_for(a, policy=RETRY_ONLY, clock=clock) as client:
        response = await client.get("/items")
    assert response.status == 200
    assert clock.slept == [7.0]


async def test_retry_after_as_http_date_sets_the_backoff(start_upstreams: StartUpstreams) -> None:
    (a,) = await start_upstreams(1)
    clock = ManualClock()
    a.script = [(429, {"Retry-After": formatdate(clock.now() + 20, usegmt=True)})]
    async with client_for(a, policy=RETRY_ONLY, clock=clock, timeout=60) as client:
        await client.get("/items")
    assert clock.slept == [20.0]


async def test_retry_after_beyond_the_call_timeout_gives_up_at_once(
    start_upstreams: StartUpstreams,
) -> None:
    (a,) = await start_upstreams(1)
    a.script = [(503, {"Retry-After": "120"})]
    clock = ManualClock()
    async with client_for(a, policy=RETRY_ONLY, clock=clock, timeout=10) as client:
        with pytest.raises(HTTPServerStatusError) as caught:
            await client.get("/items")
    assert caught.value.retry_after == 120.0
    assert clock.slept == []


async def test_a_failing_instance_opens_its_own_breaker_while_the_service_keeps_working(
    start_upstreams: StartUpstreams,
) -> None:
    a, b, c = await start_upstreams(3)
    a.status = 503
    policy = {
        **RETRY_ONLY,
        "circuit_breaker": {"minimum_calls": 4},
        "instance_circuit_breaker": {"minimum_calls": 2},
    }
    async with client_for(a, b, c, policy=policy, outlier=False) as client:
        answers = [(await client.get("/items")).status for _ in range(12)]
        breakers = client.instance_breakers
        service_breaker = client.service_breaker
    assert answers == [200] * 12
    assert breakers[a.instance_id].state == "open"
    assert breakers[b.instance_id].state == "closed"
    assert service_breaker is not None
    assert service_breaker.state == "closed"
    assert len(a.seen) == 2  # once open, a gets no more traffic
    assert len(b.seen) + len(c.seen) == 12


async def test_watch_breakers_hands_over_existing_breakers_then_each_new_one_unused(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    policy = {**RETRY_ONLY, "circuit_breaker": {}, "instance_circuit_breaker": {}}
    async with client_for(a, b, policy=policy, outlier=False) as client:
        await client.get("/items")  # the first instance breaker exists before watching
        handed: list[tuple[str, int]] = []  # (breaker, calls it had seen when handed over)

        def watch(breaker: CircuitBreaker) -> None:
            handed.append((breaker.name, breaker.metrics.calls))

        stop = client.watch_breakers(watch)
        existing = list(handed)
        while len(client.instance_breakers) < 2:
            await client.get("/items")
        stop()
        await client.get("/items")
        service_breaker = client.service_breaker
        instances = set(client.instance_breakers)
    assert service_breaker is not None
    assert len(existing) == 2  # the service breaker and the instance called so far
    assert existing[0] == (service_breaker.name, 1)
    first_instance = existing[1][0]
    (other,) = {f"{SERVICE}/{i}" for i in instances} - {first_instance}
    # The other instance's breaker is handed over at creation, before any call went through.
    assert handed[2:] == [(other, 0)]


async def test_the_service_breaker_opens_when_every_instance_fails(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.status = b.status = 500
    policy = {"circuit_breaker": {"minimum_calls": 4}, "instance_circuit_breaker": None}
    async with client_for(a, b, policy=policy, outlier=False) as client:
        for _ in range(4):
            with pytest.raises(HTTPServerStatusError):
                await client.get("/items")
        with pytest.raises(CircuitOpenError):
            await client.get("/items")
    assert total_requests(a, b) == 4


async def test_a_refused_connection_ejects_the_instance_at_once(
    start_upstreams: StartUpstreams,
) -> None:
    (live,) = await start_upstreams(1)
    dead = f"127.0.0.1:{closed_port()}"
    dead_id = f"{SERVICE}-{dead}"
    first = sorted([live.instance_id, dead_id]).index(dead_id)
    outlier = OutlierDetector(consecutive_failures=5, clock=ManualClock())
    async with client_for(
        live, dead, policy=RETRY_ONLY, outlier=outlier, balancer=RoundRobin(start=first)
    ) as client:
        first_answer = await client.get("/items")  # refused by dead, retried on live
        ejected = outlier.is_ejected(
            next(i for i in await client.discovery.instances(SERVICE) if i.id == dead_id)
        )
        for _ in range(4):
            await client.get("/items")
    assert first_answer.status == 200
    assert ejected
    assert len(live.seen) == 5


async def test_a_refused_connection_without_retry_raises_connection_error() -> None:
    async with client_for(f"127.0.0.1:{closed_port()}", policy={}) as client:
        with pytest.raises(UpstreamConnectionError) as caught:
            await client.get("/items")
    assert caught.value.refused
    assert isinstance(caught.value, ConnectionError)


async def test_a_call_slower_than_the_timeout_raises_call_timeout_error(
    start_upstreams: StartUpstreams,
) -> None:
    (a,) = await start_upstreams(1)
    a.hang = asyncio.Event()
    clock = ManualClock(auto_advance=False)
    async with client_for(a, policy={}, clock=clock, timeout=5) as client:
        call = asyncio.create_task(client.get("/slow"))
        await a.arrived.wait()
        clock.advance(5)
        with pytest.raises(CallTimeoutError):
            await call


async def test_a_hung_attempt_times_out_and_is_retried_elsewhere(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.hang = asyncio.Event()
    clock = ManualClock()  # the retry's backoff skips ahead by itself
    policy = {**RETRY_ONLY, "timeout": 1, "instance_circuit_breaker": {"minimum_calls": 1}}
    async with client_for(a, b, policy=policy, clock=clock, timeout=30) as client:
        call = asyncio.create_task(client.get("/items"))
        await a.arrived.wait()
        clock.advance(1)  # the attempt on a times out, and the retry goes to b
        response = await call
        breakers = client.instance_breakers
    assert response.json() == {"instance": "b"}
    assert breakers[a.instance_id].state == "open"


async def test_fallback_serves_the_cache_when_the_service_fails(
    start_upstreams: StartUpstreams,
) -> None:
    (a,) = await start_upstreams(1)
    a.status = 500
    cache = {"/recommendations/1": ["cached"]}
    async with client_for(a, policy={}) as client:
        served = await client.get_json("/recommendations/1", fallback=Fallback(cache.__getitem__))
    assert served == ["cached"]


async def test_fallback_serves_the_default_when_the_cache_misses(
    start_upstreams: StartUpstreams,
) -> None:
    (a,) = await start_upstreams(1)
    a.status = 503
    cache: dict[str, list[str]] = {}
    fallback = Fallback(cache.__getitem__, [])
    async with client_for(a, policy={}) as client:
        assert await client.get("/recommendations/2", fallback=fallback) == []


async def test_fallback_is_not_used_when_the_call_succeeds(
    start_upstreams: StartUpstreams,
) -> None:
    (a,) = await start_upstreams(1)
    async with client_for(a) as client:
        response = await client.get("/recommendations/3", fallback=Fallback("default"))
    assert response.json() == {"instance": "a"}


async def test_trace_context_and_request_id_are_propagated_with_a_new_span_per_attempt(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.status = 503
    parent = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01", "k=v")
    async with client_for(a, b, policy=RETRY_ONLY) as client:
        with trace_scope(parent, request_id="req-42"):
            await client.get("/items")
    sent = [a.seen[0].headers, b.seen[0].headers]
    spans = [TraceContext.parse(h["traceparent"]) for h in sent]
    assert all(s is not None and s.trace_id == parent.trace_id for s in spans)
    assert all(s is not None and s.flags == "01" for s in spans)
    span_ids = {s.span_id for s in spans if s is not None}
    assert len(span_ids) == 2
    assert parent.span_id not in span_ids
    assert [h["tracestate"] for h in sent] == ["k=v", "k=v"]
    assert [h["X-Request-Id"] for h in sent] == ["req-42", "req-42"]


async def test_a_call_outside_any_trace_starts_one(start_upstreams: StartUpstreams) -> None:
    (a,) = await start_upstreams(1)
    async with client_for(a) as client:
        await client.get("/items")
    assert TraceContext.parse(a.seen[0].headers["traceparent"]) is not None
    assert "X-Request-Id" not in a.seen[0].headers


async def test_an_unknown_service_raises_service_not_found_naming_the_backend() -> None:
    backend = StaticBackend({"other": ["127.0.0.1:1"]}, url="static://other=127.0.0.1:1")
    async with (
        Discovery(backend) as discovery,
        ServiceClient("ghost", discovery=discovery) as client,
    ):
        with pytest.raises(ServiceNotFound, match=re.escape("static://other=127.0.0.1:1")):
            await client.get("/")


async def test_a_service_without_healthy_instances_raises_no_healthy_instance() -> None:
    backend = StaticBackend({SERVICE: ["127.0.0.1:1"]})
    backend.set_status(f"{SERVICE}-127.0.0.1:1", "critical")
    async with (
        Discovery(backend) as discovery,
        ServiceClient(SERVICE, discovery=discovery) as client,
    ):
        with pytest.raises(NoHealthyInstance, match=SERVICE):
            await client.get("/")


async def test_instances_are_found_through_the_embedded_consul_registry(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    async with RegistryServer("127.0.0.1", 0) as registry:
        discovery = Discovery(f"consul://127.0.0.1:{registry.port}")
        for upstream in (a, b):
            await discovery.register(
                Registration(SERVICE, upstream.name, "127.0.0.1", upstream.port)
            )
        async with discovery, ServiceClient(SERVICE, discovery=discovery) as client:
            answered = {(await client.get("/")).json()["instance"] for _ in range(4)}
    assert answered == {"a", "b"}
    assert (len(a.seen), len(b.seen)) == (2, 2)


async def test_a_closed_client_refuses_new_calls(start_upstreams: StartUpstreams) -> None:
    (a,) = await start_upstreams(1)
    async with client_for(a) as client:
        await client.get("/")
    with pytest.raises(ClientClosedError, match="closed"):
        await client.get("/")


async def test_a_least_outstanding_balancer_sees_the_calls_in_flight(
    start_upstreams: StartUpstreams,
) -> None:
    a, b = await start_upstreams(2)
    a.hang = asyncio.Event()
    b.hang = a.hang
    async with client_for(a, b, balancer=LeastOutstanding()) as client:
        first = asyncio.create_task(client.get("/items"))
        await a.arrived.wait()
        second = asyncio.create_task(client.get("/items"))
        await b.arrived.wait()  # a was busy, so the second call went to b
        a.hang.set()
        answers = {(await first).json()["instance"], (await second).json()["instance"]}
    assert answers == {"a", "b"}


async def test_a_shared_session_is_used_and_left_open(start_upstreams: StartUpstreams) -> None:
    (a,) = await start_upstreams(1)
    async with aiohttp.ClientSession(headers={"X-Shared": "yes"}) as session:
        async with client_for(a, session=session) as client:
            await client.get("/items")
        assert not session.closed
    assert a.seen[0].headers["X-Shared"] == "yes"
