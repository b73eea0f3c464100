"""``Discovery``: cached lookups kept fresh by a watch, stale-while-error, ServiceNotFound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from shipyard.core import ConfigError, ManualClock
from shipyard.discovery import (
    CRITICAL,
    ConsulBackend,
    Discovery,
    DiscoveryUnavailable,
    Instance,
    Registration,
    ServiceNotFound,
    StaticBackend,
)
from shipyard.discovery.registry import RegistryServer
from tests.discovery.conftest import eventually, free_port


def registration(service: str, number: int) -> Registration:
    return Registration(name=service, id=f"{service}-{number}", address="10.0.0.1", port=number)


class FlakyBackend(StaticBackend):
    """A memory registry that can be made unreachable, counting the reads it answers."""

    def __init__(self) -> None:
        super().__init__(url="flaky://")
        self.down = False
        self.reads = 0

    def outage(self, down: bool) -> None:
        self.down = down
        self._notify()  # wake watches so they notice

    async def instances(self, service: str, *, passing_only: bool = True) -> list[Instance]:
        if self.down:
            raise DiscoveryUnavailable(self.url, "connection refused")
        self.reads += 1
        return await super().instances(service, passing_only=passing_only)

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        if self.down:
            raise DiscoveryUnavailable(self.url, "connection refused")
        async for current in super().watch(service):
            if self.down:
                raise DiscoveryUnavailable(self.url, "connection refused")
            yield current


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(auto_advance=False)


@pytest.fixture
async def backend() -> FlakyBackend:
    backend = FlakyBackend()
    await backend.register(registration("users", 1))
    return backend


@pytest.fixture
async def discovery(backend: FlakyBackend, clock: ManualClock) -> AsyncIterator[Discovery]:
    discovery = Discovery(
        backend, clock=clock, cache_ttl=60.0, retry_delay=1.0, max_retry_delay=10.0
    )
    yield discovery
    await discovery.aclose()


async def test_later_lookups_are_answered_from_the_cache(
    discovery: Discovery, backend: FlakyBackend
) -> None:
    first = await discovery.instances("users")
    reads = backend.reads

    for _ in range(10):
        assert await discovery.instances("users") == first
    assert backend.reads == reads
    assert [i.id for i in first] == ["users-1"]


async def test_a_warm_lookup_completes_without_suspending(discovery: Discovery) -> None:
    expected = await discovery.instances("users")

    lookup = discovery.instances("users")
    with pytest.raises(StopIteration) as done:
        lookup.send(None)  # runs to completion in one step: no await yielded to the loop

    assert done.value.value is expected


async def test_the_cache_follows_changes_in_the_registry(
    discovery: Discovery, backend: FlakyBackend
) -> None:
    await discovery.instances("users")

    await backend.register(registration("users", 2))
    await eventually(lambda: len(discovery.cached("users") or ()) == 2)

    backend.set_status("users-1", CRITICAL)
    await eventually(lambda: [i.id for i in discovery.cached("users") or ()] == ["users-2"])


async def test_unknown_service_raises_service_not_found_naming_service_and_registry(
    discovery: Discovery,
) -> None:
    with pytest.raises(ServiceNotFound, match=r"'payments' is not registered in flaky://") as err:
        await discovery.instances("payments")

    assert isinstance(err.value, LookupError)
    assert (err.value.service, err.value.backend) == ("payments", "flaky://")


async def test_a_service_whose_instances_all_fail_checks_is_found_but_empty(
    discovery: Discovery, backend: FlakyBackend
) -> None:
    backend.set_status("users-1", CRITICAL)

    assert await discovery.instances("users") == ()


async def test_concurrent_first_lookups_share_one_registry_read(
    discovery: Discovery, backend: FlakyBackend
) -> None:
    results = await asyncio.gather(*(discovery.instances("users") for _ in range(5)))

    assert backend.reads == 1
    assert all(r == results[0] for r in results)


async def test_unreachable_registry_with_nothing_cached_raises_discovery_unavailable(
    discovery: Discovery, backend: FlakyBackend
) -> None:
    backend.outage(True)

    with pytest.raises(DiscoveryUnavailable, match="flaky:// is unavailable"):
        await discovery.instances("users")


async def test_outage_serves_last_known_instances_and_warns_once_until_recovery(
    discovery: Discovery, backend: FlakyBackend, clock: ManualClock
) -> None:
    known = await discovery.instances("users")
    with capture_logs() as logs:
        backend.outage(True)
        for attempt in range(1, 6):  # several failed reconnects in one outage
            await eventually(lambda n=attempt: len(clock.slept) == n)  # type: ignore[misc]
            assert await discovery.instances("users") == known
            clock.advance(clock.slept[-1])
        await eventually(lambda: len(clock.slept) == 6)
        assert clock.slept == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]  # doubling, capped

        backend.outage(False)
        await backend.register(registration("users", 2))
        clock.advance(10.0)
        await eventually(lambda: len(discovery.cached("users") or ()) == 2)

    events = [(e["log_level"], e["event"]) for e in logs]
    assert (
        events.count(("warning", "service registry unreachable; serving last known instances")) == 1
    )
    assert ("info", "service registry reachable again") in events


async def test_a_service_nobody_asks_for_stops_being_watched_after_cache_ttl(
    discovery: Discovery, clock: ManualClock
) -> None:
    await discovery.instances("users")

    clock.advance(60.0)  # looked up during this period: kept
    assert discovery.cached("users") is not None
    clock.advance(60.0)  # not looked up since: dropped

    assert discovery.cached("users") is None


async def test_instances_nowait_answers_from_the_cache_and_keeps_the_service_watched(
    discovery: Discovery, clock: ManualClock
) -> None:
    assert discovery.instances_nowait("users") is None  # not cached: await instances()
    first = await discovery.instances("users")
    for _ in range(3):
        clock.advance(60.0)  # each period, a nowait lookup counts as a use
        assert discovery.instances_nowait("users") == first
    clock.advance(60.0)
    clock.advance(60.0)  # no lookup for two periods: dropped like any unused service
    assert discovery.instances_nowait("users") is None


def test_cache_settings_are_validated_at_construction() -> None:
    with pytest.raises(ConfigError, match="cache_ttl"):
        Discovery("memory://", cache_ttl=0)
    with pytest.raises(ConfigError, match="retry_delay"):
        Discovery("memory://", retry_delay=-1)
    with pytest.raises(ConfigError, match="url"):
        Discovery("zookeeper://127.0.0.1:2181")


async def test_stopped_registry_server_keeps_instances_served_then_fresh_after_restart() -> None:
    port = free_port()
    server = RegistryServer("127.0.0.1", port)
    await server.start()
    discovery = Discovery(
        ConsulBackend("127.0.0.1", port, wait=0.5, request_timeout=1), retry_delay=0.05
    )
    try:
        await discovery.register(registration("users", 1))
        known = await discovery.instances("users")

        with capture_logs() as logs:
            await server.stop()
            await eventually(lambda: any("unreachable" in e["event"] for e in logs))

            assert await discovery.instances("users") == known

        server = RegistryServer("127.0.0.1", port)
        await server.start()
        # The restarted registry is empty: a new registration must reach the cache.
        await discovery.register(registration("users", 2))
        await eventually(lambda: [i.id for i in discovery.cached("users") or ()] == ["users-2"])
    finally:
        await discovery.aclose()
        await server.stop()
