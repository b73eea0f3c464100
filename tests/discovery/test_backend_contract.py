"""One contract for every ``RegistryBackend``: static, memory, etcd and Consul (against
Shipyard's embedded registry) run the same tests; Kubernetes DNS, being read-only, runs the
lookup and watch part against a real dnsmasq.

Decision the contract pins: a service nobody registered lists as ``[]`` on every backend
(``Discovery`` is what raises ``ServiceNotFound``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from shipyard.discovery import (
    CRITICAL,
    PASSING,
    ConsulBackend,
    EtcdBackend,
    Instance,
    KubernetesDnsBackend,
    Registration,
    RegistrationNotSupported,
    RegistryBackend,
    StaticBackend,
    backend_from_url,
)
from shipyard.discovery.registry import RegistryServer
from tests.discovery.conftest import DNS_HOSTS, SHOP, DnsServer, EtcdServer

WATCH_LIMIT = 10.0  # a safety net against hanging, not a speed assertion


async def next_list(watch: AsyncIterator[list[Instance]]) -> list[Instance]:
    """The watch's next list (failing rather than hanging if it never comes)."""
    return await asyncio.wait_for(anext(watch), WATCH_LIMIT)


class Harness:
    """A backend under test, and how to drive its health checks (if it has any):
    ``make_critical`` (re-)registers an instance whose check fails, ``make_passing``
    makes that check pass."""

    def __init__(
        self,
        backend: RegistryBackend,
        *,
        make_critical: Callable[[Registration], Awaitable[None]] | None = None,
        make_passing: Callable[[Registration], Awaitable[None]] | None = None,
    ) -> None:
        self.backend = backend
        self.make_critical = make_critical
        self.make_passing = make_passing


def static_harness(backend: StaticBackend) -> Harness:
    async def critical(registration: Registration) -> None:
        await backend.register(registration)
        backend.set_status(registration.id, CRITICAL)

    async def passing(registration: Registration) -> None:
        backend.set_status(registration.id, PASSING)

    return Harness(backend, make_critical=critical, make_passing=passing)


@contextlib.asynccontextmanager
async def open_harness(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if kind == "static":
        yield static_harness(StaticBackend({"configured": ["127.0.0.1:9000"]}, url="static://"))
    elif kind == "memory":
        backend = backend_from_url("memory://")
        assert isinstance(backend, StaticBackend)
        yield static_harness(backend)
    elif kind == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        etcd_backend = backend_from_url(etcd.url)
        yield Harness(etcd_backend)
        await etcd_backend.close()
    else:
        server = RegistryServer("127.0.0.1", 0)
        await server.start()
        consul = ConsulBackend("127.0.0.1", server.port, wait=5)

        async def critical(registration: Registration) -> None:
            # A TTL check starts critical until the first heartbeat (as in Consul).
            await consul.register(replace(registration, ttl=60.0))

        async def passing(registration: Registration) -> None:
            await consul.heartbeat(registration.id)

        yield Harness(consul, make_critical=critical, make_passing=passing)
        await consul.close()
        await server.stop()


@pytest.fixture(params=["static", "memory", "etcd", "consul"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Every backend that can register instances."""
    async with open_harness(request.param, request) as opened:
        yield opened


@pytest.fixture(params=["static", "memory", "consul"])
async def health_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The backends with health checks (etcd has none: a lease is its liveness)."""
    async with open_harness(request.param, request) as opened:
        assert opened.make_critical is not None
        assert opened.make_passing is not None
        yield opened


def a_registration(service: str, number: int = 1) -> Registration:
    return Registration(
        name=service,
        id=f"{service}-{number}",
        address="127.0.0.1",
        port=8000 + number,
        tags=("v1",),
        meta={"zone": "a"},
    )


@pytest.fixture
def service() -> str:
    # Unique per test: the etcd server is shared by the whole session.
    return f"svc-{uuid.uuid4().hex[:8]}"


async def test_registered_instance_is_listed_with_its_address(
    harness: Harness, service: str
) -> None:
    await harness.backend.register(a_registration(service))

    [instance] = await harness.backend.instances(service)

    assert (instance.id, instance.service, instance.address, instance.port) == (
        f"{service}-1",
        service,
        "127.0.0.1",
        8001,
    )
    assert instance.tags == ("v1",)
    assert dict(instance.meta) == {"zone": "a"}
    assert instance.url == "http://127.0.0.1:8001"
    assert instance.healthy


async def test_deregistered_instance_is_no_longer_listed(harness: Harness, service: str) -> None:
    await harness.backend.register(a_registration(service, 1))
    await harness.backend.register(a_registration(service, 2))

    await harness.backend.deregister(f"{service}-1")

    assert [i.id for i in await harness.backend.instances(service)] == [f"{service}-2"]


async def test_registering_the_same_id_again_replaces_the_instance(
    harness: Harness, service: str
) -> None:
    await harness.backend.register(a_registration(service))
    await harness.backend.register(replace(a_registration(service), port=9999))

    assert [i.port for i in await harness.backend.instances(service)] == [9999]


async def test_unknown_service_lists_no_instances(harness: Harness, service: str) -> None:
    assert await harness.backend.instances(service) == []
    assert await harness.backend.instances(service, passing_only=False) == []


async def test_deregistering_an_unknown_id_is_ignored(harness: Harness, service: str) -> None:
    await harness.backend.deregister(f"{service}-never-registered")


async def test_passing_only_hides_critical_instances(health_harness: Harness, service: str) -> None:
    harness = health_harness
    assert harness.make_critical is not None
    assert harness.make_passing is not None
    await harness.backend.register(a_registration(service, 1))
    registration = a_registration(service, 2)
    await harness.make_critical(registration)

    passing = await harness.backend.instances(service)
    everything = await harness.backend.instances(service, passing_only=False)

    assert [i.id for i in passing] == [f"{service}-1"]
    assert {i.id: i.status for i in everything} == {
        f"{service}-1": PASSING,
        f"{service}-2": CRITICAL,
    }
    await harness.make_passing(registration)
    assert len(await harness.backend.instances(service)) == 2


async def test_watch_yields_the_current_list_then_every_change(
    harness: Harness, service: str
) -> None:
    await harness.backend.register(a_registration(service, 1))
    watch = harness.backend.watch(service)
    try:
        assert [i.id for i in await next_list(watch)] == [f"{service}-1"]

        await harness.backend.register(a_registration(service, 2))
        assert [i.id for i in await next_list(watch)] == [f"{service}-1", f"{service}-2"]

        await harness.backend.deregister(f"{service}-1")
        assert [i.id for i in await next_list(watch)] == [f"{service}-2"]
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_yields_when_an_instance_turns_critical(
    health_harness: Harness, service: str
) -> None:
    harness = health_harness
    assert harness.make_critical is not None
    registration = a_registration(service)
    await harness.backend.register(registration)
    watch = harness.backend.watch(service)
    try:
        assert len(await next_list(watch)) == 1

        await harness.make_critical(registration)

        assert await next_list(watch) == []
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_static_url_lists_the_configured_addresses() -> None:
    backend = backend_from_url("static://user-service=127.0.0.1:8001,127.0.0.1:8002;orders=h:1")

    assert [i.url for i in await backend.instances("user-service")] == [
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8002",
    ]
    assert [i.address for i in await backend.instances("orders")] == ["h"]


# --- Kubernetes DNS: the read-only part of the contract -------------------------------------


@pytest.fixture
def k8s(dns_server: DnsServer) -> KubernetesDnsBackend:
    backend = backend_from_url(f"k8s-dns://shop?nameserver={dns_server.nameserver}")
    assert isinstance(backend, KubernetesDnsBackend)
    backend.min_refresh = 0.01  # dnsmasq answers with TTL 0: re-resolve right away
    return backend


async def test_k8s_dns_lists_the_pods_behind_the_headless_service(
    k8s: KubernetesDnsBackend,
) -> None:
    instances = await k8s.instances("user-service")

    assert [(i.id, i.address, i.port) for i in instances] == [
        (f"user-0.{SHOP}:8001", "127.0.0.1", 8001),
        (f"user-1.{SHOP}:8002", "127.0.0.2", 8002),
    ]
    assert all(i.healthy for i in instances)


async def test_k8s_dns_unknown_service_lists_no_instances(k8s: KubernetesDnsBackend) -> None:
    assert await k8s.instances("no-such-service") == []


async def test_k8s_dns_refuses_registration_and_says_why(k8s: KubernetesDnsBackend) -> None:
    with pytest.raises(RegistrationNotSupported, match="Kubernetes registers pods itself"):
        await k8s.register(a_registration("user-service"))
    with pytest.raises(NotImplementedError):
        await k8s.deregister("user-0")


async def test_k8s_dns_watch_yields_when_a_pod_changes_address(
    k8s: KubernetesDnsBackend, dns_server: DnsServer
) -> None:
    watch = k8s.watch("user-service")
    try:
        assert [i.address for i in await next_list(watch)] == ["127.0.0.1", "127.0.0.2"]

        dns_server.set_hosts({**DNS_HOSTS, f"user-1.{SHOP}": "127.0.0.3"})

        assert [i.address for i in await next_list(watch)] == ["127.0.0.1", "127.0.0.3"]
    finally:
        dns_server.set_hosts(DNS_HOSTS)
        await watch.aclose()  # type: ignore[attr-defined]


def test_backend_urls_choose_the_backend() -> None:
    assert isinstance(backend_from_url("consul://127.0.0.1:8500"), ConsulBackend)
    assert isinstance(backend_from_url("etcd://127.0.0.1:2379/shop"), EtcdBackend)
    assert backend_from_url("etcd://127.0.0.1:2379/shop").url == "etcd://127.0.0.1:2379/shop"
    assert isinstance(backend_from_url("k8s-dns://shop"), KubernetesDnsBackend)
    assert isinstance(backend_from_url("memory://"), StaticBackend)
