"""``Dashboard``: the live dashboard as an ASGI app — the page, the snapshot API, the
SSE stream and the chaos / process controls.

Routes (relative to where the app is served; the page uses relative URLs, so it works
mounted under a prefix too):

* ``GET /`` — the page (static HTML, CSS and vanilla JS from the package, no build step);
* ``GET /api/snapshot`` — the latest :class:`~shipyard.dashboard.Snapshot` as JSON;
* ``GET /api/events`` — Server-Sent Events: a snapshot on every change, heartbeats;
* ``POST /api/chaos/{service}`` — inject faults into every instance of a service
  (``{"latency": 0.2}``, ``{"error_rate": 0.5}``, ``{"clear": true}``);
* ``POST /api/instances/{id}/kill`` and ``.../restart`` — through the ``ProcessControl``.

Why a token on the controls, not only a loopback bind: any web page the user opens can
make the browser POST to ``127.0.0.1``. The controls want the chaos token in an
``X-Chaos-Token`` (or ``Authorization: Bearer``) header; a cross-site page can neither
read the token nor send a custom header without a CORS preflight, which this app never
grants. The page asks for the token once and keeps it in ``sessionStorage``. The CLI
binds to 127.0.0.1 as well, as a second fence. Without a token the controls are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, get_logger
from shipyard.dashboard.collector import Collector
from shipyard.dashboard.control import ProcessControl
from shipyard.dashboard.errors import SourceUnavailable, UnknownInstanceError
from shipyard.dashboard.faults import faults_from_request
from shipyard.dashboard.sse import SnapshotStream

_log = get_logger("shipyard.dashboard")

STATIC_PACKAGE = ("shipyard.dashboard", "static")
TOKEN_HEADER = "x-chaos-token"
MAX_BODY = 16 * 1024
"""Largest accepted control request body (bytes)."""


class Dashboard:
    """The live dashboard of a Shipyard system, as an ASGI app (serve it, or mount
    :attr:`app`; see the module docs for the routes).

    ``registry_url``, ``saga_api_url``, ``control``, ``interval``, ``rate_window``,
    ``recent_sagas`` and ``request_timeout`` configure the :class:`Collector`.
    ``chaos_token`` (at least 8 characters) is sent to each service's ``/admin/chaos``
    and is what the dashboard's own controls require; ``None`` turns the controls off.
    ``heartbeat`` is the seconds between SSE keep-alive comments.

    Served on its own, the app's lifespan starts and stops polling; mounted inside
    another app (whose lifespan does not reach it), call :meth:`start` and
    :meth:`aclose` yourself.
    """

    def __init__(
        self,
        *,
        registry_url: str,
        saga_api_url: str | None = None,
        chaos_token: str | None = None,
        control: ProcessControl | None = None,
        interval: float = 1.0,
        rate_window: float = 30.0,
        recent_sagas: int = 10,
        request_timeout: float = 2.0,
        heartbeat: float = 15.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if chaos_token is not None and (not isinstance(chaos_token, str) or len(chaos_token) < 8):
            raise ConfigError("chaos_token", "<hidden>", "must be a string of >= 8 characters")
        self.collector = Collector(
            registry_url,
            saga_api_url=saga_api_url,
            chaos_token=chaos_token,
            control=control,
            interval=interval,
            rate_window=rate_window,
            recent_sagas=recent_sagas,
            request_timeout=request_timeout,
            clock=clock,
        )
        self.control = control
        # Read once: the page is a static file inside the package.
        self._index = (
            importlib.resources.files(STATIC_PACKAGE[0])
            .joinpath(STATIC_PACKAGE[1], "index.html")
            .read_bytes()
        )
        self._token = None if chaos_token is None else chaos_token.encode()
        self._refreshing: set[asyncio.Task[Any]] = set()
        self.app = Starlette(
            routes=[
                Route("/", self._page, methods=["GET"]),
                Route("/api/snapshot", self._snapshot, methods=["GET"]),
                Route(
                    "/api/events", SnapshotStream(self.collector, heartbeat=heartbeat, clock=clock)
                ),
                Route("/api/chaos/{service}", self._chaos, methods=["POST"]),
                Route("/api/instances/{instance_id}/{action}", self._instance, methods=["POST"]),
                Mount("/static", StaticFiles(packages=[STATIC_PACKAGE]), name="static"),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (so ``uvicorn module:dashboard`` works)."""
        await self.app(scope, receive, send)

    def start(self) -> None:
        """Start polling in the background."""
        self.collector.start()

    async def aclose(self) -> None:
        """Stop polling and close connections."""
        for task in list(self._refreshing):
            task.cancel()
        await self.collector.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.start()
        try:
            yield
        finally:
            await self.aclose()

    # -- reading --------------------------------------------------------------------------

    async def _page(self, request: Request) -> Response:
        return HTMLResponse(self._index, headers={"cache-control": "no-store"})

    async def _snapshot(self, request: Request) -> Response:
        snapshot = self.collector.snapshot
        if snapshot.version == 0:
            snapshot = await self.collector.refresh()
        return Response(
            msgspec.json.encode(snapshot),
            media_type="application/json",
            headers={"cache-control": "no-store"},
        )

    # -- controls -------------------------------------------------------------------------

    async def _chaos(self, request: Request) -> Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        service = request.path_params["service"]
        try:
            body = await _json_body(request)
            faults = faults_from_request(body)
        except ValueError as exc:
            # ConfigError is a ValueError, and so is malformed JSON.
            return _error(400, str(exc))
        try:
            results = await self.collector.send_faults(service, faults)
        except LookupError as exc:
            return _error(404, str(exc))
        except SourceUnavailable as exc:
            return _error(502, f"cannot read the registry: {exc}")
        failed = sorted(i for i, r in results.items() if r.get("status") != 200)
        _log.warning(
            "chaos sent",
            service=service,
            faults=[f.to_dict() for f in faults],
            failed=failed,
        )
        self._refresh_soon()
        return JSONResponse(
            {"service": service, "instances": results, "failed": failed},
            status_code=502 if failed else 200,
        )

    async def _instance(self, request: Request) -> Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        instance_id = request.path_params["instance_id"]
        action = request.path_params["action"]
        if action not in ("kill", "restart"):
            return _error(404, f"unknown action {action!r}: use kill or restart")
        if self.control is None:
            return _error(404, "no process control is configured: this dashboard cannot kill")
        try:
            if action == "kill":
                await self.control.kill(instance_id)
            else:
                await self.control.restart(instance_id)
        except UnknownInstanceError as exc:
            return _error(404, str(exc))
        _log.warning("instance control", instance=instance_id, action=action)
        self._refresh_soon()
        return JSONResponse({"instance": instance_id, "action": action, "done": True})

    def _refuse(self, request: Request) -> Response | None:
        if self._token is None:
            return _error(
                403, "controls are off: start the dashboard with a chaos token to use them"
            )
        presented = b""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            presented = header[7:].strip().encode()
        if TOKEN_HEADER in request.headers:
            presented = request.headers[TOKEN_HEADER].strip().encode()
        # Constant time: the comparison must not reveal how much of a guess was right.
        if not hmac.compare_digest(presented, self._token):
            return _error(
                401,
                "missing or wrong chaos token: send it in the X-Chaos-Token header",
                {"www-authenticate": 'Bearer realm="shipyard-dashboard"'},
            )
        return None

    def _refresh_soon(self) -> None:
        # The answer should not wait for a whole poll; the stream shows the effect.
        task = asyncio.get_running_loop().create_task(self.collector.refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)


async def _json_body(request: Request) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ConfigError("body", f"{len(body)}+ bytes", f"must be at most {MAX_BODY} bytes")
    if not body:
        return {}
    return msgspec.json.decode(body)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
