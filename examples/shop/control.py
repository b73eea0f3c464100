"""The supervisor's controls, for the dashboard's chaos buttons: :class:`SupervisorControl`
(the dashboard's ``ProcessControl`` port over a :class:`Supervisor`) and an HTTP API.

    GET  /instances                   every instance: service, port, pid, running, restarts
    POST /instances/{id}/kill         SIGKILL the instance (it stays down)
    POST /instances/{id}/restart      start it again; answers once it is ready

Every request needs ``Authorization: Bearer <token>`` (the shop's chaos token): killing
processes is not something to leave open on a port.
"""

from __future__ import annotations

import hmac

from examples.shop.supervisor import Instance, Supervisor, SupervisorError
from examples.shop.web import JSON, error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from shipyard.dashboard import ManagedProcess, UnknownInstanceError


class SupervisorControl:
    """The dashboard's ``ProcessControl`` over the shop's supervisor. Instances are named
    by their registry id (``inventory-127.0.0.1:8603``, what the dashboard shows); the
    supervisor's own ids (``inventory-2``) are accepted too."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def _registry_id(self, instance: Instance) -> str:
        return f"{instance.service}-{self.supervisor.host}:{instance.port}"

    def _find(self, instance_id: str) -> Instance:
        for instance in self.supervisor.instances():
            if instance_id in (instance.id, self._registry_id(instance)):
                return instance
        known = [self._registry_id(i) for i in self.supervisor.instances()]
        raise UnknownInstanceError(instance_id, known)

    async def instances(self) -> list[ManagedProcess]:
        """Every instance the supervisor runs, the gateway included."""
        return [
            ManagedProcess(self._registry_id(i), i.service, i.running, i.pid)
            for i in self.supervisor.instances()
        ]

    async def kill(self, instance_id: str) -> None:
        """SIGKILL the instance."""
        await self.supervisor.kill(self._find(instance_id).id)

    async def restart(self, instance_id: str) -> None:
        """Start the instance again and wait until it is ready."""
        await self.supervisor.restart(self._find(instance_id).id)


def control_app(supervisor: Supervisor, token: str) -> Starlette:
    """The control API over ``supervisor``, guarded by ``token``."""
    expected = f"Bearer {token}".encode()

    def allowed(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def instances(request: Request) -> JSON:
        if not allowed(request):
            return error(401, "send Authorization: Bearer <chaos token>")
        return JSON(supervisor.describe())

    async def act(request: Request) -> JSON:
        if not allowed(request):
            return error(401, "send Authorization: Bearer <chaos token>")
        instance_id = request.path_params["instance_id"]
        action = request.path_params["action"]
        try:
            if action == "kill":
                await supervisor.kill(instance_id)
            elif action == "restart":
                await supervisor.restart(instance_id)
            else:
                return error(404, "actions: kill, restart")
        except SupervisorError as exc:
            return error(404 if "no instance" in str(exc) else 500, str(exc))
        return JSON(supervisor.instance(instance_id).describe())

    return Starlette(
        routes=[
            Route("/instances", instances, methods=["GET"]),
            Route("/instances/{instance_id}/{action}", act, methods=["POST"]),
        ]
    )
