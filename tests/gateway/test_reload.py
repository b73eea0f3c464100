"""Hot reload: new routes swap in atomically, bad files are rejected, nothing is dropped."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from shipyard.core import ManualClock
from shipyard.gateway import Gateway, load_config

from .conftest import WALL, Seen, Upstream, UpstreamReply, parse_responses, request
from .test_rate_limit import free_port, wait_listening

TOKEN = "reload-admin"


def gateway_yaml(url: str, route: str = "/v1", extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0", token: {TOKEN}}}
{extra}
frontends:
  web:
    routes:
      - {{name: api, prefix: {route}, upstream: "{url}"}}
"""


@asynccontextmanager
async def from_file(path: Path, text: str, **kwargs: Any) -> AsyncIterator[Gateway]:
    path.write_text(text)  # noqa: ASYNC240 - a small local file in a test
    gateway = Gateway(
        load_config(path), access_log=io.BytesIO(), clock=ManualClock(wall_start=WALL), **kwargs
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


async def test_a_reload_swaps_in_the_new_routes_on_the_same_listener(
    tmp_path: Path, upstream: Upstream
) -> None:
    path = tmp_path / "gateway.yaml"
    async with from_file(path, gateway_yaml(upstream.url, "/v1")) as gw:
        port = gw.address("web")[1]
        before = await request(port, path="/v1/x")
        path.write_text(gateway_yaml(upstream.url, "/v2"))
        assert await gw.reload_from_file()
        old_route = await request(port, path="/v1/x")
        new_route = await request(port, path="/v2/x")
        assert gw.address("web")[1] == port
    assert (before.status, old_route.status, new_route.status) == (200, 404, 200)


async def test_a_bad_file_is_rejected_logged_and_the_old_config_keeps_serving(
    tmp_path: Path, upstream: Upstream
) -> None:
    path = tmp_path / "gateway.yaml"
    async with from_file(path, gateway_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        path.write_text(gateway_yaml(upstream.url).replace("prefix:", "prefx:"))
        with capture_logs() as logs:
            accepted = await gw.reload_from_file()
        still = await request(port, path="/v1/x")
    assert accepted is False
    (entry,) = [e for e in logs if e["event"].startswith("config reload rejected")]
    assert "gateway.yaml:" in entry["error"]
    assert still.status == 200


async def test_post_reload_on_the_admin_api_reports_a_bad_file(
    tmp_path: Path, upstream: Upstream
) -> None:
    path = tmp_path / "gateway.yaml"
    async with from_file(path, gateway_yaml(upstream.url)) as gw:
        admin = gw.admin_address
        assert admin is not None
        auth = {"Authorization": f"Bearer {TOKEN}"}
        path.write_text("frontends: {}\n")
        bad = await request(admin[1], "POST", "/reload", headers=auth)
        path.write_text(gateway_yaml(upstream.url, "/v3"))
        good = await request(admin[1], "POST", "/reload", headers=auth)
        served = await request(gw.address("web")[1], path="/v3/x")
    assert bad.status == 400
    assert "frontends" in bad.json()["error"]
    assert good.json() == {"reloaded": True}
    assert served.status == 200


async def test_the_file_watch_reloads_a_changed_file(tmp_path: Path, upstream: Upstream) -> None:
    path = tmp_path / "gateway.yaml"
    watch = "reload: {watch: true, interval: 0.005}"
    async with from_file(path, gateway_yaml(upstream.url, "/v1", watch)) as gw:
        path.write_text(gateway_yaml(upstream.url, "/watched", watch))
        for _ in range(2000):
            if gw.reloads:
                break
            await asyncio.sleep(0.005)
        response = await request(gw.address("web")[1], path="/watched/x")
    assert gw.reloads == 1
    assert response.status == 200


async def test_an_in_flight_request_finishes_on_the_old_route(
    tmp_path: Path, upstream: Upstream, upstream_b: Upstream
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(seen: Seen) -> UpstreamReply:
        arrived.set()
        await release.wait()
        return UpstreamReply(headers=[("x-served-by", "a")])

    upstream.respond = slow
    path = tmp_path / "gateway.yaml"
    async with from_file(path, gateway_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        in_flight = asyncio.create_task(request(port, path="/v1/slow"))
        await arrived.wait()
        await gw.reload(load_config_text(path, gateway_yaml(upstream_b.url)))
        after = await request(port, path="/v1/new")
        release.set()
        finished = await in_flight
    assert (finished.status, finished.headers["x-served-by"]) == (200, "a")
    assert after.headers["x-served-by"] == "b"


def load_config_text(path: Path, text: str) -> Any:
    path.write_text(text)
    return load_config(path)


async def test_clients_looping_through_reloads_see_no_failed_request(
    tmp_path: Path, upstream: Upstream, upstream_b: Upstream
) -> None:
    path = tmp_path / "gateway.yaml"
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop.is_set():
                writer.write(b"GET /v1/loop HTTP/1.1\r\nHost: a\r\n\r\n")
                data = b""
                while not parse_responses(data):
                    chunk = await reader.read(65536)
                    assert chunk, "the gateway closed a keep-alive connection"
                    data += chunk
                statuses.append(parse_responses(data)[0].status)
        finally:
            writer.close()

    async with from_file(path, gateway_yaml(upstream.url)) as gw:
        port = gw.address("web")[1]
        clients = [asyncio.create_task(client(port)) for _ in range(4)]
        for i in range(10):
            target = upstream_b if i % 2 == 0 else upstream
            await gw.reload(load_config_text(path, gateway_yaml(target.url)))
            await asyncio.sleep(0.002)
        stop.set()
        await asyncio.gather(*clients)
    assert gw.reloads == 10
    assert len(statuses) > 10
    assert set(statuses) == {200}
    assert upstream.seen
    assert upstream_b.seen


async def test_sighup_makes_the_gateway_process_reload_its_file(
    tmp_path: Path, upstream: Upstream
) -> None:
    port = free_port()
    path = tmp_path / "gateway.yaml"

    def text(route: str) -> str:
        return f"""
listen: 127.0.0.1:{port}
access_log: {{enabled: false}}
frontends:
  web:
    routes: [{{name: api, prefix: {route}, upstream: "{upstream.url}"}}]
"""

    path.write_text(text("/before"))
    process = subprocess.Popen(  # noqa: ASYNC220 - the CLI process is what is under test
        [
            sys.executable,
            "-c",
            "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))",
            "gateway",
            "--config",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, process)
        before = await request(port, path="/before/x")
        path.write_text(text("/after"))
        process.send_signal(signal.SIGHUP)
        status = 0
        for _ in range(2000):
            status = (await request(port, path="/after/x")).status
            if status == 200:
                break
            await asyncio.sleep(0.005)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert before.status == 200
    assert status == 200


async def test_a_frontend_whose_listener_moved_is_served_on_the_new_port_only(
    tmp_path: Path, upstream: Upstream
) -> None:
    old_port, new_port = free_port(), free_port()

    def text(port: int) -> str:
        return f"""
frontends:
  web:
    listen: 127.0.0.1:{port}
    routes: [{{name: api, prefix: /, upstream: "{upstream.url}"}}]
"""

    path = tmp_path / "gateway.yaml"
    async with from_file(path, text(old_port)) as gw:
        before = await request(old_port, path="/x")
        await gw.reload(load_config_text(path, text(new_port)))
        after = await request(new_port, path="/x")
        assert gw.address("web")[1] == new_port
        try:
            await request(old_port, path="/x")
            refused = False
        except OSError:
            refused = True
    assert (before.status, after.status) == (200, 200)
    assert refused
