"""Live connections: an attached process that dies leaves ``passing`` at once."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import aiohttp
import consul

from shipyard.discovery.registry import RegistryServer
from tests.discovery.registry.watching import check_status, watch_health

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import aiohttp

    async def main(url):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, heartbeat=0.5) as socket:
                print((await socket.receive()).data, flush=True)
                async for _ in socket:
                    pass

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_killed_attached_process_drops_out_of_passing(
    server: RegistryServer, client: consul.Consul, tmp_path: Path
) -> None:
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1", port=1)
    script = tmp_path / "attached.py"
    script.write_text(CLIENT)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"ws://127.0.0.1:{server.port}/v1/shipyard/attach/api-1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        hello = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
        assert (hello["CheckID"], hello["Status"]) == ("attach:api-1", "passing")
        entries = await watch_health(client, "api", lambda e: len(e) == 1, passing=True)
        assert check_status(entries, "attach:api-1") == "passing"
        process.kill()
        await process.wait()
        await watch_health(client, "api", lambda e: e == [], passing=True)
        checks = await asyncio.to_thread(client.agent.checks)
        assert checks["attach:api-1"]["Status"] == "critical"
        assert checks["attach:api-1"]["Name"] == "Shipyard live connection"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_closed_connection_turns_critical_and_reattaching_passes_again(
    server: RegistryServer, client: consul.Consul
) -> None:
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1")
    url = f"{server.url}/v1/shipyard/attach/api-1"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as socket:
            await socket.receive()
            assert server.catalog.check("attach:api-1").status == "passing"
        await watch_health(client, "api", lambda e: check_status(e, "attach:api-1") == "critical")
        async with session.ws_connect(url) as socket:
            await socket.receive()
            await watch_health(
                client, "api", lambda e: check_status(e, "attach:api-1") == "passing"
            )


async def test_an_attach_with_deregister_removes_the_instance_after_it_drops(
    server: RegistryServer, client: consul.Consul
) -> None:
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1")
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/v1/shipyard/attach/api-1?deregister=100ms"
        async with session.ws_connect(url) as socket:
            await socket.receive()
    await watch_health(client, "api", lambda e: e == [])


async def test_attaching_an_unknown_instance_is_refused_before_upgrading(
    server: RegistryServer,
) -> None:
    url = f"{server.url}/v1/shipyard/attach/ghost"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 404


async def test_stopping_the_registry_closes_attached_connections(
    server: RegistryServer, client: consul.Consul
) -> None:
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1")
    url = f"{server.url}/v1/shipyard/attach/api-1"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
        await socket.receive()
        await server.stop()
        message = await asyncio.wait_for(socket.receive(), 5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
