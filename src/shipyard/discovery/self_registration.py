"""``SelfRegistration``: a service puts itself in the registry on start-up, proves it is
alive while running, and takes itself out on graceful shutdown.

Liveness depends on what the backend offers, discovered once at start:

* TTL heartbeats (Consul, the embedded registry): the check is marked passing every
  ``ttl/3`` seconds, so two missed beats still leave it passing;
* a live connection (the embedded registry): the instance leaves rotation within a second
  of the process dying, without waiting for the TTL; against real Consul this quietly
  falls back to TTL only;
* leases (etcd): the backend keeps its own lease alive every ``ttl/3`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol, runtime_checkable

from shipyard.core import cancel_and_wait, validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.logging import get_logger
from shipyard.discovery.backend import RegistryBackend, backend_from_url
from shipyard.discovery.client import Discovery
from shipyard.discovery.errors import DiscoveryUnavailable
from shipyard.discovery.model import Registration

_log = get_logger("shipyard.discovery.self_registration")


@runtime_checkable
class Heartbeats(Protocol):
    """A backend whose TTL checks are kept passing by the instance itself."""

    async def heartbeat(self, instance_id: str) -> None:
        """Mark the instance's TTL check passing."""


@runtime_checkable
class LiveConnections(Protocol):
    """A backend that can tie an instance's health to an open connection."""

    async def hold_attachment(
        self,
        instance_id: str,
        *,
        ready: asyncio.Event | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        """Keep the connection open (reconnecting) until cancelled; set ``ready`` once up."""


class SelfRegistration:
    """Register ``registration`` while the ``async with`` block (or start/stop) runs.

    With ``handle_signals=True``, SIGTERM and SIGINT deregister the instance and set
    ``shutdown_requested`` — await ``shutdown_requested.wait()`` in ``main`` and exit.
    Where the registry offers live connections, ``start`` waits up to ``attach_timeout``
    seconds for it to confirm one; ``attach=False`` opens none.
    """

    def __init__(
        self,
        registry: RegistryBackend | Discovery | str,
        registration: Registration,
        *,
        attach: bool = True,
        handle_signals: bool = False,
        attach_timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(registry, Discovery):
            registry = registry.backend
        self._owns_backend = isinstance(registry, str)
        self.backend: RegistryBackend = (
            backend_from_url(registry) if isinstance(registry, str) else registry
        )
        self.registration = registration
        self._attach = attach
        self._attach_timeout = validation.positive("attach_timeout", attach_timeout)
        self._handle_signals = handle_signals
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._signals: list[signal.Signals] = []
        self._stopping: asyncio.Task[None] | None = None
        self.shutdown_requested = asyncio.Event()
        """Set when SIGTERM/SIGINT arrived (only with ``handle_signals=True``)."""
        self.registered = False

    async def start(self) -> None:
        """Register, then start heartbeats / the live connection as the backend allows."""
        await self.backend.register(self.registration)
        self.registered = True
        loop = asyncio.get_running_loop()
        instance_id = self.registration.id
        if self.registration.ttl is not None and isinstance(self.backend, Heartbeats):
            await self.backend.heartbeat(instance_id)
            self._tasks.append(loop.create_task(self._beat(self.backend, self.registration.ttl)))
        if self._attach and isinstance(self.backend, LiveConnections):
            ready = asyncio.Event()
            holder = loop.create_task(self.backend.hold_attachment(instance_id, ready=ready))
            self._tasks.append(holder)
            # Entering the block means "a killed process leaves rotation at once", so wait
            # (bounded) for the registry to confirm the live connection.
            confirmed = loop.create_task(ready.wait())
            await asyncio.wait(
                (holder, confirmed),
                timeout=self._attach_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            confirmed.cancel()
            if not ready.is_set():
                _log.warning(
                    "live connection not confirmed; relying on the TTL check for now",
                    instance_id=instance_id,
                )
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
                self._signals.append(sig)
        _log.info("registered", service=self.registration.name, instance_id=instance_id)

    async def stop(self) -> None:
        """Stop heartbeats, close the live connection and deregister (idempotent)."""
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        if self.registered:
            try:
                await self.backend.deregister(self.registration.id)
                _log.info("deregistered", instance_id=self.registration.id)
            except DiscoveryUnavailable as exc:
                # The registry's own check expiry will remove us; shutting down wins.
                _log.warning(
                    "could not deregister", instance_id=self.registration.id, error=str(exc)
                )
            finally:
                self.registered = False
        if self._owns_backend:
            await self.backend.close()

    async def __aenter__(self) -> SelfRegistration:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _beat(self, backend: Heartbeats, ttl: float) -> None:
        failing = False
        while True:
            await self._clock.sleep(ttl / 3)
            try:
                await backend.heartbeat(self.registration.id)
                failing = False
            except DiscoveryUnavailable as exc:
                if not failing:
                    _log.warning(
                        "heartbeat failed", instance_id=self.registration.id, error=str(exc)
                    )
                failing = True
                # After a registry restart the instance is unknown: register again.
                with contextlib.suppress(DiscoveryUnavailable):
                    await self.backend.register(self.registration)
                    await backend.heartbeat(self.registration.id)

    def _on_signal(self) -> None:
        self.shutdown_requested.set()
        self._stopping = asyncio.get_running_loop().create_task(self.stop())
