"""The registry probes HTTP and TCP checks itself and reaps instances that stay critical."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import consul
import pytest
from aiohttp import web

from shipyard.discovery.registry import RegistryServer
from tests.discovery.registry.watching import Entries, check_status, watch_health


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Upstream:
    """A local HTTP endpoint whose health answer the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=self.status, text=f"answering {self.status}")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    target = Upstream()
    app = web.Application()
    app.router.add_get("/health", target.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target.port = runner.addresses[0][1]
    yield target
    await runner.cleanup()


def status_is(check_id: str, wanted: str | None) -> Callable[[Entries], bool]:
    def matches(entries: Entries) -> bool:
        return check_status(entries, check_id) == wanted

    return matches


async def test_http_check_status_follows_a_flapping_endpoint(
    client: consul.Consul, upstream: Upstream
) -> None:
    check = consul.Check.http(f"http://127.0.0.1:{upstream.port}/health", "50ms", timeout="1s")
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1", check=check)
    await watch_health(client, "api", status_is("service:api-1", "passing"))
    for code, wanted in ((500, "critical"), (429, "warning"), (204, "passing"), (503, "critical")):
        upstream.status = code
        entries = await watch_health(client, "api", status_is("service:api-1", wanted))
        assert str(code) in entries[0]["Checks"][0]["Output"]


async def test_passing_lists_the_instance_only_while_its_http_check_passes(
    client: consul.Consul, upstream: Upstream
) -> None:
    check = consul.Check.http(f"http://127.0.0.1:{upstream.port}/health", "50ms")
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1", check=check)
    await watch_health(client, "api", lambda entries: len(entries) == 1, passing=True)
    upstream.status = 500
    await watch_health(client, "api", lambda entries: entries == [], passing=True)


async def test_tcp_check_passes_while_something_listens(client: consul.Consul) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        check = consul.Check.tcp("127.0.0.1", port, "50ms", timeout="1s")
        await asyncio.to_thread(client.agent.service.register, "db", service_id="db-1", check=check)
        await watch_health(client, "db", status_is("service:db-1", "passing"))
    await watch_health(client, "db", status_is("service:db-1", "critical"))


async def wait_until_listening(process: asyncio.subprocess.Process, port: int) -> None:
    """Wait for the child to accept connections (a loaded machine starts Python slowly),
    failing clearly if it died instead (for instance, its port was taken meanwhile)."""
    async with asyncio.timeout(60):
        while True:
            assert process.returncode is None, f"the child exited with {process.returncode}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def test_a_killed_process_goes_critical_and_is_then_deregistered(
    client: consul.Consul, tmp_path: Path
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
        "--directory", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until_listening(process, port)
        check = consul.Check.http(
            f"http://127.0.0.1:{port}/", "50ms", timeout="1s", deregister="300ms"
        )
        await asyncio.to_thread(
            client.agent.service.register, "files", service_id="files-1", port=port, check=check
        )
        # The check starts critical (Consul's default) until the first probe answers.
        await watch_health(client, "files", status_is("service:files-1", "passing"))
        process.kill()
        await process.wait()
        await watch_health(client, "files", status_is("service:files-1", "critical"))
        await watch_health(client, "files", lambda entries: entries == [])
        assert "files-1" not in await asyncio.to_thread(client.agent.services)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_re_registered_check_is_probed_with_its_new_target(
    client: consul.Consul, upstream: Upstream
) -> None:
    dead = consul.Check.http(f"http://127.0.0.1:{free_port()}/health", "50ms")
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1", check=dead)
    await watch_health(client, "api", lambda e: "connect" in e[0]["Checks"][0]["Output"].lower())
    live = consul.Check.http(f"http://127.0.0.1:{upstream.port}/health", "50ms")
    await asyncio.to_thread(client.agent.service.register, "api", service_id="api-1", check=live)
    await watch_health(client, "api", status_is("service:api-1", "passing"))


async def test_stopping_the_registry_stops_its_probes(upstream: Upstream) -> None:
    server = RegistryServer()
    await server.start()
    client = consul.Consul(host="127.0.0.1", port=server.port)
    check = consul.Check.http(f"http://127.0.0.1:{upstream.port}/health", "50ms")
    await asyncio.to_thread(client.agent.service.register, "api", check=check)
    await server.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("check ")] == []
