"""Drive an ASGI app in-process: one request in, the whole response out (for tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass
class Reply:
    """What the app sent back."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def call(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Reply:
    """Send one HTTP request through ``app`` and collect the response."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    disconnected = asyncio.Event()
    reply = Reply()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            reply.body += message.get("body", b"")
            if not message.get("more_body", False):
                reply.complete = True

    try:
        await app(scope, receive, send)
    finally:
        disconnected.set()
    return reply


class Lifespan:
    """Play the server's side of the ASGI lifespan protocol."""

    def __init__(self, app: ASGIApp, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.state = state
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> Message:
        scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}}
        if self.state is not None:
            scope["state"] = self.state
        self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        return await asyncio.wait_for(self._from_app.get(), 5)

    async def shutdown(self) -> Message:
        await self._to_app.put({"type": "lifespan.shutdown"})
        reply = await asyncio.wait_for(self._from_app.get(), 5)
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)
        return reply
