"""Real upstream instances for client tests: small aiohttp apps on free local ports, each
scripted to answer with given statuses and recording what it received."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from multidict import CIMultiDict

from shipyard.discovery import Discovery, StaticBackend

SERVICE = "catalog"


@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """One running instance. ``script`` answers come first (a status, or a status with
    extra headers), then ``status`` for every later request; ``hang`` makes it wait."""

    name: str
    port: int = 0
    status: int = 200
    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hang: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def instance_id(self) -> str:
        return f"{SERVICE}-{self.address}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers), body))
        self.arrived.set()
        if self.hang is not None:
            await self.hang.wait()
        status, headers = self.status, {}
        if self.script:
            step = self.script.pop(0)
            status, headers = step if isinstance(step, tuple) else (step, {})
        return web.json_response({"instance": self.name}, status=status, headers=headers)


StartUpstreams = Callable[[int], Awaitable[list[Upstream]]]


@pytest.fixture
async def start_upstreams() -> AsyncIterator[StartUpstreams]:
    """``await start_upstreams(n)``: n running instances named a, b, c, … in port order."""
    runners: list[web.AppRunner] = []
    started: list[Upstream] = []

    async def start(count: int) -> list[Upstream]:
        batch = []
        for _ in range(count):
            upstream = Upstream("")
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", upstream.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.Server)
            upstream.port = server.sockets[0].getsockname()[1]
            runners.append(runner)
            started.append(upstream)
            batch.append(upstream)
        # Static instance ids sort by "host:port"; order (and name) the batch the same way,
        # so that round-robin visits a, b, c in turn.
        batch.sort(key=lambda u: u.instance_id)
        for offset, upstream in enumerate(batch):
            upstream.name = chr(ord("a") + len(started) - count + offset)
        return batch

    yield start
    for upstream in started:
        if upstream.hang is not None:
            upstream.hang.set()
    for runner in runners:
        await runner.cleanup()


def discovery_for(*upstreams: Upstream | str) -> Discovery:
    """A static-discovery client knowing ``upstreams`` (or raw ``host:port`` strings)."""
    addresses = [u if isinstance(u, str) else u.address for u in upstreams]
    return Discovery(StaticBackend({SERVICE: addresses}, url="static://test"))


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
