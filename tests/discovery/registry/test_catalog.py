"""The catalog core on a manual clock: index, health, TTLs, reaping, attach, blocking waits."""

from __future__ import annotations

import asyncio

import pytest

from shipyard.core import ManualClock
from shipyard.discovery.registry import (
    Catalog,
    CatalogChanged,
    CheckDefinition,
    CheckKind,
    ServiceDefinition,
    Status,
    UnknownCheckError,
    UnknownServiceError,
    attach_check_id,
)
from shipyard.discovery.registry.catalog import RestoredInstance


def ttl_service(
    service_id: str = "web-1",
    *,
    ttl: float = 10.0,
    deregister_after: float | None = None,
    status: Status = Status.CRITICAL,
) -> ServiceDefinition:
    check = CheckDefinition(
        check_id=f"service:{service_id}",
        name="ttl",
        kind=CheckKind.TTL,
        ttl=ttl,
        deregister_after=deregister_after,
        initial_status=status,
    )
    return ServiceDefinition(service_id=service_id, name="web", port=80, checks=(check,))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(auto_advance=False)


@pytest.fixture
def catalog(clock: ManualClock) -> Catalog:
    return Catalog(clock=clock)


def test_every_change_bumps_the_index(catalog: Catalog) -> None:
    seen = [catalog.index]
    catalog.register(ttl_service())
    seen.append(catalog.index)
    catalog.set_check_status("service:web-1", Status.PASSING)
    seen.append(catalog.index)
    catalog.deregister("web-1")
    seen.append(catalog.index)
    assert seen == sorted(set(seen))


def test_repeating_the_same_status_does_not_move_the_index(catalog: Catalog) -> None:
    catalog.register(ttl_service())
    catalog.set_check_status("service:web-1", Status.PASSING, "ok")
    before = catalog.index
    catalog.set_check_status("service:web-1", Status.PASSING, "ok")
    assert catalog.index == before


def test_a_change_to_one_service_leaves_the_others_index_alone(catalog: Catalog) -> None:
    catalog.register(ttl_service("web-1"))
    web_index = catalog.name_index("web")
    catalog.register(ServiceDefinition(service_id="db-1", name="db"))
    assert catalog.name_index("web") == web_index
    assert catalog.name_index("db") > web_index


def test_an_instance_is_as_healthy_as_its_worst_check(catalog: Catalog) -> None:
    first = CheckDefinition(check_id="a", name="a", kind=CheckKind.TTL, ttl=10)
    second = CheckDefinition(check_id="b", name="b", kind=CheckKind.TTL, ttl=10)
    catalog.register(ServiceDefinition(service_id="web-1", name="web", checks=(first, second)))
    catalog.set_check_status("a", Status.PASSING)
    catalog.set_check_status("b", Status.WARNING)
    assert catalog.instance("web-1").status is Status.WARNING
    catalog.set_check_status("b", Status.PASSING)
    assert catalog.instance("web-1").status is Status.PASSING


def test_a_ttl_check_goes_critical_when_not_refreshed_in_time(
    catalog: Catalog, clock: ManualClock
) -> None:
    catalog.register(ttl_service(ttl=10))
    catalog.set_check_status("service:web-1", Status.PASSING)
    clock.advance(9)
    catalog.set_check_status("service:web-1", Status.PASSING)
    clock.advance(9)
    assert catalog.check("service:web-1").status is Status.PASSING
    clock.advance(2)
    assert catalog.check("service:web-1").status is Status.CRITICAL
    assert catalog.check("service:web-1").output == "TTL expired"


def test_an_instance_critical_for_longer_than_the_limit_is_deregistered(
    catalog: Catalog, clock: ManualClock
) -> None:
    catalog.register(ttl_service(ttl=5, deregister_after=30, status=Status.PASSING))
    clock.advance(5)  # TTL lapses: critical from here
    clock.advance(29)
    assert [i.service.service_id for i in catalog.instances()] == ["web-1"]
    clock.advance(2)
    assert catalog.instances() == []


def test_recovering_before_the_limit_cancels_the_deregistration(
    catalog: Catalog, clock: ManualClock
) -> None:
    catalog.register(ttl_service(ttl=100, deregister_after=30))
    clock.advance(20)
    catalog.set_check_status("service:web-1", Status.PASSING)
    clock.advance(40)
    assert [i.service.service_id for i in catalog.instances()] == ["web-1"]


def test_re_registering_an_id_replaces_the_instance_and_its_checks(catalog: Catalog) -> None:
    catalog.register(ttl_service())
    catalog.register(ServiceDefinition(service_id="web-1", name="web", port=81))
    assert catalog.instance("web-1").service.port == 81
    assert catalog.checks() == []


def test_unknown_ids_raise_errors_that_say_what_to_do(catalog: Catalog) -> None:
    with pytest.raises(UnknownServiceError, match="register it first"):
        catalog.deregister("nope")
    with pytest.raises(UnknownCheckError, match="/v1/agent/checks"):
        catalog.set_check_status("nope", Status.PASSING)
    with pytest.raises(KeyError):
        catalog.instance("nope")


def test_attach_passes_while_any_connection_is_open(catalog: Catalog) -> None:
    catalog.register(ServiceDefinition(service_id="web-1", name="web"))
    check_id = catalog.attach("web-1")
    catalog.attach("web-1")
    assert check_id == attach_check_id("web-1")
    catalog.detach("web-1")
    assert catalog.check(check_id).status is Status.PASSING
    catalog.detach("web-1")
    assert catalog.check(check_id).status is Status.CRITICAL


def test_the_attach_check_survives_re_registration(catalog: Catalog) -> None:
    catalog.register(ServiceDefinition(service_id="web-1", name="web"))
    catalog.attach("web-1")
    catalog.register(ServiceDefinition(service_id="web-1", name="web", port=9))
    assert catalog.check(attach_check_id("web-1")).status is Status.PASSING


def test_changes_are_published_to_listeners(catalog: Catalog) -> None:
    events: list[CatalogChanged] = []
    catalog.events.subscribe(events.append)
    catalog.register(ttl_service())
    assert [(e.service_name, e.index) for e in events] == [("web", catalog.index)]


def test_restoring_brings_back_statuses_and_never_lowers_the_index(catalog: Catalog) -> None:
    catalog.restore(
        40,
        [RestoredInstance(ttl_service(), {"service:web-1": Status.PASSING}, attached=True)],
    )
    assert catalog.index > 40
    assert catalog.check("service:web-1").status is Status.PASSING
    assert catalog.check(attach_check_id("web-1")).status is Status.CRITICAL


async def test_a_waiter_wakes_as_soon_as_its_service_changes(catalog: Catalog) -> None:
    catalog.register(ttl_service())
    seen = catalog.name_index("web")
    waiter = asyncio.create_task(catalog.wait_for_change(seen, 300, "web"))
    await asyncio.sleep(0)
    catalog.register(ServiceDefinition(service_id="db-1", name="db"))
    await asyncio.sleep(0)
    assert not waiter.done()
    catalog.set_check_status("service:web-1", Status.PASSING)
    await asyncio.wait_for(waiter, 1)


async def test_a_waiter_without_changes_waits_until_its_wait_runs_out(
    catalog: Catalog, clock: ManualClock
) -> None:
    waiter = asyncio.create_task(catalog.wait_for_change(catalog.index, 30))
    for _ in range(3):
        await asyncio.sleep(0)
    clock.advance(29)
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(1)
    await asyncio.wait_for(waiter, 1)
    assert catalog.index == 1
