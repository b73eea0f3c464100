"""The registry through the real py-consul client and raw HTTP, as Consul users would use it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import consul
import pytest

from shipyard.core import ManualClock
from shipyard.discovery.registry import RegistryServer


def register_web(client: consul.Consul, service_id: str = "web-1", **extra: object) -> None:
    client.agent.service.register(
        "web",
        service_id=service_id,
        address="127.0.0.1",
        port=8080,
        tags=["v1", "blue"],
        meta={"zone": "a"},
        check=consul.Check.ttl("10s"),
        **extra,
    )


async def test_a_registered_instance_is_listed_by_agent_catalog_and_health(
    client: consul.Consul,
) -> None:
    def scenario() -> None:
        register_web(client)
        services = client.agent.services()
        assert services["web-1"]["Service"] == "web"
        assert services["web-1"]["Port"] == 8080
        assert services["web-1"]["Tags"] == ["v1", "blue"]
        assert services["web-1"]["Meta"] == {"zone": "a"}
        _, catalog = client.catalog.service("web")
        assert [(e["ServiceID"], e["ServiceAddress"]) for e in catalog] == [("web-1", "127.0.0.1")]
        _, names = client.catalog.services()
        assert names == {"web": ["v1", "blue"]}
        _, health = client.health.service("web")
        assert [e["Service"]["ID"] for e in health] == ["web-1"]
        assert client.status.leader() == f"127.0.0.1:{client.http.port}"

    await asyncio.to_thread(scenario)


async def test_checks_start_critical_and_passing_filters_them_out(client: consul.Consul) -> None:
    def scenario() -> None:
        register_web(client)
        assert client.agent.checks()["service:web-1"]["Status"] == "critical"
        assert client.health.service("web", passing=True)[1] == []
        client.agent.check.ttl_pass("service:web-1", "all good")
        _, passing = client.health.service("web", passing=True)
        assert [e["Service"]["ID"] for e in passing] == ["web-1"]
        assert passing[0]["Checks"][0]["Output"] == "all good"
        client.agent.check.ttl_warn("service:web-1")
        assert client.health.service("web", passing=True)[1] == []
        client.agent.check.ttl_fail("service:web-1")
        assert client.agent.checks()["service:web-1"]["Status"] == "critical"

    await asyncio.to_thread(scenario)


async def test_an_http_and_a_ttl_check_register_together(client: consul.Consul) -> None:
    def scenario() -> dict[str, dict[str, object]]:
        client.agent.service.register(
            "api",
            service_id="api-1",
            port=1,
            check=consul.Check.http("http://127.0.0.1:1/health", "30s", timeout="1s"),
            extra_checks=[consul.Check.ttl("30s")],
        )
        checks: dict[str, dict[str, object]] = client.agent.checks()
        return checks

    checks = await asyncio.to_thread(scenario)
    assert checks["service:api-1:1"]["Type"] == "http"
    assert checks["service:api-1:2"]["Type"] == "ttl"


async def test_the_tag_filter_keeps_instances_carrying_every_tag(client: consul.Consul) -> None:
    def scenario() -> list[str]:
        register_web(client, "web-1")
        client.agent.service.register("web", service_id="web-2", tags=["v1"])
        _, entries = client.health.service("web", tag=["v1", "blue"])
        return [e["Service"]["ID"] for e in entries]

    assert await asyncio.to_thread(scenario) == ["web-1"]


async def test_deregistering_removes_the_instance_and_its_checks(client: consul.Consul) -> None:
    def scenario() -> None:
        register_web(client)
        assert client.agent.service.deregister("web-1") is True
        assert client.agent.services() == {}
        assert client.agent.checks() == {}
        assert client.health.service("web")[1] == []

    await asyncio.to_thread(scenario)


async def test_a_ttl_check_expires_on_the_registry_clock(tmp_path: Path) -> None:
    clock = ManualClock(auto_advance=False)
    async with RegistryServer(clock=clock) as server:
        client = consul.Consul(host="127.0.0.1", port=server.port)
        await asyncio.to_thread(register_web, client)
        await asyncio.to_thread(client.agent.check.ttl_pass, "service:web-1")
        clock.advance(9.9)
        checks = await asyncio.to_thread(client.agent.checks)
        assert checks["service:web-1"]["Status"] == "passing"
        clock.advance(0.2)
        checks = await asyncio.to_thread(client.agent.checks)
        assert checks["service:web-1"]["Status"] == "critical"


async def test_a_blocking_query_returns_as_soon_as_the_service_changes(
    client: consul.Consul,
) -> None:
    await asyncio.to_thread(register_web, client)
    index, _ = await asyncio.to_thread(client.health.service, "web")
    watcher = asyncio.create_task(
        asyncio.to_thread(client.health.service, "web", index=index, wait="60s", passing=True)
    )
    await asyncio.to_thread(client.agent.check.ttl_pass, "service:web-1")
    # The guard is far below the 60 s wait: only a prompt answer gets through.
    new_index, entries = await asyncio.wait_for(watcher, 20)
    assert int(new_index) > int(index)
    assert [e["Service"]["ID"] for e in entries] == ["web-1"]


async def test_a_blocking_query_waits_out_its_wait_when_nothing_changes(
    client: consul.Consul,
) -> None:
    await asyncio.to_thread(register_web, client)
    index, before = await asyncio.to_thread(client.health.service, "web")
    # A change to another service must not wake a watcher of "web".
    await asyncio.to_thread(client.agent.service.register, "db")
    same_index, after = await asyncio.to_thread(
        client.health.service, "web", index=index, wait="100ms"
    )
    assert same_index == index
    assert after == before


async def test_reads_carry_the_consul_index_and_leader_headers(server: RegistryServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/health/service/web", "/v1/catalog/services", "/v1/agent/services"):
            async with session.get(server.url + path) as response:
                assert response.status == 200
                assert int(response.headers["X-Consul-Index"]) >= 1
                assert response.headers["X-Consul-KnownLeader"] == "true"
                assert response.headers["X-Consul-LastContact"] == "0"


async def test_check_update_sets_status_and_output(server: RegistryServer) -> None:
    client = consul.Consul(host="127.0.0.1", port=server.port)
    await asyncio.to_thread(register_web, client)
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            server.url + "/v1/agent/check/update/service:web-1",
            json={"Status": "warning", "Output": "disk 91%"},
        ) as response,
    ):
        assert response.status == 200
    check = server.catalog.check("service:web-1")
    assert (check.status.value, check.output) == ("warning", "disk 91%")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
        (b'{"Name": "web", "Port": "abc"}', "Port"),
        (b'{"Name": "web", "Check": {"HTTP": "http://x/", "Interval": "often"}}', "Interval"),
        (b'{"Name": "web", "Check": {"Script": "rm -rf /", "Interval": "1s"}}', "check kind"),
        (b'{"Port": 80}', "Name"),
        (b"[1, 2]", "body"),
        (b'{"Name": ["web"]}', "Name"),
    ],
)
async def test_bad_registrations_get_400_with_a_reason(
    server: RegistryServer, body: bytes, field: str
) -> None:
    url = server.url + "/v1/agent/service/register"
    async with aiohttp.ClientSession() as session, session.put(url, data=body) as response:
        text = await response.text()
    assert response.status == 400
    assert field in text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/agent/service/deregister/nope"),
        ("PUT", "/v1/agent/check/pass/nope"),
        ("PUT", "/v1/agent/check/fail/nope"),
        ("PUT", "/v1/agent/check/update/nope"),
        ("GET", "/v1/agent/service/nope"),
        ("GET", "/v1/shipyard/attach/nope"),
    ],
)
async def test_unknown_services_and_checks_are_404(
    server: RegistryServer, method: str, path: str
) -> None:
    url = server.url + path
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        assert response.status == 404
        assert "nope" in await response.text()


@pytest.mark.parametrize("query", ["index=abc", "index=1&wait=forever"])
async def test_bad_blocking_parameters_are_400(server: RegistryServer, query: str) -> None:
    url = f"{server.url}/v1/health/service/web?{query}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 400


async def test_a_bad_check_update_body_is_400(server: RegistryServer) -> None:
    client = consul.Consul(host="127.0.0.1", port=server.port)
    await asyncio.to_thread(register_web, client)
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            server.url + "/v1/agent/check/update/service:web-1", json={"Status": "fine"}
        ) as response,
    ):
        assert response.status == 400
        assert "Status" in await response.text()


async def test_stopping_the_registry_answers_pending_blocking_queries(
    server: RegistryServer, client: consul.Consul
) -> None:
    index, _ = await asyncio.to_thread(client.catalog.services)
    watcher = asyncio.create_task(
        asyncio.to_thread(client.catalog.services, index=index, wait="10m")
    )
    # Polling a counter is the only way to see the query is parked inside the server.
    while not server.catalog.waiting:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    await server.stop()
    answered_index, _ = await asyncio.wait_for(watcher, 20)
    assert answered_index == index
