"""``Gateway``: builds every route's filter chain once from the config, then serves.

Per route the chain is ``[authentication] → [rate limit] → router``; per frontend the
access log runs when each response is complete. Later phases (response cache, fan-out,
strangler weights) slot in as more filters in the same chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Sequence
from typing import BinaryIO

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.core.logging import get_logger
from shipyard.gateway.access_log import AccessLog
from shipyard.gateway.api_key import ApiKeyAuth
from shipyard.gateway.auth import AnyAuth
from shipyard.gateway.auth_jwt import FetchJwks, JwtAuth, JwtVerifier, fetch_url
from shipyard.gateway.config import FrontendConfig, GatewayConfig, RouteConfig
from shipyard.gateway.filters import Chain, Filter
from shipyard.gateway.proxy import Proxy, Upstream
from shipyard.gateway.rate_limit import RateLimit
from shipyard.gateway.redis_ratelimit import RedisRateLimitStore
from shipyard.gateway.routing import Router
from shipyard.gateway.server import Completion, Frontend, HttpConnection, Listener
from shipyard.gateway.upstream import UpstreamPool, UpstreamResolver
from shipyard.resilience.ratelimit import MemoryRateLimitStore, RateLimitStore

_log = get_logger("shipyard.gateway")


def store_from_url(url: str, *, prefix: str) -> RateLimitStore:
    """``memory://`` → in-process store; ``redis://…`` → a store every gateway shares."""
    if url.startswith("memory://"):
        return MemoryRateLimitStore()
    return RedisRateLimitStore.from_url(url, prefix=prefix)


class Gateway:
    """A running gateway for one ``GatewayConfig`` (one process; see ``--workers``)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        resolver: UpstreamResolver | None = None,
        rate_limit_store: RateLimitStore | None = None,
        access_log: BinaryIO | None = None,
        fetch_jwks: FetchJwks = fetch_url,
        reuse_port: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._store = rate_limit_store
        self._access_log_stream = access_log
        self._fetch_jwks = fetch_jwks
        self._reuse_port = reuse_port
        self._clock = clock
        self._servers: list[asyncio.Server] = []
        self._listeners: list[Listener] = []
        self._addresses: dict[str, tuple[str, int]] = {}
        self._access_log: AccessLog | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._pool: UpstreamPool | None = None
        for name, service in config.services.items():
            if not service.urls and resolver is None:
                raise ConfigError(
                    f"services.{name}.urls",
                    None,
                    "a service without urls needs a resolver (run the gateway with discovery)",
                )

    def address(self, frontend: str) -> tuple[str, int]:
        """The (host, port) a frontend is served on (the real port when 0 was configured)."""
        return self._addresses[frontend]

    async def start(self) -> None:
        """Build every chain, fetch JWKS documents, and start listening."""
        config = self.config
        loop = asyncio.get_running_loop()
        self._pool = pool = UpstreamPool()
        if self._store is None:
            self._store = store_from_url(config.rate_limit_store, prefix=config.rate_limit_prefix)
        if config.access_log.path is not None:
            stream = self._access_log_stream
            if stream is None:
                stream = (
                    sys.stdout.buffer
                    if config.access_log.path == "-"
                    # Opening a local log file once at start-up; blocking is harmless here.
                    else open(config.access_log.path, "ab", buffering=1 << 16)  # noqa: SIM115, ASYNC230
                )
            self._access_log = AccessLog(stream, sample=config.access_log.sample)
            self._schedule_flush(loop)
        upstreams = {
            name: Upstream(service, self._resolver, pool, clock=self._clock)
            for name, service in config.services.items()
        }
        # Frontends on the same address share a listener; port 0 (any free port) is
        # never shared except by the frontends using the top-level listen.
        groups: dict[object, tuple[tuple[str, int], list[Frontend]]] = {}
        for fe in config.frontends:
            listen = fe.listen or config.listen
            assert listen is not None  # guaranteed by the config loader
            key: object = listen if fe.listen is None or listen[1] != 0 else fe.name
            group = groups.setdefault(key, (listen, []))
            group[1].append(await self._frontend(fe, upstreams))
        for listen, frontends in groups.values():
            listener = Listener(
                frontends,
                limits=config.limits,
                trusted_proxies=config.trusted_proxies,
            )
            server = await loop.create_server(
                lambda listener=listener: HttpConnection(listener),  # type: ignore[misc]
                listen[0],
                listen[1],
                reuse_port=self._reuse_port,
                backlog=1024,
            )
            listener.start_sweeping(loop)
            self._listeners.append(listener)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            for sock in server.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for frontend in frontends:
                self._addresses[frontend.name] = (bound[0], bound[1])
        _log.info("gateway listening", frontends=self._addresses)

    async def _frontend(self, fe: FrontendConfig, upstreams: dict[str, Upstream]) -> Frontend:
        jwt = None
        if fe.jwt is not None:
            verifier = JwtVerifier(fe.jwt, clock=self._clock, fetch=self._fetch_jwks)
            await verifier.refresh_jwks()
            jwt = JwtAuth(verifier)
        api_key = ApiKeyAuth(fe.api_keys) if fe.api_keys is not None else None
        # Claim headers are stripped on EVERY route of the frontend, authenticated or not,
        # so no client can hand an upstream a forged X-User-Id through a public route.
        frontend_strips = jwt.strips if jwt is not None else frozenset()
        routes: list[tuple[RouteConfig, tuple[str, Chain]]] = []
        for route in fe.routes:
            filters: list[Filter] = []
            if route.auth == "jwt":
                assert jwt is not None
                filters.append(jwt)
            elif route.auth == "api_key":
                assert api_key is not None
                filters.append(api_key)
            elif route.auth == "any":
                filters.append(AnyAuth(jwt, api_key))
            if route.rate_limit is not None:
                assert self._store is not None
                filters.append(
                    RateLimit(
                        route.rate_limit,
                        self._store,
                        scope=f"{fe.name}:{route.name}",
                        clock=self._clock,
                    )
                )
            strips = frozenset().union(*(f.strips for f in filters)) | frontend_strips
            upstream = upstreams[route.service]
            proxy = Proxy(
                upstream,
                timeout=route.timeout or upstream.config.timeout,
                strips=strips,
                trusted=self.config.trusted_proxies,
            )
            routes.append((route, (route.name, Chain(filters, proxy))))
        completions: Sequence[Completion] = (
            (self._access_log.on_complete,) if self._access_log is not None else ()
        )
        return Frontend(
            fe.name, fe.prefix, Router(routes, case_insensitive=fe.case_insensitive), completions
        )

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        def flush() -> None:
            if self._access_log is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._access_log.flush()
            self._flusher = loop.call_later(1.0, flush)

        self._flusher = loop.call_later(1.0, flush)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await asyncio.gather(*(server.serve_forever() for server in self._servers))

    async def close(self) -> None:
        """Stop listening, close client and upstream connections, flush the log."""
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            listener.stop_sweeping()
            for conn in list(listener.connections):
                conn.close()
        for server in self._servers:
            await server.wait_closed()
        if self._flusher is not None:
            self._flusher.cancel()
        if self._access_log is not None:
            self._access_log.flush()
        if self._pool is not None:
            self._pool.close()
        if isinstance(self._store, RedisRateLimitStore):
            await self._store.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
