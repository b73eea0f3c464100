"""``ChaosMiddleware``: injects the faults of a :class:`Chaos` into an ASGI app."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.chaos.faults import Chaos

CHAOS_HEADER = b"x-shipyard-chaos"
"""Marks a response the middleware made up, so nobody mistakes it for the app's."""

_ERROR_BODY = b'{"error":"injected fault (shipyard.chaos): switch it off at /admin/chaos"}'


class ChaosMiddleware:
    """Adds latency, errors or refusals to HTTP requests as ``chaos`` says, switchable at
    run time. Lifespan and websocket scopes pass through untouched."""

    __slots__ = ("app", "chaos")

    def __init__(self, app: ASGIApp, chaos: Chaos) -> None:
        self.app = app
        self.chaos = chaos

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chaos = self.chaos
        if not chaos.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = chaos.match(scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.refuse == "close":
            await _drop_connection(send)
            return
        if fault.refuse == "status":
            await _error(send, fault.error_status, b"refused")
            return
        delay = chaos.latency_for(fault)
        if delay > 0:
            await chaos.clock.sleep(delay)
        if fault.error_rate and chaos.random() < fault.error_rate:
            await _error(send, fault.error_status, b"error")
            return
        await self.app(scope, receive, send)


async def _error(send: Send, status: int, kind: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_ERROR_BODY)).encode()),
        (CHAOS_HEADER, kind),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": _ERROR_BODY})


async def _drop_connection(send: Send) -> None:
    # ASGI has no "abort": promise a body and never send it, so the server must close the
    # connection and the client sees it break mid-response.
    headers = [(b"content-length", b"1"), (CHAOS_HEADER, b"close")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
