"""Every breaker a shop service's clients hold, on its ``/metrics`` for the dashboard."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from shipyard.client import ServiceClient
from shipyard.core import BackgroundRunner
from shipyard.service import Service


class BreakerExport(BackgroundRunner):
    """Exports the breakers of a runtime's clients on the service's ``/metrics`` as they
    appear: a client's service breaker once the client exists, an instance's breaker once
    that instance has been called (clients create them on first use)."""

    task_name = "shop-breaker-export"

    def __init__(
        self, clients: Mapping[str, ServiceClient], service: Service, every: float = 1.0
    ) -> None:
        self._clients = clients
        self._service = service
        self._every = every
        self._exported: set[int] = set()

    def sweep(self) -> None:
        """Export the breakers not exported yet."""
        for client in list(self._clients.values()):
            breakers = list(client.instance_breakers.values())
            if client.service_breaker is not None:
                breakers.append(client.service_breaker)
            for breaker in breakers:
                if id(breaker) not in self._exported:
                    self._exported.add(id(breaker))
                    self._service.watch(breaker)

    async def run(self) -> None:
        while True:
            self.sweep()
            await asyncio.sleep(self._every)
