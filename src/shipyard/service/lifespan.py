"""Forwarding ASGI lifespan events to the wrapped app.

The service answers the server's lifespan itself (it has its own start-up and shutdown
work), so it runs the inner app's lifespan as a conversation of its own: a task running
the app with a queue for ``receive`` and futures for the replies. An app that does not
speak lifespan (it raises before answering) is treated as having nothing to do, as
uvicorn's ``lifespan="auto"`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import ASGIApp, Message

from shipyard.core import get_logger
from shipyard.service.errors import ServiceStartupError

_log = get_logger("shipyard.service")


class InnerLifespan:
    """The lifespan of the wrapped app, driven by the service."""

    __slots__ = ("_app", "_events", "_replies", "_service", "_task", "supported")

    def __init__(self, app: ASGIApp, service: str) -> None:
        self._app = app
        self._service = service
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._replies: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True
        """False once the app turned out not to speak lifespan."""

    async def startup(self, state: dict[str, Any] | None) -> None:
        """Send ``lifespan.startup`` and wait for the answer; raise
        :class:`ServiceStartupError` when the app reports failure."""
        scope: dict[str, Any] = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
        }
        if state is not None:
            scope["state"] = state
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._events.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is None:
            self.supported = False
            _log.info(
                "the app does not speak ASGI lifespan; nothing to start", service=self._service
            )
            return
        if reply["type"] == "lifespan.startup.failed":
            raise ServiceStartupError(self._service, str(reply.get("message", "")))

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app to finish it (failures are
        logged: shutdown goes on regardless)."""
        task = self._task
        if task is None or not self.supported or task.done():
            return
        await self._events.put({"type": "lifespan.shutdown"})
        reply = await self._reply()
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            _log.error("app shutdown failed", service=self._service, reason=reply.get("message"))
        with contextlib.suppress(Exception):
            await task

    async def _reply(self) -> Message | None:
        """The app's next reply, or ``None`` when its lifespan ended without one."""
        assert self._task is not None
        getter = asyncio.ensure_future(self._replies.get())
        await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self._events.get, self._replies.put)
        except Exception as exc:
            # Before any reply this means "no lifespan support"; afterwards a real failure.
            _log.debug("app lifespan ended with an error", service=self._service, error=repr(exc))
