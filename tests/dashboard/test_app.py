"""The dashboard app: the page, the SSE stream, and the chaos / process controls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from shipyard.core import ConfigError, ManualClock
from shipyard.dashboard import Dashboard, ProcessSpec, SubprocessControl
from shipyard.discovery.registry import RegistryServer
from tests.dashboard.conftest import TOKEN, RunPayments, eventually, serving_app
from tests.service.serving import free_port

AUTH = {"X-Chaos-Token": TOKEN}


@contextlib.asynccontextmanager
async def client_for(dashboard: Dashboard) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=dashboard.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            yield client
    finally:
        await dashboard.aclose()


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next SSE event: ("snapshot", parsed JSON) or ("comment", text)."""
    lines: list[str] = []
    while True:
        # A safety net against a hung stream, not a timing assertion.
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode()
        if line in ("\n", ""):
            break
        lines.append(line.rstrip("\n"))
    if lines and lines[0].startswith(":"):
        return "comment", lines[0][1:].strip()
    fields = dict(line.split(": ", 1) for line in lines)
    return fields["event"], json.loads(fields["data"])


async def test_the_stream_starts_with_the_snapshot_and_pushes_an_instance_going_down(
    registry: RegistryServer, run_payments: RunPayments
) -> None:
    dashboard = Dashboard(registry_url=registry.url, clock=ManualClock())
    port = free_port()
    async with (
        run_payments() as staying,
        contextlib.AsyncExitStack() as leaving_stack,
        serving_app(dashboard.app, port),
        aiohttp.ClientSession() as http,
    ):
        leaving = await leaving_stack.enter_async_context(run_payments())
        await dashboard.collector.refresh()
        async with http.get(f"http://127.0.0.1:{port}/api/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind, first = await next_event(response)
            assert kind == "snapshot"
            ids = [i["id"] for i in first["services"][0]["instances"]]
            assert ids == sorted([staying.id, leaving.id])

            await leaving_stack.aclose()  # graceful stop: the instance deregisters
            await dashboard.collector.refresh()

            kind, second = await next_event(response)
            assert kind == "snapshot"
            assert [i["id"] for i in second["services"][0]["instances"]] == [staying.id]
            assert second["version"] == first["version"] + 1
    await dashboard.aclose()


async def test_an_idle_stream_gets_heartbeat_comments(registry: RegistryServer) -> None:
    clock = ManualClock(auto_advance=False)
    dashboard = Dashboard(registry_url=registry.url, heartbeat=15, clock=clock)
    port = free_port()
    async with (
        serving_app(dashboard.app, port),
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/api/events") as response,
    ):
        assert (await next_event(response))[0] == "snapshot"
        clock.advance(15)
        assert await next_event(response) == ("comment", "heartbeat")
        clock.advance(15)
        assert await next_event(response) == ("comment", "heartbeat")
    await dashboard.aclose()


async def test_a_client_that_disconnects_is_unsubscribed(registry: RegistryServer) -> None:
    dashboard = Dashboard(registry_url=registry.url, clock=ManualClock())
    port = free_port()
    async with serving_app(dashboard.app, port), aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/api/events") as response:
            await next_event(response)
            assert dashboard.collector.events.has_listeners

        async def gone() -> bool:
            return not dashboard.collector.events.has_listeners

        await eventually(gone)
    await dashboard.aclose()


async def test_the_page_and_its_assets_are_served(registry: RegistryServer) -> None:
    async with client_for(Dashboard(registry_url=registry.url)) as client:
        page = await client.get("/")
        script = await client.get("/static/dashboard.js")
        style = await client.get("/static/dashboard.css")
        snapshot = await client.get("/api/snapshot")
    assert page.status_code == 200
    assert 'src="static/dashboard.js"' in page.text
    assert "EventSource" in script.text
    assert style.status_code == 200
    assert snapshot.json()["version"] == 1


async def test_chaos_is_forwarded_to_every_instance_with_the_token(
    registry: RegistryServer, run_payments: RunPayments
) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN, clock=ManualClock())
    async with run_payments() as one, run_payments() as two, client_for(dashboard) as client:
        injected = await client.post(
            "/api/chaos/payments", json={"error_rate": 1.0, "latency": 0.001}, headers=AUTH
        )
        faults = [p.service.chaos.faults for p in (one, two) if p.service.chaos is not None]
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{one.url}/charge/o1") as charged,
        ):
            charged_status = charged.status
        shown = await dashboard.collector.refresh()
        cleared = await client.post("/api/chaos/payments", json={"clear": True}, headers=AUTH)
        after = [p.service.chaos.faults for p in (one, two) if p.service.chaos is not None]

    assert injected.status_code == 200, injected.text
    assert sorted(injected.json()["instances"]) == sorted([one.id, two.id])
    assert [[(f.error_rate, f.latency) for f in fs] for fs in faults] == [[(1.0, 0.001)]] * 2
    assert charged_status == 503
    assert [i.faults for i in shown.services[0].instances] == [[{**faults[0][0].to_dict()}]] * 2
    assert cleared.status_code == 200
    assert after == [(), ()]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Chaos-Token": "wrong-token-123"}, {"Authorization": "Bearer wrong-token-123"}],
    ids=["no token", "wrong header token", "wrong bearer token"],
)
async def test_control_calls_without_the_right_token_are_rejected(
    registry: RegistryServer, run_payments: RunPayments, headers: dict[str, str]
) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN)
    async with run_payments() as payments, client_for(dashboard) as client:
        chaos = await client.post("/api/chaos/payments", json={"error_rate": 1}, headers=headers)
        kill = await client.post(f"/api/instances/{payments.id}/kill", headers=headers)
        assert payments.service.chaos is not None
        faults = payments.service.chaos.faults
    assert (chaos.status_code, kill.status_code) == (401, 401)
    assert "chaos token" in chaos.json()["error"]
    assert faults == ()


async def test_the_bearer_form_of_the_token_is_accepted(
    registry: RegistryServer, run_payments: RunPayments
) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN)
    async with run_payments(), client_for(dashboard) as client:
        answer = await client.post(
            "/api/chaos/payments",
            json={"latency": 0.001},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert answer.status_code == 200


async def test_controls_are_off_without_a_token(registry: RegistryServer) -> None:
    async with client_for(Dashboard(registry_url=registry.url)) as client:
        answer = await client.post("/api/chaos/payments", json={"error_rate": 1}, headers=AUTH)
        snapshot = (await client.get("/api/snapshot")).json()
    assert answer.status_code == 403
    assert "start the dashboard with a chaos token" in answer.json()["error"]
    assert snapshot["control"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"error_rate": 2}, "error_rate"),
        ({"latency": -1}, "latency"),
        ({"lag": 1}, "unknown keys"),
        ({}, "injects nothing"),
        ([1], "body"),
    ],
)
async def test_a_bad_fault_is_refused_naming_the_field(
    registry: RegistryServer, body: object, field: str
) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN)
    async with client_for(dashboard) as client:
        answer = await client.post("/api/chaos/payments", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert field in answer.json()["error"]


async def test_chaos_for_a_service_nobody_registered_is_not_found(
    registry: RegistryServer,
) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN)
    async with client_for(dashboard) as client:
        answer = await client.post("/api/chaos/nobody", json={"error_rate": 1}, headers=AUTH)
    assert answer.status_code == 404
    assert "nobody" in answer.json()["error"]


async def test_an_instance_that_refuses_the_token_is_reported_as_failed(
    registry: RegistryServer, run_payments: RunPayments
) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN)
    async with (
        run_payments() as good,
        run_payments(chaos_token="another-token") as other,
        client_for(dashboard) as client,
    ):
        answer = await client.post("/api/chaos/payments", json={"error_rate": 1}, headers=AUTH)
    assert answer.status_code == 502
    assert answer.json()["failed"] == [other.id]
    assert answer.json()["instances"][good.id]["status"] == 200
    assert answer.json()["instances"][other.id]["status"] == 401


async def test_kill_and_restart_go_through_the_process_control(registry: RegistryServer) -> None:
    sleeper = [sys.executable, "-c", "import signal; signal.pause()"]  # runs until killed
    control = SubprocessControl({"worker-1": ProcessSpec("worker", sleeper)}, stop_timeout=5)
    await control.start()
    dashboard = Dashboard(
        registry_url=registry.url, chaos_token=TOKEN, control=control, clock=ManualClock()
    )
    try:
        async with client_for(dashboard) as client:
            first_pid = (await control.instances())[0].pid
            killed = await client.post("/api/instances/worker-1/kill", headers=AUTH)
            after_kill = await control.instances()
            restarted = await client.post("/api/instances/worker-1/restart", headers=AUTH)
            snapshot = await dashboard.collector.refresh()
            unknown = await client.post("/api/instances/nope/kill", headers=AUTH)
            bad_action = await client.post("/api/instances/worker-1/explode", headers=AUTH)
    finally:
        await control.aclose()
    assert killed.status_code == 200
    assert after_kill[0].running is False
    assert restarted.status_code == 200
    assert snapshot.processes is not None
    process = snapshot.processes[0]
    assert (process.id, process.service, process.running) == ("worker-1", "worker", True)
    assert process.pid not in (None, first_pid)
    assert unknown.status_code == 404
    assert "worker-1" in unknown.json()["error"]
    assert bad_action.status_code == 404


async def test_kill_without_a_process_control_says_so(registry: RegistryServer) -> None:
    dashboard = Dashboard(registry_url=registry.url, chaos_token=TOKEN)
    async with client_for(dashboard) as client:
        answer = await client.post("/api/instances/x/kill", headers=AUTH)
    assert answer.status_code == 404
    assert "no process control" in answer.json()["error"]


def test_a_short_chaos_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="chaos_token"):
        Dashboard(registry_url="http://127.0.0.1:8500", chaos_token="short")
