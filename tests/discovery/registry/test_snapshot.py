"""Registrations survive a registry restart through the SQLite snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import consul

from shipyard.discovery.registry import RegistryServer


async def test_a_restarted_registry_keeps_registrations_and_statuses(tmp_path: Path) -> None:
    data = str(tmp_path / "registry.db")
    async with RegistryServer(data_path=data) as first:
        client = consul.Consul(host="127.0.0.1", port=first.port)

        def register() -> None:
            client.agent.service.register(
                "web", service_id="web-1", port=8080, tags=["v1"], meta={"zone": "a"},
                check=consul.Check.ttl("30s"),
            )  # fmt: skip
            client.agent.check.ttl_pass("service:web-1")
            client.agent.service.register("db", service_id="db-1", port=5432)

        await asyncio.to_thread(register)
        index_before = first.catalog.index
    async with RegistryServer(data_path=data) as second:
        client = consul.Consul(host="127.0.0.1", port=second.port)
        services = await asyncio.to_thread(client.agent.services)
        checks = await asyncio.to_thread(client.agent.checks)
        _, passing = await asyncio.to_thread(client.health.service, "web", passing=True)
        assert sorted(services) == ["db-1", "web-1"]
        assert (services["web-1"]["Port"], services["web-1"]["Meta"]) == (8080, {"zone": "a"})
        assert checks["service:web-1"]["Status"] == "passing"
        assert [e["Service"]["ID"] for e in passing] == ["web-1"]
        assert second.catalog.index > index_before


async def test_a_deregistration_is_remembered_across_restart(tmp_path: Path) -> None:
    data = str(tmp_path / "registry.db")
    async with RegistryServer(data_path=data) as first:
        client = consul.Consul(host="127.0.0.1", port=first.port)
        await asyncio.to_thread(client.agent.service.register, "web", service_id="web-1")
        await asyncio.to_thread(client.agent.service.deregister, "web-1")
    async with RegistryServer(data_path=data) as second:
        assert second.catalog.instances() == []


async def test_an_attached_instance_comes_back_critical_until_it_reattaches(
    tmp_path: Path,
) -> None:
    import aiohttp

    data = str(tmp_path / "registry.db")
    async with RegistryServer(data_path=data) as first:
        client = consul.Consul(host="127.0.0.1", port=first.port)
        await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1")
        async with aiohttp.ClientSession() as session:
            url = f"{first.url}/v1/shipyard/attach/api-1"
            async with session.ws_connect(url) as socket:
                await socket.receive()
                await first.stop()
    async with RegistryServer(data_path=data) as second:
        assert second.catalog.check("attach:api-1").status == "critical"
        assert second.catalog.instance("api-1").status == "critical"
