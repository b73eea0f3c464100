"""Every panel of the dashboard gets real data from a running shop, read through the
dashboard's own collector and ``/api/snapshot`` — so the dashboard cannot silently go
blank — and a request's trace id travels gateway → orders → inventory → payments → the
payment provider.

One shop and one dashboard serve the module: a few good orders and product pages, then a
provider fault injected with the dashboard's chaos control opens payments' breaker and
the saga compensates. Snapshots taken along the way are what the tests read.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from examples.shop.control import SupervisorControl
from examples.shop.supervisor import Supervisor

from shipyard.dashboard import Dashboard, Snapshot
from shipyard.dashboard.snapshot import BreakerView, InstanceView
from tests.shop.driver import Placed, ShopDriver

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROVIDER_FAULT = {"path_prefix": "/v1", "error_rate": 1.0, "error_status": 500}
TRACE_ID = uuid.uuid4().hex
TRAFFIC = ("orders", "inventory", "payments", "payment-provider", "products")
"""Services the module's traffic reaches, so each must show requests and a rate."""


@dataclass
class Observed:
    """What the dashboard showed at each stage of the module's story."""

    before: Snapshot
    busy: Snapshot
    breaker_open: Snapshot
    settled: Snapshot
    api: dict[str, Any]
    chaos_answer: dict[str, Any]
    traced: Placed
    request_id: str
    good: list[Placed]
    failed: list[Placed]


def line(product_id: str, quantity: int = 1) -> dict[str, Any]:
    return {"product_id": product_id, "quantity": quantity}


def instances(snapshot: Snapshot, service: str) -> list[InstanceView]:
    return [i for s in snapshot.services if s.name == service for i in s.instances]


def provider_breaker(snapshot: Snapshot) -> BreakerView | None:
    for instance in instances(snapshot, "payments"):
        for breaker in instance.breakers:
            if breaker.name == "payment-provider":
                return breaker
    return None


async def place_traced(driver: ShopDriver) -> tuple[Placed, str]:
    """One order sent with a W3C ``traceparent`` of our own; returns it and the request
    id the gateway gave it."""
    lines = [line("p-003")]
    headers = {
        **driver.headers("u-3"),
        "Idempotency-Key": uuid.uuid4().hex,
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    }
    url = driver.shop.gateway_url + "/web/api/orders"
    async with driver.http.post(url, json={"lines": lines}, headers=headers) as reply:
        assert reply.status == 202, await reply.text()
        answer = await reply.json()
        request_id = reply.headers["X-Request-Id"]
    return Placed(answer["order_id"], "u-3", lines, answer["total_cents"]), request_id


async def place(driver: ShopDriver, user_id: str, lines: list[dict[str, Any]]) -> Placed:
    status, answer = await driver.place(user_id, lines, flow="orchestrated")
    assert status == 202, answer
    return Placed(answer["order_id"], user_id, lines, answer["total_cents"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def observed(shop: Supervisor, driver: ShopDriver) -> AsyncIterator[Observed]:
    dashboard = Dashboard(
        registry_url=shop.settings.registry,
        saga_api_url=shop.url("orders"),
        chaos_token=shop.settings.chaos_token,
        control=SupervisorControl(shop),
        recent_sagas=20,
    )
    collector = dashboard.collector
    chaos = {"X-Chaos-Token": shop.settings.chaos_token}
    transport = httpx.ASGITransport(app=dashboard.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as board:
            # The first poll is the base the request and failure rates are measured from.
            before = await collector.refresh()
            traced, request_id = await place_traced(driver)
            good = [traced] + [await place(driver, f"u-{n}", [line(f"p-00{n}")]) for n in (1, 2, 4)]
            assert await driver.settle(good) == []
            for path in ("/web/api/product/p-001", "/mobile/api/product/p-001"):
                status, _ = await driver.get(path)
                assert status == 200
            busy = await collector.refresh()

            answer = await board.post(
                "/api/chaos/payment-provider", json=PROVIDER_FAULT, headers=chaos
            )
            assert answer.status_code == 200, answer.text
            failed = []
            breaker_open = None
            try:
                for n in range(8):
                    failed.append(await place(driver, f"u-{1 + n % 5}", [line("p-006")]))
                deadline = time.monotonic() + 30
                while breaker_open is None and time.monotonic() < deadline:
                    snapshot = await collector.refresh()
                    breaker = provider_breaker(snapshot)
                    if breaker is not None and breaker.state == "open":
                        breaker_open = snapshot
                    await asyncio.sleep(0.1)
            finally:
                cleared = await board.post(
                    "/api/chaos/payment-provider", json={"clear": True}, headers=chaos
                )
                assert cleared.status_code == 200, cleared.text
            assert breaker_open is not None, "payments' breaker never showed open"
            # Orders caught by the outage may still confirm once it clears; a declined card
            # is a definite failure, so at least one saga always compensates.
            failed.append(await place(driver, "declined-1", [line("p-006")]))
            assert await driver.settle(failed, within=60) == []
            settled = await collector.refresh()
            api = (await board.get("/api/snapshot")).json()
            yield Observed(
                before,
                busy,
                breaker_open,
                settled,
                api,
                answer.json(),
                traced,
                request_id,
                good,
                failed,
            )
    finally:
        await dashboard.aclose()


async def test_every_service_and_instance_shows_with_passing_health_checks(
    shop: Supervisor, observed: Observed
) -> None:
    snapshot = observed.settled
    assert snapshot.registry_error is None
    expected = {i.service for i in shop.instances()}  # the gateway included
    assert {s.name for s in snapshot.services} == expected
    assert len(instances(snapshot, "inventory")) == 2
    for service in snapshot.services:
        assert service.status == "passing", service.name
        for instance in service.instances:
            assert instance.checks, instance.id
            assert {c.status for c in instance.checks} == {"passing"}, instance.id
            assert instance.metrics_error is None, instance.metrics_error


async def test_the_process_panel_lists_every_supervised_process_with_its_pid(
    shop: Supervisor, observed: Observed
) -> None:
    assert observed.settled.processes is not None
    shown = {p.id: p.pid for p in observed.settled.processes}
    expected = {f"{i.service}-127.0.0.1:{i.port}": i.pid for i in shop.instances()}
    assert shown == expected
    assert None not in shown.values()


async def test_request_counts_and_rates_show_the_traffic_each_service_served(
    observed: Observed,
) -> None:
    for service in TRAFFIC:
        before = [i.requests for i in instances(observed.before, service)]
        busy = [i.requests for i in instances(observed.busy, service)]
        assert busy, f"{service}: not shown"
        assert None not in before + busy, f"{service}: no request metrics"
        assert sum(r.total for r in busy if r) > sum(r.total for r in before if r), service
        assert any(r.per_second for r in busy if r), f"{service}: no request rate"


async def test_errors_show_in_the_error_rate_of_the_failing_service(observed: Observed) -> None:
    (provider,) = instances(observed.breaker_open, "payment-provider")
    assert provider.requests is not None
    assert provider.requests.errors > 0
    assert provider.requests.error_rate is not None
    assert provider.requests.error_rate > 0


async def test_payments_breaker_shows_closed_then_open_with_its_failure_rate(
    observed: Observed,
) -> None:
    closed = provider_breaker(observed.busy)
    assert closed is not None
    assert (closed.state, closed.failure_rate) == ("closed", 0.0)
    assert closed.successes >= len(observed.good)
    opened = provider_breaker(observed.breaker_open)
    assert opened is not None
    assert opened.state == "open"
    assert opened.failures > closed.failures
    assert opened.failure_rate is not None
    assert opened.failure_rate >= 0.5


async def test_injected_faults_show_on_the_instance_until_cleared(observed: Observed) -> None:
    (answer,) = observed.chaos_answer["instances"].values()
    assert answer["status"] == 200
    (provider,) = instances(observed.breaker_open, "payment-provider")
    assert provider.faults is not None
    assert [(f["path_prefix"], f["error_rate"]) for f in provider.faults] == [("/v1", 1.0)]
    (after,) = instances(observed.settled, "payment-provider")
    assert after.faults == []


async def test_sagas_are_counted_by_state_with_a_compensated_timeline(
    observed: Observed,
) -> None:
    sagas = observed.settled.sagas
    assert sagas is not None
    assert sagas.error is None
    assert sagas.counts["COMPLETED"] >= len(observed.good)
    cancelled = {p.order_id for p in observed.failed if p.status == "CANCELLED"}
    assert cancelled, "no order compensated"
    assert sagas.counts["COMPENSATED"] >= len(cancelled)
    compensated = [s for s in sagas.recent if s.saga_id in cancelled]
    assert compensated, "no compensated saga among the recent ones"
    saga = compensated[0]
    assert (saga.state, saga.failed_step) == ("COMPENSATED", "charge")
    kinds = [(t["kind"], t["step"]) for t in saga.timeline]
    assert ("step_failed", "charge") in kinds
    assert ("compensation_completed", "reserve") in kinds
    assert kinds[-1] == ("compensated", None)
    completed = [s for s in sagas.recent if s.saga_id == observed.good[-1].order_id]
    assert [s.state for s in completed] == ["COMPLETED"]


async def test_the_event_flow_shows_each_step_and_the_compensation(observed: Observed) -> None:
    edges = {(f.source, f.target): f.counts for f in observed.settled.flows}
    assert edges[("saga:place-order", "confirm")].get("step_completed", 0) > 0
    assert edges[("saga:place-order", "charge")].get("step_failed", 0) > 0
    assert edges[("saga:place-order", "reserve")].get("compensation_completed", 0) > 0


async def test_the_snapshot_api_serves_the_collectors_picture(observed: Observed) -> None:
    api, settled = observed.api, observed.settled
    assert api["version"] >= settled.version > observed.before.version
    assert [s["name"] for s in api["services"]] == [s.name for s in settled.services]
    payments = [i for s in api["services"] if s["name"] == "payments" for i in s["instances"]]
    (provider,) = instances(settled, "payment-provider")
    assert [b["name"] for b in payments[0]["breakers"]] == [
        "payment-provider",
        f"payment-provider/{provider.id}",
    ]
    assert {(p["database"], p["pool"]) for p in payments[0]["pools"]} >= {("payments", "api")}
    assert api["sagas"]["counts"]["COMPENSATED"] > 0
    assert api["flows"]


def _lines_with(path: Path, needle: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = []
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if needle in text and text.startswith("{"):
            try:
                found.append(json.loads(text))
            except ValueError:
                continue
    return found


async def _logged(shop: Supervisor, needle: str, key: str) -> dict[str, set[str]]:
    """Per log file (gateway access log, each instance's log): the routes of the request
    lines whose ``key`` field equals ``needle``. The gateway flushes its access log about
    once a second, so wait a little for it."""
    logs = shop.var / "logs"
    found: dict[str, set[str]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = {}
        for path in sorted(logs.glob("*.log")):
            routes = {str(r.get("route")) for r in _lines_with(path, needle) if r[key] == needle}
            if routes:
                found[path.stem] = routes
        if "gateway-access" in found:
            return found
        await asyncio.sleep(0.2)
    return found


async def test_a_trace_id_travels_from_the_gateway_through_orders_and_payments(
    shop: Supervisor, observed: Observed
) -> None:
    seen = await _logged(shop, TRACE_ID, "trace_id")
    assert seen["gateway-access"] == {"place-order"}
    assert seen["orders-1"] == {"/orders"}
    assert {"/reservations"} in [v for k, v in seen.items() if k.startswith("inventory")]
    assert seen["payments-1"] == {"/charges"}
    assert seen["payment-provider-1"] == {"/v1/charges"}


async def test_the_gateways_request_id_is_logged_by_every_hop(
    shop: Supervisor, observed: Observed
) -> None:
    seen = await _logged(shop, observed.request_id, "request_id")
    assert {"gateway-access", "orders-1", "payments-1", "payment-provider-1"} <= set(seen)


async def test_the_gateway_shows_its_rate_limiters_breakers_and_upstream_edges(
    observed: Observed,
) -> None:
    (gateway,) = instances(observed.settled, "gateway")
    assert "web place-order" in {limiter.name for limiter in gateway.limiters}
    assert {b.name: b.state for b in gateway.breakers}["upstream:orders"] == "closed"
    assert gateway.requests is not None
    assert gateway.requests.total > 0
    edges = {(f.source, f.target): f.counts for f in observed.settled.flows}
    assert edges[("gateway", "orders")].get("2xx", 0) > 0


async def test_orders_shows_its_breakers_towards_the_saga_participants(
    observed: Observed,
) -> None:
    (orders,) = instances(observed.settled, "orders")
    assert any("payments" in breaker.name for breaker in orders.breakers)


async def test_payments_shows_the_breaker_of_the_provider_instance_it_called(
    observed: Observed,
) -> None:
    (provider,) = instances(observed.settled, "payment-provider")
    (payments,) = instances(observed.breaker_open, "payments")
    per_instance = {b.name: b for b in payments.breakers}[f"payment-provider/{provider.id}"]
    assert per_instance.failures > 0
    assert per_instance.successes >= len(observed.good)  # counted from its first call


async def test_every_database_shows_its_bulkhead_pools(observed: Observed) -> None:
    (orders,) = instances(observed.settled, "orders")
    assert {(p.database, p.pool) for p in orders.pools} == {
        ("orders", "api"),
        ("orders", "background"),
        ("orders", "analytics"),
        ("orders-inbox", "background"),
        ("orders-inbox", "api"),
    }
    for service in ("users", "products", "inventory", "payments", "reviews"):
        for instance in instances(observed.settled, service):
            pools = {p.pool: p for p in instance.pools if p.database == service}
            assert set(pools) == {"api", "background"}, instance.id
            for pool in pools.values():
                assert 0 <= pool.in_use <= pool.size, (instance.id, pool)
                assert pool.rejected == 0, (instance.id, pool)
