"""The collector against a real registry, real payments instances and a real saga API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shipyard.core import ConfigError, ManualClock
from shipyard.dashboard import Collector, InstanceView, Snapshot
from shipyard.discovery.registry import RegistryServer, parse_registration
from shipyard.saga import Orchestrator, saga_api
from shipyard.storage import open_database
from tests.dashboard.conftest import TOKEN, Payments, RunPayments, eventually, serving_app
from tests.saga.order import OrderData, install_shop, order_saga
from tests.service.serving import free_port


@pytest.fixture
async def collector(registry: RegistryServer) -> AsyncIterator[Collector]:
    found = Collector(registry.url, chaos_token=TOKEN, clock=ManualClock())
    yield found
    await found.aclose()


async def charge(payments: Payments, times: int) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as http:
        for n in range(times):
            async with http.post(f"{payments.url}/charge/o{n}") as response:
                statuses.append(response.status)
    return statuses


def instance(snapshot: Snapshot, instance_id: str) -> InstanceView:
    return next(i for s in snapshot.services for i in s.instances if i.id == instance_id)


async def test_each_instance_shows_its_health_breaker_state_failure_rate_and_limiter(
    run_payments: RunPayments, collector: Collector
) -> None:
    async with run_payments() as healthy, run_payments() as failing:
        failing.provider.failing = True
        assert await charge(failing, 4) == [502] * 4
        assert await charge(healthy, 2) == [200, 200]

        snapshot = await collector.refresh()

    assert [s.name for s in snapshot.services] == ["payments"]
    assert snapshot.services[0].status == "passing"
    assert {i.status for i in snapshot.services[0].instances} == {"passing"}
    broken = instance(snapshot, failing.id).breakers[0]
    assert (broken.name, broken.state, broken.failure_rate, broken.failures) == (
        "provider",
        "open",
        1.0,
        4,
    )
    fine = instance(snapshot, healthy.id)
    assert (fine.breakers[0].state, fine.breakers[0].failure_rate) == ("closed", 0.0)
    assert [(lim.name, lim.allowed, lim.rejected) for lim in fine.limiters] == [("charges", 2, 0)]
    assert fine.requests is not None
    assert fine.requests.total == 2
    assert fine.faults == []
    assert snapshot.version == 1
    assert snapshot.control is True


async def test_failure_and_request_rates_cover_the_window_between_polls(
    run_payments: RunPayments, registry: RegistryServer
) -> None:
    clock = ManualClock()
    collector = Collector(registry.url, rate_window=60, clock=clock)
    try:
        async with run_payments() as payments:
            await charge(payments, 2)
            await collector.refresh()
            payments.provider.failing = True
            await charge(payments, 1)
            clock.advance(10)
            snapshot = await collector.refresh()
    finally:
        await collector.aclose()
    seen = instance(snapshot, payments.id)
    assert seen.breakers[0].failure_rate == 1.0  # the one call since the last poll failed
    assert seen.requests is not None
    assert seen.requests.per_second == 0.1
    assert seen.requests.error_rate == 1.0  # 502 counts as a server error


async def test_a_stopped_instance_leaves_and_the_version_moves(
    run_payments: RunPayments, collector: Collector
) -> None:
    async with run_payments() as staying:
        async with run_payments():
            before = await collector.refresh()
        after = await collector.refresh()
    assert len(before.services[0].instances) == 2
    assert [i.id for i in after.services[0].instances] == [staying.id]
    assert after.version == before.version + 1


async def test_nothing_new_keeps_the_same_snapshot(
    run_payments: RunPayments, collector: Collector
) -> None:
    async with run_payments():
        await collector.refresh()
        second = await collector.refresh()  # request rates become known here
        third = await collector.refresh()
    assert third is second


async def test_an_instance_without_metrics_is_shown_with_the_reason(
    registry: RegistryServer, collector: Collector
) -> None:
    port = free_port()
    registry.catalog.register(
        parse_registration({"Name": "ghost", "ID": "ghost-1", "Address": "127.0.0.1", "Port": port})
    )
    snapshot = await collector.refresh()
    ghost = instance(snapshot, "ghost-1")
    assert ghost.metrics_error is not None
    assert f"127.0.0.1:{port}/metrics" in ghost.metrics_error
    assert ghost.breakers == []


async def test_an_unreachable_registry_is_reported_not_raised() -> None:
    collector = Collector(f"http://127.0.0.1:{free_port()}", clock=ManualClock())
    try:
        snapshot = await collector.refresh()
    finally:
        await collector.aclose()
    assert snapshot.services == []
    assert snapshot.registry_error is not None
    assert "/v1/catalog/services" in snapshot.registry_error


async def test_sagas_are_counted_by_state_with_timelines_and_their_flow(
    tmp_path: Path, registry: RegistryServer
) -> None:
    shop = await open_database(f"sqlite:///{tmp_path / 'shop.db'}")
    db = await open_database(f"sqlite:///{tmp_path / 'orders.db'}")
    await install_shop(shop)
    orchestrator = Orchestrator(db, clock=ManualClock())
    orchestrator.register(order_saga(shop))
    await orchestrator.install()
    await orchestrator.execute("order", OrderData("o-ok"), saga_id="o-ok")
    await orchestrator.execute("order", OrderData("o-big", quantity=99), saga_id="o-big")
    port = free_port()
    collector = Collector(
        registry.url, saga_api_url=f"http://127.0.0.1:{port}", clock=ManualClock()
    )
    try:
        async with serving_app(saga_api(orchestrator.log), port):
            snapshot = await collector.refresh()
    finally:
        await collector.aclose()
        await db.close()
        await shop.close()
    sagas = snapshot.sagas
    assert sagas is not None
    assert sagas.error is None
    assert sagas.counts == {"RUNNING": 0, "COMPENSATING": 0, "COMPLETED": 1, "COMPENSATED": 1}
    big = next(s for s in sagas.recent if s.saga_id == "o-big")
    assert big.state == "COMPENSATED"
    assert big.failed_step == "reserve_inventory"
    assert [t["kind"] for t in big.timeline][-1] == "compensated"
    flows = {(f.source, f.target): f.counts for f in snapshot.flows}
    assert flows[("saga:order", "reserve_inventory")] == {"step_completed": 1, "step_failed": 1}
    assert flows[("saga:order", "create_order")] == {
        "step_completed": 2,
        "compensation_completed": 1,
    }


async def test_an_unreachable_saga_api_is_reported_in_the_snapshot(
    registry: RegistryServer,
) -> None:
    collector = Collector(
        registry.url, saga_api_url=f"http://127.0.0.1:{free_port()}", clock=ManualClock()
    )
    try:
        snapshot = await collector.refresh()
    finally:
        await collector.aclose()
    assert snapshot.sagas is not None
    assert snapshot.sagas.error is not None
    assert "/sagas" in snapshot.sagas.error


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"registry_url": "redis://127.0.0.1:6379"}, "registry_url"),
        ({"saga_api_url": "nope"}, "saga_api_url"),
        ({"interval": 0}, "interval"),
        ({"rate_window": -1}, "rate_window"),
        ({"recent_sagas": -1}, "recent_sagas"),
    ],
)
def test_invalid_settings_are_refused_naming_the_parameter(
    options: dict[str, object], field: str
) -> None:
    settings: dict[str, object] = {"registry_url": "http://127.0.0.1:8500", **options}
    with pytest.raises(ConfigError, match=field):
        Collector(**settings)  # type: ignore[arg-type]


async def test_a_running_collector_sees_an_instance_leave_without_waiting_for_its_next_poll(
    registry: RegistryServer, run_payments: RunPayments
) -> None:
    # The clock never moves: only the registry's blocking query can wake the poll loop.
    collector = Collector(registry.url, clock=ManualClock(auto_advance=False))
    seen: list[Snapshot] = []
    collector.events.subscribe(seen.append)
    try:
        async with run_payments() as staying:
            async with run_payments():
                collector.start()

                async def both_seen() -> bool:
                    return bool(seen) and len(seen[-1].services[0].instances) == 2

                await eventually(both_seen)

            async def one_left() -> bool:
                return [i.id for i in seen[-1].services[0].instances] == [staying.id]

            await eventually(one_left)
    finally:
        await collector.aclose()
