"""An in-process registry: fixed addresses from config (``static://``) or an empty,
writable one for tests and single-process setups (``memory://``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from urllib.parse import unquote

from shipyard.core.errors import ConfigError
from shipyard.discovery.model import PASSING, Instance, Registration, Status, parse_host_port


class StaticBackend:
    """Instances held in memory; ``register``/``deregister`` and ``set_status`` change them
    and wake every ``watch``.

    ``StaticBackend({"user-service": ["127.0.0.1:8001", "127.0.0.1:8002"]})`` or
    ``static://user-service=127.0.0.1:8001,127.0.0.1:8002;orders=127.0.0.1:9001``.
    Instance ids of configured addresses are ``"<service>-<host>:<port>"``.
    """

    def __init__(
        self, services: Mapping[str, Sequence[str]] | None = None, *, url: str = "memory://"
    ) -> None:
        self._url = url
        self._instances: dict[str, Instance] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._version = 0
        for service, addresses in (services or {}).items():
            for address in addresses:
                host, port = parse_host_port(address, field_name=f"services[{service!r}]")
                instance_id = f"{service}-{host}:{port}"
                self._instances[instance_id] = Instance(instance_id, service, host, port)

    @classmethod
    def from_url(cls, url: str) -> StaticBackend:
        """Parse ``static://name=host:port,host:port;name2=…`` (``memory://`` is empty)."""
        scheme, _, rest = url.partition("://")
        body = unquote(rest).strip("/")
        if scheme == "memory" or not body:
            return cls(url=url)
        services: dict[str, list[str]] = {}
        for part in body.split(";"):
            name, sep, addresses = part.partition("=")
            if not sep or not name.strip():
                raise ConfigError("url", url, "must look like static://name=host:port,host:port")
            services[name.strip()] = [a for a in addresses.split(",") if a.strip()]
        return cls(services, url=url)

    @property
    def url(self) -> str:
        """The URL this backend was built from."""
        return self._url

    async def register(self, registration: Registration) -> None:
        """Add or replace the instance (passing until ``set_status`` says otherwise)."""
        self._instances[registration.id] = registration.instance()
        self._notify()

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance; unknown ids are ignored."""
        if self._instances.pop(instance_id, None) is not None:
            self._notify()

    def set_status(self, instance_id: str, status: Status) -> None:
        """Change an instance's health, as a registry's check would (for tests and demos)."""
        instance = self._instances[instance_id]
        if instance.status != status:
            self._instances[instance_id] = replace(instance, status=status)
            self._notify()

    async def instances(self, service: str, *, passing_only: bool = True) -> list[Instance]:
        """Instances of ``service``, sorted by id."""
        return self._list(service, passing_only)

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the passing instances now and whenever they change."""
        last = self._list(service, True)
        seen = self._version
        yield last
        while True:
            # A change made while the caller held the previous list shows up in _version,
            # so nothing is missed between yields.
            if seen == self._version:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
            seen = self._version
            current = self._list(service, True)
            if current != last:
                last = current
                yield current

    async def close(self) -> None:
        """Nothing to release."""

    def _list(self, service: str, passing_only: bool) -> list[Instance]:
        found = [
            i
            for i in self._instances.values()
            if i.service == service and (not passing_only or i.status == PASSING)
        ]
        found.sort(key=lambda i: i.id)
        return found

    def _notify(self) -> None:
        self._version += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
