"""The probes as a raw ASGI app: no framework, no ``BaseHTTPMiddleware``, nothing per request
beyond the probe itself.

Mount it (``Mount("/health", app=probes.asgi_app())``) or run it on its own (``uvicorn``
serves ``/health/live`` etc.). Responses are ``application/health+json`` and never cached
by intermediaries: a cached "pass" from a proxy would hide an outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.health.probes import ProbeKind, Probes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONTENT_TYPE = b"application/health+json"

_ROUTES: dict[str, ProbeKind] = {}
for _prefix in ("", "/health"):
    _ROUTES[f"{_prefix}/live"] = "liveness"
    _ROUTES[f"{_prefix}/ready"] = "readiness"
    _ROUTES[f"{_prefix}/startup"] = "startup"

_COMMON_HEADERS = [(b"cache-control", b"no-store")]
_NOT_FOUND = b'{"error":"not found: the health paths are /live, /ready and /startup"}'
_NOT_ALLOWED = b'{"error":"method not allowed: use GET or HEAD"}'


class HealthApp:
    """ASGI app answering ``GET``/``HEAD`` on ``/live``, ``/ready`` and ``/startup``.

    Paths are matched relative to the mount point (``root_path``) and also with a leading
    ``/health``, so the same app works mounted under ``/health`` and standalone. Unknown
    paths get 404, other methods 405. On ASGI lifespan shutdown (standalone use) readiness
    starts draining and the checks' clients are closed.
    """

    __slots__ = ("probes",)

    def __init__(self, probes: Probes) -> None:
        self.probes = probes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    async def _http(self, scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        # Starlette's Mount keeps the full path and puts the mount point in root_path.
        if root and path.startswith(root):
            path = path[len(root) :]
        probe = _ROUTES.get(path.rstrip("/") or "/")
        method = scope["method"]
        if probe is None:
            await _respond(send, 404, _NOT_FOUND, method == "HEAD")
            return
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, _NOT_ALLOWED, False, [(b"allow", b"GET, HEAD")])
            return
        report = await self.probes.probe(probe)
        body = report.to_json(detailed=self.probes.detailed)
        await _respond(send, report.http_status, body, method == "HEAD")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.probes.set_draining()
                await self.probes.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    head: bool,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        *_COMMON_HEADERS,
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
