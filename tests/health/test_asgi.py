"""The probes over HTTP: paths, status codes, headers and bodies, standalone and mounted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from shipyard.core import ManualClock
from shipyard.health import HealthApp, Probes


async def passing() -> None:
    return None


async def failing() -> None:
    raise ConnectionError("refused by postgresql://app:s3cret@db:5432/orders")


async def call(
    app: Any, method: str, path: str, root_path: str = ""
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Drive one HTTP request through a raw ASGI app."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
    await app(scope, receive, send)
    start, body = sent[0], sent[1]
    return start["status"], dict(start["headers"]), body["body"]


def app_with(*, detailed: bool, ready: bool = True, critical: bool = True) -> HealthApp:
    probes = Probes(clock=ManualClock(), detailed=detailed)
    probes.add_readiness("postgres", passing if ready else failing, critical=critical)
    return probes.asgi_app()


@pytest.mark.parametrize("path", ["/health/live", "/live", "/health/ready", "/ready"])
async def test_probe_paths_answer_health_json_that_is_never_cached(path: str) -> None:
    status, headers, body = await call(app_with(detailed=False), "GET", path)
    assert status == 200
    assert headers[b"content-type"] == b"application/health+json"
    assert headers[b"cache-control"] == b"no-store"
    assert json.loads(body) == {"status": "pass"}


async def test_failing_readiness_answers_503() -> None:
    status, _, body = await call(app_with(detailed=False, ready=False), "GET", "/health/ready")
    assert status == 503
    assert json.loads(body) == {"status": "fail"}


async def test_non_critical_failure_answers_200_with_warn() -> None:
    app = app_with(detailed=False, ready=False, critical=False)
    status, _, body = await call(app, "GET", "/health/ready")
    assert status == 200
    assert json.loads(body) == {"status": "warn"}


async def test_detailed_body_lists_each_check_without_secrets() -> None:
    status, _, body = await call(app_with(detailed=True, ready=False), "GET", "/health/ready")
    assert status == 503
    document = json.loads(body)
    assert document["status"] == "fail"
    (check,) = document["checks"]
    assert check["name"] == "postgres"
    assert check["status"] == "fail"
    assert check["critical"] is True
    assert isinstance(check["duration_ms"], float)
    assert check["error"].startswith("ConnectionError: refused by postgresql://<redacted>")
    assert b"s3cret" not in body


async def test_minimal_body_is_only_the_status() -> None:
    _, _, body = await call(app_with(detailed=False, ready=False), "GET", "/health/ready")
    assert json.loads(body) == {"status": "fail"}


async def test_startup_path_follows_mark_started() -> None:
    probes = Probes(clock=ManualClock(), detailed=True)
    app = probes.asgi_app()
    status, _, body = await call(app, "GET", "/health/startup")
    assert status == 503
    assert json.loads(body)["reason"] == "starting"
    probes.mark_started()
    assert (await call(app, "GET", "/health/startup"))[0] == 200


async def test_draining_answers_503_on_ready_only() -> None:
    probes = Probes(clock=ManualClock())
    app = probes.asgi_app()
    probes.set_draining()
    assert (await call(app, "GET", "/health/ready"))[0] == 503
    assert (await call(app, "GET", "/health/live"))[0] == 200


async def test_head_answers_status_and_headers_without_body() -> None:
    status, headers, body = await call(app_with(detailed=False), "HEAD", "/health/ready")
    assert status == 200
    assert headers[b"content-length"] == str(len(b'{"status":"pass"}')).encode()
    assert body == b""


async def test_unknown_path_is_404() -> None:
    status, _, _ = await call(app_with(detailed=False), "GET", "/health/everything")
    assert status == 404


async def test_other_methods_are_405_with_allow_header() -> None:
    status, headers, _ = await call(app_with(detailed=False), "POST", "/health/ready")
    assert status == 405
    assert headers[b"allow"] == b"GET, HEAD"


async def test_paths_are_matched_below_the_mount_point() -> None:
    app = app_with(detailed=False)
    assert (await call(app, "GET", "/ops/health/ready", root_path="/ops/health"))[0] == 200
    assert (await call(app, "GET", "/ops/health/nope", root_path="/ops/health"))[0] == 404


# -- over real HTTP ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn on a free 127.0.0.1 port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="auto", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # the server failed to start: raise its error
        await asyncio.sleep(0.001)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_standalone_app_serves_probes_over_uvicorn() -> None:
    probes = Probes(detailed=False)
    probes.add_readiness("postgres", failing)
    async with serve(probes.asgi_app()) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/health/live") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/health+json"
            assert await response.json(content_type=None) == {"status": "pass"}
        async with session.get(f"{base}/health/ready") as response:
            assert response.status == 503
        async with session.delete(f"{base}/health/ready") as response:
            assert response.status == 405
    # uvicorn's lifespan shutdown drains readiness
    assert probes.draining


async def test_app_mounted_in_starlette_serves_probes_beside_the_routes() -> None:
    probes = Probes(detailed=True)
    probes.add_readiness("postgres", passing)

    async def orders(_: object) -> PlainTextResponse:
        return PlainTextResponse("orders")

    app = Starlette(routes=[Route("/orders", orders), Mount("/health", app=probes.asgi_app())])
    async with serve(app) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/health/ready") as response:
            assert response.status == 200
            document = await response.json(content_type=None)
            assert document["status"] == "pass"
            assert [c["name"] for c in document["checks"]] == ["postgres"]
        async with session.get(f"{base}/health/startup") as response:
            assert response.status == 503
        async with session.get(f"{base}/health/nope") as response:
            assert response.status == 404
        async with session.get(f"{base}/orders") as response:
            assert await response.text() == "orders"
