"""Serving a Service with a real uvicorn inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from shipyard.service import Service, ServiceServer, uvicorn_config


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def running(server: uvicorn.Server, name: str) -> AsyncIterator[None]:
    """Run ``server`` in this event loop for the block, then stop it gracefully."""
    task = asyncio.create_task(server.serve())
    for _ in range(5000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.001)
    if not server.started:
        task.cancel()
        raise AssertionError(f"uvicorn did not start serving {name}")
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def serving(service: Service, port: int) -> AsyncIterator[ServiceServer]:
    """Run ``service`` on ``127.0.0.1:port`` for the block, then stop it gracefully."""
    config = uvicorn_config(service, "127.0.0.1", port, log_level="warning")
    server = ServiceServer(service, config)
    async with running(server, service.name):
        yield server
