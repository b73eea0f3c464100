"""Serving a :class:`Service` with uvicorn (uvloop + httptools), SIGTERM wired to the
graceful shutdown.

On SIGTERM/SIGINT readiness fails at once; after ``drain_delay`` seconds (time for load
balancers and discovery caches to notice) uvicorn stops accepting, lets in-flight
requests finish (up to the service's ``drain_timeout``) and sends the lifespan shutdown,
where the service deregisters and closes its resources.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn

from shipyard.core import ConfigError
from shipyard.service.service import Service

_TARGET_ENV = "SHIPYARD_SERVICE_TARGET"
_HOST_ENV = "SHIPYARD_SERVICE_HOST"
_PORT_ENV = "SHIPYARD_SERVICE_PORT"


def load_service(target: str) -> Service:
    """Import ``"module:attribute"`` (the attribute may be dotted) and return the
    ``Service`` it names; the current directory is importable, as with uvicorn."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError("target", target, "must look like module:attribute, e.g. app:service")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("target", target, f"cannot import module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(
                "target", target, f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(found, Service):
        raise ConfigError(
            "target", target, f"must name a shipyard.service.Service, not {type(found).__name__}"
        )
    return found


def uvicorn_config(service: Service, host: str, port: int, **options: object) -> uvicorn.Config:
    """The uvicorn settings a service runs with (``options`` override them)."""
    settings: dict[str, object] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        # The service writes its own request log line; uvicorn's would be a second one.
        "access_log": False,
        "timeout_graceful_shutdown": math.ceil(service.drain_timeout),
        **options,
    }
    return uvicorn.Config(service, **settings)  # type: ignore[arg-type]


class ServiceServer(uvicorn.Server):
    """A uvicorn server that fails the service's readiness the moment it is told to stop,
    and keeps accepting for ``drain_delay`` more seconds before it stops."""

    def __init__(self, service: Service, config: uvicorn.Config, *, drain_delay: float = 0.0):
        super().__init__(config)
        self.service = service
        self.drain_delay = drain_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delaying = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until told to exit."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM/SIGINT: drain (readiness 503), then stop after ``drain_delay``;
        a second one stops at once, as uvicorn does."""
        self.service.begin_draining()
        loop = self._loop
        if self.drain_delay > 0 and not self._delaying and loop is not None:
            self._delaying = True
            exit_later = super().handle_exit
            loop.call_soon_threadsafe(loop.call_later, self.drain_delay, exit_later, sig, frame)
            return
        super().handle_exit(sig, frame)


def run(
    target: str | Service,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    drain_delay: float = 0.0,
) -> None:
    """Serve a service until SIGTERM/SIGINT. ``workers > 1`` needs ``target`` as an
    import string: each worker process imports it and shares the port."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers", workers, "must be an integer >= 1")
    if workers > 1:
        if not isinstance(target, str):
            raise ConfigError("target", target, "must be module:attribute when workers > 1")
        load_service(target)  # fail here, once, rather than in every worker
        os.environ[_TARGET_ENV] = target
        os.environ[_HOST_ENV] = host
        os.environ[_PORT_ENV] = str(port or 8000)
        uvicorn.run(
            f"{__name__}:service_from_environment",
            factory=True,
            host=host,
            port=port or 8000,
            workers=workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
        )
        return
    service = load_service(target) if isinstance(target, str) else target
    port = port or service.port or 8000
    service.set_endpoint(_registered_address(host), port)
    server = ServiceServer(service, uvicorn_config(service, host, port), drain_delay=drain_delay)
    # uvicorn re-raises the signal that stopped it once it has restored the previous
    # handler; SIGTERM has been fully handled by then (drained, deregistered, closed), so
    # that previous handler is a no-op and the process exits 0 instead of dying by signal.
    previous = signal.signal(signal.SIGTERM, _handled)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _handled(signum: int, frame: FrameType | None) -> None:
    """The signal was already acted on."""


def service_from_environment() -> Service:
    """The worker-side factory of ``run(workers > 1)``: the service named in the
    environment, with its endpoint set."""
    service = load_service(os.environ[_TARGET_ENV])
    service.set_endpoint(_registered_address(os.environ[_HOST_ENV]), int(os.environ[_PORT_ENV]))
    return service


def _registered_address(host: str) -> str | None:
    # 0.0.0.0 / :: mean "every interface", which is no address to give other services:
    # keep the service's configured address then.
    return None if host in ("0.0.0.0", "::", "") else host
