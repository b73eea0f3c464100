"""``Service``: a Starlette/FastAPI (or any ASGI) app with the runtime every service
needs — health probes, metrics, request logs and traces, idempotency keys, fault
injection, self-registration and graceful shutdown.

The composed app (:attr:`Service.asgi`, built once), outermost first:

1. the service's own endpoints, answered before anything else: ``/health/live``,
   ``/health/ready``, ``/health/startup``, ``/metrics`` and ``/admin/chaos`` — probes and
   scrapes are not logged, counted as traffic, slowed by chaos or drained;
2. the in-flight counter graceful shutdown waits on;
3. ``ObservabilityMiddleware`` — request id, trace context, metrics, span, log line —
   outside chaos, so injected faults show in metrics and logs like real ones;
4. ``ChaosMiddleware`` (when chaos is configured);
5. the idempotency middleware (when configured) — inside chaos, so an injected error is
   never stored as a key's response;
6. the app.

Lifespan: on start-up the app's own lifespan runs first, then the service registers with
discovery and marks the startup probe passed. Shutdown (lifespan shutdown, or
``await service.shutdown()``) fails readiness (draining), waits for in-flight requests
(at most ``drain_timeout`` seconds), deregisters, runs the app's lifespan shutdown, then
closes everything given to :meth:`Service.on_shutdown`, last registered first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.chaos import Chaos, ChaosAdminApp, ChaosMiddleware
from shipyard.core import SYSTEM_CLOCK, Clock, ConfigError, get_logger, validation
from shipyard.discovery import Discovery, Registration, RegistryBackend, SelfRegistration
from shipyard.health import Check, HealthApp, Probes
from shipyard.observability import (
    HasPools,
    ObservabilityMiddleware,
    RequestLog,
    ServiceMetrics,
    TraceRecorder,
)
from shipyard.service.errors import ServiceStartupError
from shipyard.service.lifespan import InnerLifespan

_log = get_logger("shipyard.service")

State = Literal["created", "starting", "running", "draining", "stopped"]
Middleware = Callable[[ASGIApp], ASGIApp]
"""An ASGI middleware factory: takes the app, returns the wrapped app."""
ShutdownCallback = Callable[[], Awaitable[object] | object]
R = TypeVar("R")

METRICS_PATH = "/metrics"
CHAOS_PATH = "/admin/chaos"
HEALTH_PREFIX = "/health/"


class Service:
    """One service: ``Service("orders", app, discovery="consul://127.0.0.1:8500", port=8001)``.

    * ``version`` goes into the registration's meta and the startup log.
    * ``discovery``: ``None`` (no registration), a registry URL, a ``Discovery`` or a
      ``RegistryBackend``; the instance registers as ``address:port`` with id
      ``instance_id`` (default ``"<name>-<address>:<port>"``), heartbeating every
      ``registration_ttl / 3`` seconds.
    * ``health``: ``Probes`` or a mapping of readiness checks (``{"db": check}``).
    * ``idempotency``: an ASGI middleware factory (``lambda app: IdempotencyMiddleware(app,
      store=...)``), an ``IdempotencyStore``, or a store opener taking no arguments
      (``lambda: SqlIdempotencyStore(db)``, sync or async) — the latter two wrapped with
      the default middleware. An opener (also accepted as the middleware's ``store=``) is
      called once the app's lifespan has started, so the store may live in a database the
      lifespan opens; if it fails, start-up fails.
    * ``chaos``/``chaos_token``: a ``Chaos`` to inject faults from; a token enables
      ``/admin/chaos`` (and creates the ``Chaos`` when none is given).
    * ``metrics``: ``True`` (a fresh registry), ``False`` or a ``ServiceMetrics``;
      ``request_log``: ``True`` (JSON lines on stderr), ``False`` or a ``RequestLog``;
      ``recorder``: where server spans go (default: a ``TraceRecorder`` of 1000 spans).
    * ``drain_timeout``: longest wait for in-flight requests at shutdown (seconds).
    """

    def __init__(
        self,
        name: str,
        app: ASGIApp,
        *,
        version: str = "0.0.0",
        discovery: Discovery | RegistryBackend | str | None = None,
        address: str = "127.0.0.1",
        port: int | None = None,
        instance_id: str | None = None,
        tags: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        registration_ttl: float | None = 10.0,
        health: Probes | Mapping[str, Check] | None = None,
        idempotency: Middleware | object | None = None,
        chaos: Chaos | None = None,
        chaos_token: str | None = None,
        metrics: ServiceMetrics | bool = True,
        request_log: RequestLog | bool = True,
        recorder: TraceRecorder | None = None,
        drain_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("name", name, "must be a non-empty service name")
        if not callable(app):
            raise ConfigError("app", app, "must be an ASGI app (Starlette, FastAPI, ...)")
        self.name = name
        self.version = version
        self.address = address
        self.port = _port(port)
        self.instance_id = instance_id
        self.tags = tuple(tags)
        self.meta = dict(meta or {})
        self.registration_ttl = validation.optional_positive("registration_ttl", registration_ttl)
        self.drain_timeout = validation.positive("drain_timeout", drain_timeout)
        self.discovery = discovery
        self.clock = clock
        self.probes = _probes(health)
        self.metrics = _metrics(metrics)
        self.recorder = TraceRecorder() if recorder is None else recorder
        self.request_log = RequestLog(name) if request_log is True else request_log or None
        if chaos is None and chaos_token is not None:
            chaos = Chaos(clock=clock)
        self.chaos = chaos
        self.registration: SelfRegistration | None = None
        """The live registration while running (``None`` without discovery)."""
        self.state: State = "created"
        self._chaos_admin = None if chaos is None else ChaosAdminApp(chaos, chaos_token)
        self._shutdown_callbacks: list[ShutdownCallback] = []
        self._lifespan: InnerLifespan | None = None
        self._in_flight = 0
        # Created here (an Event binds to no loop until awaited) so that requests driven
        # without start() are counted too.
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down: asyncio.Task[None] | None = None
        self.asgi: ServiceApp = self._compose(app, idempotency)
        """The composed ASGI app; serve this (or the service itself, which delegates)."""

    # -- composition ----------------------------------------------------------------------

    def _compose(self, app: ASGIApp, idempotency: Middleware | object | None) -> ServiceApp:
        inner = app
        if idempotency is not None:
            inner = _idempotency_factory(idempotency, self.clock)(inner)
        if self.chaos is not None:
            inner = ChaosMiddleware(inner, self.chaos)
        inner = ObservabilityMiddleware(
            inner,
            service=self.name,
            metrics=self.metrics,
            recorder=self.recorder,
            log=self.request_log,
            clock=self.clock,
        )
        exact: dict[str, ASGIApp] = {}
        if self.metrics is not None:
            exact[METRICS_PATH] = self.metrics.asgi_app()
        if self._chaos_admin is not None:
            exact[CHAOS_PATH] = self._chaos_admin
        return ServiceApp(self, inner, HealthApp(self.probes), exact)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: the composed app (so ``uvicorn module:service`` works)."""
        await self.asgi(scope, receive, send)

    # -- configuration --------------------------------------------------------------------

    def set_endpoint(self, address: str | None, port: int) -> None:
        """Where the service is reachable (what it registers); ``shipyard run`` sets it
        from ``--host``/``--port`` before start-up."""
        if self.state != "created":
            raise ConfigError("port", port, "can only change before the service starts")
        self.port = _port(port)
        if address:
            self.address = address

    def on_shutdown(self, callback: ShutdownCallback) -> ShutdownCallback:
        """Run ``callback()`` (sync or async) at shutdown, after draining and
        deregistering — close pools and clients here. Usable as a decorator."""
        if not callable(callback):
            raise ConfigError("callback", callback, "must be callable, e.g. pool.close")
        self._shutdown_callbacks.append(callback)
        return callback

    def close_on_shutdown(self, resource: R) -> R:
        """Close ``resource`` (its ``aclose()`` or ``close()``) at shutdown; returns it."""
        close = getattr(resource, "aclose", None) or getattr(resource, "close", None)
        if not callable(close):
            raise ConfigError("resource", resource, "must have an aclose() or close() method")
        self._shutdown_callbacks.append(close)
        return resource

    def watch(self, *policies: Any) -> Callable[[], None]:
        """Export resilience policies (breakers, bulkheads, retries, pipelines) on
        ``/metrics``; returns the way to stop."""
        if self.metrics is None:
            raise ConfigError("metrics", False, "must be enabled to watch policies")
        return self.metrics.watch(*policies)

    def watch_database(self, name: str, database: HasPools) -> Callable[[], None]:
        """Export ``database``'s pools (its bulkheads: size, in use, waiting, rejected) on
        ``/metrics`` as ``database=name``; returns the way to stop."""
        if self.metrics is None:
            raise ConfigError("metrics", False, "must be enabled to watch databases")
        return self.metrics.watch_database(name, database)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests being handled right now (the service's own endpoints excluded)."""
        return self._in_flight

    @property
    def draining(self) -> bool:
        """True from the start of shutdown: readiness answers 503."""
        return self.state in ("draining", "stopped")

    async def start(self, *, lifespan_state: dict[str, Any] | None = None) -> None:
        """Run the app's start-up, register with discovery, pass the startup probe.
        The server's lifespan calls this; call it yourself when serving otherwise."""
        if self.state != "created":
            return
        self.state = "starting"
        self._lifespan = InnerLifespan(self.asgi.app_without_endpoints, self.name)
        await self._lifespan.startup(lifespan_state)
        if self.discovery is not None:
            self.registration = SelfRegistration(
                self.discovery, self._registration(), clock=self.clock
            )
            await self.registration.start()
        self.probes.mark_started()
        self.state = "running"
        _log.info(
            "service started",
            service=self.name,
            version=self.version,
            address=self.address,
            port=self.port,
        )

    def begin_draining(self) -> None:
        """Fail readiness at once (safe from a signal handler); :meth:`shutdown` does the
        rest. A server calls this when told to stop, before it stops accepting."""
        self.probes.set_draining()
        if self.state in ("created", "starting", "running"):
            self.state = "draining"

    async def shutdown(self) -> None:
        """Drain, deregister, stop the app, close resources (idempotent; concurrent callers
        wait for the same shutdown)."""
        if self._shutting_down is None:
            self._shutting_down = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._shutting_down)

    async def _shutdown(self) -> None:
        self.begin_draining()
        _log.info("service draining", service=self.name, in_flight=self._in_flight)
        await self._drain()
        if self.registration is not None:
            await self.registration.stop()
        if self._lifespan is not None:
            await self._lifespan.shutdown()
        for callback in reversed(self._shutdown_callbacks):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception(
                    "shutdown callback failed", service=self.name, callback=repr(callback)
                )
        await self.probes.aclose()
        self.state = "stopped"
        _log.info("service stopped", service=self.name)

    async def _drain(self) -> None:
        idle = self._idle
        if idle.is_set():
            return
        waiter = asyncio.ensure_future(idle.wait())
        # The injected clock's timer bounds the wait, so tests drive it without sleeping.

        def expire() -> None:
            waiter.cancel()

        timer = self.clock.call_later(self.drain_timeout, expire)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                raise
            _log.warning(
                "drain timeout: shutting down with requests still running",
                service=self.name,
                in_flight=self._in_flight,
                drain_timeout=self.drain_timeout,
            )
        finally:
            timer.cancel()

    def _registration(self) -> Registration:
        if self.port is None:
            raise ConfigError(
                "port", None, "must be set to register with discovery (Service(port=...))"
            )
        return Registration(
            name=self.name,
            id=self.instance_id or f"{self.name}-{self.address}:{self.port}",
            address=self.address,
            port=self.port,
            tags=self.tags,
            meta={"version": self.version, **self.meta},
            ttl=self.registration_ttl,
        )

    # -- request accounting (called by ServiceApp) ----------------------------------------

    def _request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()


class ServiceApp:
    """The outermost ASGI app of a :class:`Service` (see the module docs for the order)."""

    __slots__ = ("_endpoints", "_health", "app_without_endpoints", "service")

    def __init__(
        self, service: Service, app: ASGIApp, health: HealthApp, endpoints: dict[str, ASGIApp]
    ) -> None:
        self.service = service
        self.app_without_endpoints = app
        """The middleware chain around the user's app (what lifespan is forwarded to)."""
        self._health = health
        self._endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            endpoint = self._endpoints.get(path)
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
            if path.startswith(HEALTH_PREFIX):
                await self._health(scope, receive, send)
                return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        service = self.service
        service._request_started()
        try:
            await self.app_without_endpoints(scope, receive, send)
        finally:
            service._request_finished()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await service.start(lifespan_state=scope.get("state"))
                except Exception as exc:
                    reason = exc.reason if isinstance(exc, ServiceStartupError) else repr(exc)
                    _log.error("service start-up failed", service=service.name, error=reason)
                    with contextlib.suppress(Exception):
                        await service.shutdown()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await service.shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def _port(port: int | None) -> int | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("port", port, "must be a TCP port in 1..65535")
    return port


def _probes(health: Probes | Mapping[str, Check] | None) -> Probes:
    if health is None:
        return Probes()
    if isinstance(health, Probes):
        return health
    if isinstance(health, Mapping):
        probes = Probes()
        for name, check in health.items():
            probes.add_readiness(name, check)
        return probes
    raise ConfigError("health", health, "must be Probes or a mapping of readiness checks")


def _metrics(metrics: ServiceMetrics | bool) -> ServiceMetrics | None:
    if isinstance(metrics, ServiceMetrics):
        return metrics
    if metrics is True:
        return ServiceMetrics()
    if metrics is False:
        return None
    raise ConfigError("metrics", metrics, "must be True, False or a ServiceMetrics")


def _idempotency_factory(idempotency: Middleware | object, clock: Clock) -> Middleware:
    if callable(idempotency) and not _takes_no_arguments(idempotency):
        return idempotency  # a middleware factory: app -> app
    # An IdempotencyStore or a store opener; imported here so services without idempotency
    # keys do not load the package.
    from shipyard.idempotency import IdempotencyMiddleware

    store: Any = idempotency
    return lambda app: IdempotencyMiddleware(app, store=store, clock=clock)


def _takes_no_arguments(fn: Callable[..., object]) -> bool:
    """True for a store opener (``lambda: store``), False for a middleware factory."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: not an opener
        return False
    try:
        signature.bind()
    except TypeError:
        return False
    return True
