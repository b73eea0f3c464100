"""The filter API: one ``Exchange`` per request flows through a route's filter chain.

Envoy-style: each filter has one concern; ``on_request`` returns ``None`` to continue or a
``Reply`` to stop the chain and answer locally (401, 429, ...). The router is simply the
last filter and always returns a reply. Chains are composed once per route at start-up
(KrakenD/Lura style), so nothing is decided per request that could be decided before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1)."""


class Reply:
    """A response: status, headers (lower-case names) and a body, or a stream of chunks."""

    __slots__ = ("body", "headers", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: list[Header],
        body: bytes = b"",
        stream: Any = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
        """An upstream response still arriving (see ``upstream.UpstreamConnection``)."""


_encode = msgspec.json.encode
_JSON: Header = (b"content-type", b"application/json")


def local_reply(status: int, reason: str, headers: Sequence[Header] = ()) -> Reply:
    """A short JSON error the gateway answers itself: ``{"error": reason}``."""
    return Reply(status, [_JSON, *headers], _encode({"error": reason}))


class Exchange:
    """One request on its way through the gateway, plus what filters learned about it."""

    __slots__ = (
        "body",
        "bytes_sent",
        "client_ip",
        "consumer",
        "frontend",
        "header_map",
        "headers",
        "host",
        "keep_alive",
        "method",
        "params",
        "path",
        "peer_ip",
        "query",
        "request_id",
        "route",
        "service",
        "start",
        "status",
        "trace_id",
        "upstream",
        "upstream_headers",
        "upstream_path",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        version: str,
        headers: list[Header],
        body: bytes,
        peer_ip: str,
        keep_alive: bool,
        start: float,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.header_map = dict(headers)
        self.host = self.header_map.get(b"host", b"")
        self.body = body
        self.peer_ip = peer_ip
        self.client_ip = peer_ip
        self.keep_alive = keep_alive
        self.start = start
        self.frontend = ""
        self.route = ""
        self.params: dict[str, str] = {}
        self.upstream_path = path
        self.consumer: str | None = None
        self.request_id = b""
        self.trace_id = ""
        self.upstream = ""
        self.service = ""
        self.upstream_headers: list[Header] = []
        """Headers filters add to the upstream request (e.g. verified claims)."""
        self.status = 0
        self.bytes_sent = 0


class Filter:
    """Base of gateway filters. Override what you need; the defaults do nothing.

    ``strips`` names request headers that must never reach the upstream as the client
    sent them (a filter that sets ``X-User-Id`` from a verified token strips the client's
    copy); the route's chain removes them before any filter adds its own.
    """

    strips: frozenset[bytes] = frozenset()

    runs_inline: bool = False
    """True when ``on_request`` awaits nothing but plain futures (no ``asyncio.timeout``,
    nothing that needs ``asyncio.current_task()``, e.g. no redis-py or aiohttp call): a
    route whose filters and router all say so runs without a Task per request (see
    ``inline``). Leave it False for anything else; such routes simply get a Task."""

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """Inspect or change the request; return a Reply to answer without going on."""
        return None

    def on_response(self, exchange: Exchange, reply: Reply) -> Reply:
        """Change the response on its way out (e.g. add CORS headers); runs in reverse
        filter order on every reply of the route, local replies included."""
        return reply

    def on_complete(self, exchange: Exchange) -> None:
        """Called once the response has been sent (status and bytes are known)."""


Handler = Callable[[Exchange], Awaitable[Reply]]


def runs_inline(handler: Handler) -> bool:
    """Whether a router says it may run without a Task (its ``runs_inline`` attribute,
    as for filters; a handler without one may not)."""
    return getattr(handler, "runs_inline", False) is True


class Chain:
    """A route's filters followed by its router, fixed at start-up."""

    __slots__ = (
        "_filters",
        "_responses",
        "_router",
        "completions",
        "handle",
        "runs_inline",
        "strips",
    )

    def __init__(self, filters: Sequence[Filter], router: Handler) -> None:
        # Only filters that override on_request run per request.
        self._filters = tuple(
            f.on_request for f in filters if type(f).on_request is not Filter.on_request
        )
        self._router = router
        self.completions = tuple(
            f.on_complete for f in filters if type(f).on_complete is not Filter.on_complete
        )
        self._responses = tuple(
            f.on_response
            for f in reversed(filters)
            if type(f).on_response is not Filter.on_response
        )
        # Chosen once: routes without response filters never pay for the loop, and
        # routes without request filters go straight to the router.
        self.handle: Handler = (
            self._handle_responses if self._responses else self._handle if self._filters else router
        )
        strips: frozenset[bytes] = frozenset()
        for f in filters:
            strips |= f.strips
        self.strips = strips
        self.runs_inline = all(f.runs_inline for f in filters) and runs_inline(router)
        """Whether requests on this chain may run without a Task (``Filter.runs_inline``)."""

    async def _handle(self, exchange: Exchange) -> Reply:
        """Run the filters in order; the first reply wins, else the router answers."""
        for on_request in self._filters:
            reply = await on_request(exchange)
            if reply is not None:
                return reply
        return await self._router(exchange)

    async def _handle_responses(self, exchange: Exchange) -> Reply:
        reply = await self._handle(exchange)
        for on_response in self._responses:
            reply = on_response(exchange, reply)
        return reply
