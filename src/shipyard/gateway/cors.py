"""CORS: answer preflights locally and add the headers browsers need to actual responses.

Runs first in the chain, so a preflight needs no credentials (browsers send none) and an
error reply from a later filter (401, 429) still carries the headers the page needs to
read it. A request from an origin that is not allowed gets no CORS headers at all (the
browser then blocks it); its preflight is refused with 403.
"""

from __future__ import annotations

from shipyard.gateway.config import CorsConfig
from shipyard.gateway.filters import Exchange, Filter, Header, Reply, local_reply


class Cors(Filter):
    """The CORS filter of one route."""

    runs_inline = True

    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        self._origins = (
            None if config.origins is None else frozenset(o.encode() for o in config.origins)
        )
        self._methods = frozenset(m.encode() for m in config.methods)
        self._headers = frozenset(h.encode() for h in config.headers)
        credentials: list[Header] = (
            [(b"access-control-allow-credentials", b"true")] if config.credentials else []
        )
        # Headers are fixed per route: only the echoed origin differs per request.
        self._preflight: list[Header] = [
            (b"access-control-allow-methods", ", ".join(config.methods).encode()),
            (b"access-control-max-age", str(config.max_age).encode()),
            *credentials,
        ]
        if config.headers:
            self._preflight.append(
                (b"access-control-allow-headers", ", ".join(config.headers).encode())
            )
        self._actual: list[Header] = list(credentials)
        if config.expose:
            self._actual.append(
                (b"access-control-expose-headers", ", ".join(config.expose).encode())
            )

    def _allowed_origin(self, origin: bytes) -> bytes | None:
        if self._origins is None:
            return b"*"
        return origin if origin in self._origins else None

    def _origin_headers(self, allowed: bytes) -> list[Header]:
        if allowed == b"*":
            return [(b"access-control-allow-origin", b"*")]
        # The answer depends on the Origin header: caches must key on it.
        return [(b"access-control-allow-origin", allowed), (b"vary", b"origin")]

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """Answer a preflight (OPTIONS with Origin and Access-Control-Request-Method)."""
        if exchange.method != b"OPTIONS":
            return None
        headers = exchange.header_map
        origin = headers.get(b"origin")
        requested = headers.get(b"access-control-request-method")
        if origin is None or requested is None:
            return None  # a plain OPTIONS request: the upstream answers it
        allowed = self._allowed_origin(origin)
        if allowed is None:
            return local_reply(403, "this origin is not allowed to call this API")
        if requested.strip().upper() not in self._methods:
            return local_reply(403, "this method is not allowed from another origin")
        wanted = headers.get(b"access-control-request-headers")
        if wanted:
            names = {n.strip().lower() for n in wanted.split(b",") if n.strip()}
            if names - self._headers:
                return local_reply(403, "these request headers are not allowed cross-origin")
        return Reply(204, [*self._origin_headers(allowed), *self._preflight])

    def on_response(self, exchange: Exchange, reply: Reply) -> Reply:
        """Add the CORS headers for an allowed origin (none for others)."""
        origin = exchange.header_map.get(b"origin")
        if origin is None or (
            exchange.method == b"OPTIONS"
            and b"access-control-request-method" in exchange.header_map
        ):
            return reply  # a preflight: answered (or refused) completely by on_request
        allowed = self._allowed_origin(origin)
        if allowed is not None:
            reply.headers = [
                *(h for h in reply.headers if not h[0].startswith(b"access-control-")),
                *self._origin_headers(allowed),
                *self._actual,
            ]
        return reply
