"""``Discovery``: the client services use to find each other.

Lookups are answered from a local cache; one background task per service (started on the
first lookup) follows the registry's ``watch`` and swaps in each new list. So the warm path
is one dict lookup with no I/O, and a registry outage does not take callers down: the last
known instances keep being served (stale-while-error) while the watch reconnects with
backoff, and one warning is logged per outage.
"""

from __future__ import annotations

import asyncio

from shipyard.core import cancel_and_wait, validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock, TimerHandle
from shipyard.core.logging import get_logger
from shipyard.discovery.backend import RegistryBackend, backend_from_url
from shipyard.discovery.errors import ServiceNotFound
from shipyard.discovery.model import Instance, Registration

_log = get_logger("shipyard.discovery")


class _Entry:
    """The cached instances of one service and the task keeping them fresh."""

    __slots__ = ("instances", "outage", "task", "used")

    def __init__(self, instances: tuple[Instance, ...]) -> None:
        self.instances = instances
        self.used = True
        self.outage = False
        self.task: asyncio.Task[None] | None = None


class Discovery:
    """Finds healthy instances of a service, through a cache the registry keeps fresh.

    ``backend`` is a URL (``consul://127.0.0.1:8500``, ``etcd://…``, ``k8s-dns://shop``,
    ``static://…``, ``memory://``; see ``backend_from_url``) or a ``RegistryBackend``.
    A service nobody has looked up for ``cache_ttl`` seconds stops being watched (the next
    lookup reads the registry again). After a registry error the watch retries after
    ``retry_delay`` seconds, doubling up to ``max_retry_delay``.
    """

    def __init__(
        self,
        backend: str | RegistryBackend,
        *,
        clock: Clock = SYSTEM_CLOCK,
        cache_ttl: float = 300.0,
        retry_delay: float = 0.5,
        max_retry_delay: float = 10.0,
    ) -> None:
        self.backend = backend_from_url(backend) if isinstance(backend, str) else backend
        self._clock = clock
        self.cache_ttl = validation.positive("cache_ttl", cache_ttl)
        self.retry_delay = validation.positive("retry_delay", retry_delay)
        self.max_retry_delay = max(
            validation.positive("max_retry_delay", max_retry_delay), self.retry_delay
        )
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Future[tuple[Instance, ...]]] = {}
        self._sweeper: TimerHandle | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """The registry's URL."""
        return self.backend.url

    async def instances(self, service: str) -> tuple[Instance, ...]:
        """The passing instances of ``service`` (possibly none while all are failing checks).

        Raises ``ServiceNotFound`` if the registry has never had an instance of ``service``
        and ``DiscoveryUnavailable`` if it cannot be reached and nothing is cached.
        """
        entry = self._entries.get(service)
        if entry is not None:
            entry.used = True
            return entry.instances
        return await self._first_lookup(service)

    def instances_nowait(self, service: str) -> tuple[Instance, ...] | None:
        """``instances`` answered from the cache without a coroutine, for hot paths: a
        lookup like any other (the service stays watched), or ``None`` when ``service`` is
        not cached yet (then ``await instances(service)``)."""
        entry = self._entries.get(service)
        if entry is None:
            return None
        entry.used = True
        return entry.instances

    def cached(self, service: str) -> tuple[Instance, ...] | None:
        """The cached instances of ``service`` without touching the registry (None if unknown)."""
        entry = self._entries.get(service)
        return None if entry is None else entry.instances

    async def register(self, registration: Registration) -> None:
        """Register an instance with the registry (see also ``SelfRegistration``)."""
        await self.backend.register(registration)

    async def deregister(self, instance_id: str) -> None:
        """Remove an instance from the registry."""
        await self.backend.deregister(instance_id)

    async def aclose(self) -> None:
        """Stop every watch and close the backend."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        self._entries.clear()
        await cancel_and_wait(*tasks)
        await self.backend.close()

    async def __aenter__(self) -> Discovery:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _first_lookup(self, service: str) -> tuple[Instance, ...]:
        # Concurrent first lookups of one service share a single registry round trip.
        pending = self._pending.get(service)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[Instance, ...]] = asyncio.get_running_loop().create_future()
        self._pending[service] = future
        try:
            found = tuple(await self.backend.instances(service, passing_only=True))
            if not found and not await self.backend.instances(service, passing_only=False):
                raise ServiceNotFound(service, self.backend.url)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed here; waiters re-raise it
            raise
        finally:
            del self._pending[service]
        if self._closed:
            future.set_result(found)
            return found
        entry = self._entries[service] = _Entry(found)
        entry.task = asyncio.get_running_loop().create_task(
            self._follow(service, entry), name=f"discovery-watch:{service}"
        )
        self._schedule_sweep()
        future.set_result(found)
        return found

    async def _follow(self, service: str, entry: _Entry) -> None:
        """Keep ``entry`` equal to the registry's view of ``service``, across outages."""
        delay = self.retry_delay
        while True:
            try:
                async for current in self.backend.watch(service):
                    entry.instances = tuple(current)
                    if entry.outage:
                        entry.outage = False
                        _log.info(
                            "service registry reachable again",
                            service=service,
                            registry=self.backend.url,
                            instances=len(current),
                        )
                    delay = self.retry_delay
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not entry.outage:
                    entry.outage = True
                    _log.warning(
                        "service registry unreachable; serving last known instances",
                        service=service,
                        registry=self.backend.url,
                        instances=len(entry.instances),
                        error=str(exc),
                    )
            await self._clock.sleep(delay)
            delay = min(delay * 2, self.max_retry_delay)

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = self._clock.call_later(self.cache_ttl, self._sweep)

    def _sweep(self) -> None:
        """Stop watching services nobody looked up since the previous sweep."""
        self._sweeper = None
        for service, entry in list(self._entries.items()):
            if entry.used:
                entry.used = False
            else:
                del self._entries[service]
                if entry.task is not None:
                    entry.task.cancel()
        if self._entries:
            self._schedule_sweep()
