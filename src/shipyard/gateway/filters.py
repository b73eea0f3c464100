"""The filter API: one ``Exchange`` per request flows through a route's filter chain.

Envoy-style: each filter has one concern; ``on_request`` returns ``None`` to continue or a
``Reply`` to stop the chain and answer locally (401, 429, ...). The router is simply the
last filter and always returns a reply. Chains are composed once per route at start-up
(KrakenD/Lura style), so nothing is decided per request that could be decided before.

Two ways through a chain. ``Chain.handle`` is a coroutine: every filter's ``on_request``
is awaited, then the router. ``Chain.answer`` is the callback path the server takes on
every request: filters that can decide without waiting (``Filter.decide``: a JWT already
in the verified cache, an in-process token bucket) decide synchronously, and a router
with an ``answer_from_callbacks`` method (``proxy.Proxy``) writes the request upstream
and later hands the reply to the client connection from the upstream's own callback
(``Responder``). No coroutine, future or loop step is made for such a request. Whatever
cannot be decided that way (a cache miss, a store that must be awaited, a router without
that method) returns the rest of the coroutine path instead, from the filter that could
not decide on, so no filter runs twice.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

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


class Undecided(enum.Enum):
    """``Filter.decide``'s answer when only ``on_request`` (awaited) can decide."""

    UNDECIDED = 0


UNDECIDED = Undecided.UNDECIDED
Decision = Reply | None | Literal[Undecided.UNDECIDED]
"""What ``Filter.decide`` returns: a Reply (answer now), None (go on) or UNDECIDED."""

Pending = Awaitable[Reply]
"""The rest of a request's coroutine path, for the server to run (``Chain.answer``)."""


class Responder(Protocol):
    """Where a router that answers from callbacks delivers its reply: the client
    connection waiting for it (``server.HttpConnection``). Exactly one call per request."""

    def resume(self, reply: Reply) -> None:
        """The reply is ready: send it and go on with the connection's next request."""

    def resume_later(self, pending: Pending) -> None:
        """The reply needs the coroutine path after all: await ``pending`` and send its
        reply (its exceptions are handled as the coroutine path's are)."""


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

    def decide(self, exchange: Exchange) -> Decision:
        """``on_request`` without awaiting, when the filter can (the fast path).

        Return what ``on_request`` would, or ``UNDECIDED`` (having changed nothing) when
        only ``on_request`` can tell; it is then awaited instead. Must not set context
        variables (the fast path runs in no per-request context). The default never
        decides, so a filter that only overrides ``on_request`` keeps working."""
        return UNDECIDED

    def on_response(self, exchange: Exchange, reply: Reply) -> Reply:
        """Change the response on its way out (e.g. add CORS headers); runs in reverse
        filter order on every reply of the route, local replies included."""
        return reply

    def on_complete(self, exchange: Exchange) -> None:
        """Called once the response has been sent (status and bytes are known)."""


Handler = Callable[[Exchange], Awaitable[Reply]]
Start = Callable[[Exchange, Responder], Reply | Pending | None]
"""A router's optional ``answer_from_callbacks(exchange, responder)``, the contract of
``Chain.answer`` (``Proxy`` has one)."""


def runs_inline(handler: Handler) -> bool:
    """Whether a router says it may run without a Task (its ``runs_inline`` attribute,
    as for filters; a handler without one may not)."""
    return getattr(handler, "runs_inline", False) is True


class Chain:
    """A route's filters followed by its router, fixed at start-up."""

    __slots__ = (
        "_deciders",
        "_filters",
        "_responses",
        "_router",
        "_start",
        "answer",
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
        # Per request filter its decide(), None where it has none (the coroutine path
        # takes over there); the router's answer_from_callbacks() where it has one.
        self._deciders = tuple(
            f.decide if type(f).decide is not Filter.decide else None
            for f in filters
            if type(f).on_request is not Filter.on_request
        )
        start = getattr(router, "answer_from_callbacks", None)
        self._start: Start | None = start if callable(start) else None
        self.answer: Callable[[Exchange, Responder], Reply | Pending | None] = (
            # Response filters must see every reply: such routes keep the coroutine path.
            self._answer_handle if self._responses else self._answer
        )
        """Start answering a request (the server's entry point): returns the Reply, or
        the coroutine path's rest to run, or None when the router will call
        ``responder.resume`` (or ``resume_later``) itself."""

    def _answer(self, exchange: Exchange, responder: Responder) -> Reply | Pending | None:
        for index, decide in enumerate(self._deciders):
            if decide is None:
                return self._handle_from(exchange, index)
            reply = decide(exchange)
            if reply is not None:
                if reply is UNDECIDED:
                    return self._handle_from(exchange, index)
                return reply
        start = self._start
        if start is None:
            return self._router(exchange)
        return start(exchange, responder)

    def _answer_handle(self, exchange: Exchange, responder: Responder) -> Pending:
        return self.handle(exchange)

    async def _handle_from(self, exchange: Exchange, index: int) -> Reply:
        """The coroutine path from the ``index``-th request filter on (no reply filters:
        ``_answer`` is only used on chains without them)."""
        for on_request in self._filters[index:]:
            reply = await on_request(exchange)
            if reply is not None:
                return reply
        return await self._router(exchange)

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
