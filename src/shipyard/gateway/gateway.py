"""``Gateway``: builds every route's filter chain once from the config, then serves.

Per route the chain is ``[CORS] → [authentication] → [rate limit] → router``, where the
router is a proxy, an aggregation or a strangler split, optionally wrapped by the
response cache; per frontend the access log (and, with the admin API, the metrics) run
when each response is complete. A feature a route does not use is not in its chain, so
it costs that route nothing.

Reloading builds a complete new ``Runtime`` first and swaps it in only if everything
built; listeners whose address did not change are kept (with their connections), and a
request already routed finishes on the chain it started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.core.logging import get_logger
from shipyard.gateway.access_log import AccessLog
from shipyard.gateway.admin import AdminApi
from shipyard.gateway.aggregate import Aggregator
from shipyard.gateway.api_key import ApiKeyAuth
from shipyard.gateway.auth import AnyAuth
from shipyard.gateway.auth_jwt import FetchJwks, JwtAuth, JwtVerifier, fetch_url
from shipyard.gateway.cache import ResponseCache, ResponseCacheStore, cache_store_from_url
from shipyard.gateway.config import (
    FrontendConfig,
    GatewayConfig,
    Limits,
    RouteConfig,
    load_config,
)
from shipyard.gateway.cors import Cors
from shipyard.gateway.filters import Chain, Filter, Handler
from shipyard.gateway.local_ratelimit import LocalRateLimitStore
from shipyard.gateway.metrics import GatewayMetrics, registry_for
from shipyard.gateway.proxy import Proxy, Upstream
from shipyard.gateway.rate_limit import RateLimit
from shipyard.gateway.redis_ratelimit import RedisRateLimitStore
from shipyard.gateway.reload import ConfigWatcher
from shipyard.gateway.routing import Router
from shipyard.gateway.runtime import Runtime
from shipyard.gateway.server import Completion, Frontend, HttpConnection, Listener, Network
from shipyard.gateway.shadow import Shadow
from shipyard.gateway.strangler import Strangler
from shipyard.gateway.upstream import UpstreamPool, UpstreamResolver
from shipyard.resilience.ratelimit import RateLimitStore

_log = get_logger("shipyard.gateway")


def store_from_url(url: str, *, prefix: str) -> RateLimitStore:
    """``memory://`` → in-process store; ``redis://…`` → a store every gateway shares."""
    if url.startswith("memory://"):
        return LocalRateLimitStore()
    return RedisRateLimitStore.from_url(url, prefix=prefix)


class _Served:
    """A listening socket and what it serves."""

    __slots__ = ("listen", "listener", "server")

    def __init__(self, listen: tuple[str, int], listener: Listener, server: asyncio.Server):
        self.listen = listen
        self.listener = listener
        self.server = server


class Gateway:
    """A running gateway for one ``GatewayConfig`` (one process; see ``--workers``).

    ``config_path`` is the file ``reload()`` (SIGHUP, the admin API, the file watch)
    re-reads; it defaults to ``config.source`` when that names an existing file.
    Stores (rate limits, cache), the access log and the admin listener are set up once at
    start; a reload changes frontends, routes, services and limits.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        resolver: UpstreamResolver | None = None,
        rate_limit_store: RateLimitStore | None = None,
        cache_store: ResponseCacheStore | None = None,
        access_log: BinaryIO | None = None,
        fetch_jwks: FetchJwks = fetch_url,
        reuse_port: bool = True,
        config_path: str | Path | None = None,
        rng: Callable[[], float] = random.random,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._check(config, resolver)
        self.config = config
        self._resolver = resolver
        self._store = rate_limit_store
        self._cache_store = cache_store
        self._owns_cache_store = cache_store is None
        self._access_log_stream = access_log
        self._fetch_jwks = fetch_jwks
        self._reuse_port = reuse_port
        if config_path is None and Path(config.source).is_file():
            config_path = config.source
        self._config_path = Path(config_path) if config_path is not None else None
        self._rng = rng
        self._clock = clock
        self._served: dict[object, _Served] = {}
        self._admin: _Served | None = None
        self._addresses: dict[str, tuple[str, int]] = {}
        self._access_log: AccessLog | None = None
        self._metrics: GatewayMetrics | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._pool: UpstreamPool | None = None
        self._runtime: Runtime | None = None
        self._watcher: ConfigWatcher | None = None
        self._reload_lock = asyncio.Lock()
        self.reloads = 0
        """Successful reloads so far."""

    @staticmethod
    def _check(config: GatewayConfig, resolver: UpstreamResolver | None) -> None:
        for name, service in config.services.items():
            if not service.urls and resolver is None:
                raise ConfigError(
                    f"services.{name}.urls",
                    None,
                    "a service without urls needs a resolver (run the gateway with discovery)",
                )

    @property
    def runtime(self) -> Runtime:
        """The routing state now in use (replaced whole by each reload)."""
        assert self._runtime is not None, "start() the gateway first"
        return self._runtime

    def address(self, frontend: str) -> tuple[str, int]:
        """The (host, port) a frontend is served on (the real port when 0 was configured)."""
        return self._addresses[frontend]

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """Where the admin API listens (None when it is disabled)."""
        return self._addresses.get("admin") if self._admin is not None else None

    async def start(self) -> None:
        """Build every chain, fetch JWKS documents, and start listening."""
        config = self.config
        loop = asyncio.get_running_loop()
        self._pool = UpstreamPool()
        if self._store is None:
            self._store = store_from_url(config.rate_limit_store, prefix=config.rate_limit_prefix)
        if self._cache_store is None and any(
            route.cache is not None for fe in config.frontends for route in fe.routes
        ):
            self._cache_store = cache_store_from_url(
                config.cache.store, max_bytes=config.cache.max_bytes, prefix=config.cache.prefix
            )
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
        admin = config.admin
        if admin is not None and admin.token is None:
            _log.warning("admin API disabled: no token configured", listen=admin.listen)
        if admin is not None and admin.token is not None:
            self._metrics = GatewayMetrics()
        runtime = await self._build(config, {})
        await self._swap(runtime)
        if admin is not None and admin.token is not None:
            api = AdminApi(
                admin.token,
                lambda: self.runtime,
                self._admin_reload,
                registry_for(self._metrics or GatewayMetrics(), lambda: self.runtime),
                lambda: dict(self._addresses),
            )
            self._admin = await self._listen(admin.listen, [api.frontend()], Limits())
            self._addresses["admin"] = self._bound(self._admin)
        if config.reload.watch and self._config_path is not None:
            self._watcher = ConfigWatcher(
                self._config_path, self.reload_from_file, interval=config.reload.interval
            )
            self._watcher.start()
        _log.info("gateway listening", frontends=self._addresses)

    # -- building

    async def _build(self, config: GatewayConfig, previous: dict[str, Upstream]) -> Runtime:
        assert self._pool is not None
        upstreams: dict[str, Upstream] = {}
        for name, service in config.services.items():
            old = previous.get(name)
            # An unchanged service keeps its breaker, balancer position and budget.
            upstreams[name] = (
                old
                if old is not None and old.config == service
                else Upstream(service, self._resolver, self._pool, clock=self._clock)
            )
        runtime = Runtime(config=config, upstreams=upstreams)
        # Frontends on the same address share a listener; port 0 (any free port) is
        # never shared except by the frontends using the top-level listen.
        for fe in config.frontends:
            listen = fe.listen or config.listen
            assert listen is not None  # guaranteed by the config loader
            key: object = listen if fe.listen is None or listen[1] != 0 else fe.name
            group = runtime.groups.setdefault(key, (listen, []))
            group[1].append(await self._frontend(fe, runtime))
        return runtime

    async def _frontend(self, fe: FrontendConfig, runtime: Runtime) -> Frontend:
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
            key = (fe.name, route.name)
            filters: list[Filter] = []
            if route.cors is not None:
                filters.append(Cors(route.cors))
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
                limit = RateLimit(
                    route.rate_limit,
                    self._store,
                    scope=f"{fe.name}:{route.name}",
                    clock=self._clock,
                )
                filters.append(limit)
                runtime.rate_limits[key] = limit
            strips = frozenset().union(*(f.strips for f in filters)) | frontend_strips
            router = self._router(route, key, runtime, strips)
            if route.cache is not None:
                assert self._cache_store is not None
                cache = ResponseCache(
                    route.cache,
                    self._cache_store,
                    router,
                    scope=f"{fe.name}:{route.name}",
                    clock=self._clock,
                )
                runtime.caches[key] = cache
                router = cache
            routes.append((route, (route.name, Chain(filters, router))))
        completions: list[Completion] = []
        if self._access_log is not None:
            completions.append(self._access_log.on_complete)
        if self._metrics is not None:
            completions.append(self._metrics.on_complete)
        return Frontend(
            fe.name, fe.prefix, Router(routes, case_insensitive=fe.case_insensitive), completions
        )

    def _router(
        self, route: RouteConfig, key: tuple[str, str], runtime: Runtime, strips: frozenset[bytes]
    ) -> Handler:
        upstreams = runtime.upstreams
        if route.aggregate is not None:
            aggregator = Aggregator(route.aggregate, upstreams)
            runtime.aggregators[key] = aggregator
            return aggregator

        def proxy(service: str) -> Proxy:
            upstream = upstreams[service]
            return Proxy(
                upstream,
                timeout=route.timeout or upstream.config.timeout,
                strips=strips,
                trusted=runtime.config.trusted_proxies,
            )

        if route.strangler is not None:
            config = route.strangler
            new = proxy(config.new)
            shadow = (
                Shadow(config.shadow, new, route=route.name, rng=self._rng)
                if config.shadow is not None
                else None
            )
            strangler = Strangler(
                config, proxy(config.legacy), new, route=route.name, shadow=shadow, rng=self._rng
            )
            runtime.stranglers[key] = strangler
            return strangler
        return proxy(route.service)

    # -- listening and swapping

    async def _listen(
        self,
        listen: tuple[str, int],
        frontends: Sequence[Frontend],
        limits: Limits,
        trusted: Sequence[Network] = (),
    ) -> _Served:
        loop = asyncio.get_running_loop()
        listener = Listener(frontends, limits=limits, trusted_proxies=trusted)
        server = await loop.create_server(
            lambda: HttpConnection(listener),
            listen[0],
            listen[1],
            reuse_port=self._reuse_port,
            backlog=1024,
        )
        for sock in server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.start_sweeping(loop)
        return _Served(listen, listener, server)

    @staticmethod
    def _bound(served: _Served) -> tuple[str, int]:
        bound = served.server.sockets[0].getsockname()
        return (bound[0], bound[1])

    async def _swap(self, runtime: Runtime) -> None:
        """Serve ``runtime``: keep unchanged listeners, open new ones, close the rest."""
        config = runtime.config
        opened: dict[object, _Served] = {}
        try:
            for key, (listen, frontends) in runtime.groups.items():
                current = self._served.get(key)
                if current is None or current.listen != listen:
                    opened[key] = await self._listen(
                        listen, frontends, config.limits, config.trusted_proxies
                    )
        except OSError:
            for served in opened.values():
                await self._close_served(served)
            raise
        # From here on nothing awaits: the new routing state appears all at once.
        retired = [s for k, s in self._served.items() if k not in runtime.groups or k in opened]
        served_now: dict[object, _Served] = {}
        addresses: dict[str, tuple[str, int]] = {}
        for key, (_, frontends) in runtime.groups.items():
            served = opened.get(key) or self._served[key]
            if key not in opened:
                served.listener.replace(
                    frontends, limits=config.limits, trusted_proxies=config.trusted_proxies
                )
            served_now[key] = served
            for frontend in frontends:
                addresses[frontend.name] = self._bound(served)
        if "admin" in self._addresses:
            addresses["admin"] = self._addresses["admin"]
        self._served = served_now
        self._addresses = addresses
        self._runtime = runtime
        self.config = config
        for served in retired:
            await self._close_served(served)

    @staticmethod
    async def _close_served(served: _Served) -> None:
        served.server.close()
        served.listener.stop_sweeping()
        for conn in list(served.listener.connections):
            conn.close_when_idle()
        await served.server.wait_closed()

    # -- reloading

    async def reload(self, config: GatewayConfig | None = None) -> None:
        """Switch to ``config`` (default: re-read ``config_path``) without dropping requests.

        Raises ``GatewayConfigError``/``ConfigError``/``OSError`` and keeps the old
        configuration when the new one is invalid or cannot be served."""
        async with self._reload_lock:
            if config is None:
                if self._config_path is None:
                    raise ConfigError(
                        "config_path", None, "reload() needs the gateway's config file path"
                    )
                config = load_config(self._config_path)
            self._check(config, self._resolver)
            fixed = ("admin", "rate_limit_store", "rate_limit_prefix", "cache", "access_log")
            changed = [k for k in fixed if getattr(config, k) != getattr(self.config, k)]
            if changed:
                _log.warning(
                    "reload keeps the start-up settings of these keys; restart to change them",
                    keys=changed,
                )
            if self._cache_store is None and any(
                r.cache is not None for fe in config.frontends for r in fe.routes
            ):
                self._cache_store = cache_store_from_url(
                    config.cache.store,
                    max_bytes=config.cache.max_bytes,
                    prefix=config.cache.prefix,
                )
            runtime = await self._build(config, self.runtime.upstreams)
            await self._swap(runtime)
            self.reloads += 1
        _log.info("gateway configuration reloaded", source=config.source)

    async def reload_from_file(self) -> bool:
        """Reload from ``config_path``; a bad file is logged and the old config kept."""
        return await self._admin_reload() is None

    async def _admin_reload(self) -> str | None:
        try:
            await self.reload()
        except (ConfigError, OSError) as exc:
            _log.error("config reload rejected; keeping the running configuration", error=str(exc))
            return str(exc)
        except Exception as exc:  # e.g. a JWKS URL that does not answer
            _log.exception("config reload failed; keeping the running configuration")
            return f"{type(exc).__name__}: {exc}"
        return None

    # -- lifecycle

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        def flush() -> None:
            if self._access_log is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._access_log.flush()
            self._flusher = loop.call_later(1.0, flush)

        self._flusher = loop.call_later(1.0, flush)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Stop listening, close client and upstream connections, flush the log."""
        if self._watcher is not None:
            await self._watcher.stop()
        served = list(self._served.values())
        if self._admin is not None:
            served.append(self._admin)
        for item in served:
            item.server.close()
        for item in served:
            item.listener.stop_sweeping()
            for conn in list(item.listener.connections):
                conn.close()
        for item in served:
            await item.server.wait_closed()
        if self._runtime is not None:
            for shadow in self._runtime.shadows.values():
                shadow.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
        if self._access_log is not None:
            self._access_log.flush()
        if self._pool is not None:
            self._pool.close()
        if isinstance(self._store, RedisRateLimitStore):
            await self._store.aclose()
        if self._cache_store is not None and self._owns_cache_store:
            await self._cache_store.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
