"""HTTP handlers: the subset of Consul's agent, health, catalog and status API, plus attach.

Responses use Consul's JSON shapes and status codes: a bad body or parameter is a 400
with a plain-text reason naming the field, an unknown service or check a 404. Every
read carries ``X-Consul-Index``, ``X-Consul-KnownLeader`` and ``X-Consul-LastContact``;
the health and catalog reads are blocking queries (``?index=N&wait=30s``).

Live connections (a Shipyard extension, like ZooKeeper's ephemeral nodes)
--------------------------------------------------------------------------
``GET /v1/shipyard/attach/{service_id}`` upgrades to a WebSocket:

1. ``service_id`` must already be registered, else the answer is ``404`` (no upgrade).
   Optional query ``deregister=<duration>`` (e.g. ``30s``): deregister the instance
   once the connection has stayed closed that long.
2. On upgrade, the instance gains (or re-uses) the check ``attach:<service_id>``, Name
   ``"Shipyard live connection"``, Type ``"attach"``, status ``passing``; the index is
   bumped and blocking queries wake. The server then sends one text frame,
   ``{"CheckID": "attach:<service_id>", "Status": "passing", "Index": <n>}``, so the
   client knows it is attached.
3. The server pings every 0.5 s (WebSocket heartbeat); a peer that misses a pong is
   treated as gone, so half-open connections are noticed within about a second.
   Messages from the client are ignored; clients need not send any.
4. When the socket closes for any reason (client close, process killed and its TCP
   connection reset by the kernel, heartbeat timeout, registry shutdown) the check
   turns ``critical`` at once and blocking queries wake. Several connections for one
   instance count: the check turns critical when the last one closes.
5. Re-registering the instance keeps the attach check; deregistering removes it. After a
   registry restart the check comes back ``critical`` until the client attaches again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from shipyard.core import get_logger
from shipyard.discovery.registry.catalog import (
    Catalog,
    CheckState,
    Instance,
    Status,
    UnknownCheckError,
    UnknownServiceError,
)
from shipyard.discovery.registry.wire import (
    WireError,
    decode_json,
    format_duration,
    parse_check_update,
    parse_duration,
    parse_flag,
    parse_index,
    parse_registration,
    parse_wait,
)

_log = get_logger("shipyard.discovery.registry")

NODE_NAME = "shipyard"
DATACENTER = "dc1"
ATTACH_HEARTBEAT = 0.5
"""Seconds between WebSocket pings on an attach connection."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Consul answers client mistakes with plain text; never let them surface as 500s.
    try:
        return await handler(request)
    except WireError as error:
        return web.Response(status=400, text=f"Request decode failed: {error}")
    except (UnknownServiceError, UnknownCheckError) as error:
        return web.Response(status=404, text=str(error))


_HEALTH_CACHE_ENTRIES = 4096
_encode = msgspec.json.Encoder().encode


class RegistryApi:
    """The route table over one :class:`Catalog`."""

    def __init__(self, catalog: Catalog, *, address: Callable[[], str]) -> None:
        self._catalog = catalog
        self._address = address
        self._sockets: set[web.WebSocketResponse] = set()
        # Encoded health answers by (name, passing, tags). Every change to a service bumps
        # its name index, so an entry stays valid until that index moves: the many
        # watchers woken by one change share one encoding.
        self._health_cache: dict[tuple[str, bool, tuple[str, ...]], tuple[int, bytes]] = {}

    def build_app(self) -> web.Application:
        """An aiohttp application serving the registry API."""
        app = web.Application(middlewares=[_errors])
        app.add_routes(
            [
                web.put("/v1/agent/service/register", self.register),
                web.put("/v1/agent/service/deregister/{service_id}", self.deregister),
                web.get("/v1/agent/services", self.agent_services),
                web.get("/v1/agent/service/{service_id}", self.agent_service),
                web.get("/v1/agent/checks", self.agent_checks),
                web.put("/v1/agent/check/pass/{check_id}", self.check_pass),
                web.put("/v1/agent/check/warn/{check_id}", self.check_warn),
                web.put("/v1/agent/check/fail/{check_id}", self.check_fail),
                web.put("/v1/agent/check/update/{check_id}", self.check_update),
                web.get("/v1/health/service/{name}", self.health_service),
                web.get("/v1/catalog/services", self.catalog_services),
                web.get("/v1/catalog/service/{name}", self.catalog_service),
                web.get("/v1/status/leader", self.status_leader),
                web.get("/v1/shipyard/attach/{service_id}", self.attach),
            ]
        )
        return app

    async def close_sockets(self) -> None:
        """Close every attach connection (on shutdown)."""
        for socket in list(self._sockets):
            await socket.close(code=1001, message=b"registry shutting down")

    # --- agent: writes -------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        """``PUT /v1/agent/service/register``."""
        service = parse_registration(decode_json(await request.read()))
        self._catalog.register(service)
        _log.info("registered", service_id=service.service_id, name=service.name)
        return web.Response()

    async def deregister(self, request: web.Request) -> web.Response:
        """``PUT /v1/agent/service/deregister/{service_id}``."""
        service_id = request.match_info["service_id"]
        self._catalog.deregister(service_id)
        _log.info("deregistered", service_id=service_id)
        return web.Response()

    async def check_pass(self, request: web.Request) -> web.Response:
        """``PUT /v1/agent/check/pass/{check_id}``."""
        return self._set_check(request, Status.PASSING)

    async def check_warn(self, request: web.Request) -> web.Response:
        """``PUT /v1/agent/check/warn/{check_id}``."""
        return self._set_check(request, Status.WARNING)

    async def check_fail(self, request: web.Request) -> web.Response:
        """``PUT /v1/agent/check/fail/{check_id}``."""
        return self._set_check(request, Status.CRITICAL)

    def _set_check(self, request: web.Request, status: Status) -> web.Response:
        check_id = request.match_info["check_id"]
        self._catalog.set_check_status(check_id, status, request.query.get("note", ""))
        return web.Response()

    async def check_update(self, request: web.Request) -> web.Response:
        """``PUT /v1/agent/check/update/{check_id}`` with ``{"Status", "Output"}``."""
        check_id = request.match_info["check_id"]
        self._catalog.check(check_id)  # 404 before judging the body
        status, output = parse_check_update(decode_json(await request.read()))
        self._catalog.set_check_status(check_id, status, output)
        return web.Response()

    # --- agent: reads --------------------------------------------------------------------

    async def agent_services(self, request: web.Request) -> web.Response:
        """``GET /v1/agent/services``: every instance by id."""
        body = {i.service.service_id: self._agent_service(i) for i in self._catalog.instances()}
        return self._json(body, self._catalog.index)

    async def agent_service(self, request: web.Request) -> web.Response:
        """``GET /v1/agent/service/{service_id}``."""
        instance = self._catalog.instance(request.match_info["service_id"])
        return self._json(self._agent_service(instance), instance.modify_index)

    async def agent_checks(self, request: web.Request) -> web.Response:
        """``GET /v1/agent/checks``: every check by id."""
        body = {c.definition.check_id: self._check(c) for c in self._catalog.checks()}
        return self._json(body, self._catalog.index)

    # --- health and catalog (blocking queries) -------------------------------------------

    async def health_service(self, request: web.Request) -> web.Response:
        """``GET /v1/health/service/{name}`` (``passing``, ``tag`` filters)."""
        name = request.match_info["name"]
        index = await self._block(request, name)
        passing = parse_flag(request.query.get("passing"))
        tags = tuple(request.query.getall("tag", []))
        key = (name, passing, tags)
        cached = self._health_cache.get(key)
        if cached is None or cached[0] != index:
            body = [
                {
                    "Node": self._node(),
                    "Service": self._agent_service(instance),
                    "Checks": [self._check(c) for c in instance.checks.values()],
                }
                for instance in self._catalog.instances_of(name)
                if all(t in instance.service.tags for t in tags)
                and (not passing or instance.status is Status.PASSING)
            ]
            if len(self._health_cache) >= _HEALTH_CACHE_ENTRIES:
                self._health_cache.clear()
            cached = self._health_cache[key] = (index, _encode(body))
        return self._encoded(cached[1], index)

    async def catalog_services(self, request: web.Request) -> web.Response:
        """``GET /v1/catalog/services``: service names with their tags."""
        index = await self._block(request, None)
        return self._json(self._catalog.service_tags(), index)

    async def catalog_service(self, request: web.Request) -> web.Response:
        """``GET /v1/catalog/service/{name}`` (``tag`` filter)."""
        name = request.match_info["name"]
        index = await self._block(request, name)
        tags = request.query.getall("tag", [])
        node = self._node()
        body = [
            {
                "ID": node["ID"],
                "Node": node["Node"],
                "Address": node["Address"],
                "Datacenter": DATACENTER,
                "TaggedAddresses": node["TaggedAddresses"],
                "NodeMeta": node["Meta"],
                "ServiceKind": "",
                "ServiceID": i.service.service_id,
                "ServiceName": i.service.name,
                "ServiceTags": list(i.service.tags),
                "ServiceAddress": i.service.address,
                "ServicePort": i.service.port,
                "ServiceMeta": dict(i.service.meta),
                "ServiceWeights": {"Passing": 1, "Warning": 1},
                "ServiceEnableTagOverride": False,
                "CreateIndex": i.create_index,
                "ModifyIndex": i.modify_index,
            }
            for i in self._catalog.instances_of(name)
            if all(t in i.service.tags for t in tags)
        ]
        return self._json(body, index)

    async def status_leader(self, request: web.Request) -> web.Response:
        """``GET /v1/status/leader``: this registry is its own leader."""
        return self._json(self._address(), self._catalog.index)

    async def _block(self, request: web.Request, name: str | None) -> int:
        seen = parse_index(request.query.get("index"))
        wait = parse_wait(request.query.get("wait"))
        if seen is not None:
            await self._catalog.wait_for_change(seen, wait, name)
        return self._catalog.index if name is None else self._catalog.name_index(name)

    # --- live connections ----------------------------------------------------------------

    async def attach(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/shipyard/attach/{service_id}``: see the module docstring."""
        service_id = request.match_info["service_id"]
        self._catalog.instance(service_id)  # 404 before upgrading
        raw = request.query.get("deregister")
        deregister_after = parse_duration("deregister", raw) if raw else None
        socket = web.WebSocketResponse(heartbeat=ATTACH_HEARTBEAT)
        await socket.prepare(request)
        self._sockets.add(socket)
        attached = False
        try:
            # The instance may have been deregistered while the upgrade was in flight.
            if service_id in self._catalog:
                check_id = self._catalog.attach(service_id, deregister_after)
                attached = True
                _log.info("attached", service_id=service_id)
                await socket.send_str(
                    json.dumps(
                        {"CheckID": check_id, "Status": "passing", "Index": self._catalog.index}
                    )
                )
                async for message in socket:
                    if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                        break
            else:
                await socket.close(code=4404, message=b"unknown service id")
        except ConnectionError:
            # A vanished peer is the normal way an attach ends; detach below.
            pass
        finally:
            self._sockets.discard(socket)
            if attached:
                self._catalog.detach(service_id)
                _log.info("detached", service_id=service_id)
        return socket

    # --- JSON shapes ---------------------------------------------------------------------

    def _json(self, body: Any, index: int) -> web.Response:
        return self._encoded(_encode(body), index)

    @staticmethod
    def _encoded(body: bytes, index: int) -> web.Response:
        return web.Response(
            body=body,
            content_type="application/json",
            headers={
                "X-Consul-Index": str(index),
                "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0",
            },
        )

    def _node(self) -> dict[str, Any]:
        host = self._address().rpartition(":")[0]
        return {
            "ID": "00000000-0000-0000-0000-000000000001",
            "Node": NODE_NAME,
            "Address": host,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": host, "wan": host},
            "Meta": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    @staticmethod
    def _agent_service(instance: Instance) -> dict[str, Any]:
        service = instance.service
        return {
            "ID": service.service_id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Address": service.address,
            "Port": service.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Datacenter": DATACENTER,
            "CreateIndex": instance.create_index,
            "ModifyIndex": instance.modify_index,
        }

    def _check(self, check: CheckState) -> dict[str, Any]:
        definition = check.definition
        owner = self._owner(check)
        spec: dict[str, Any] = {}
        if definition.kind.value == "http":
            spec = {"HTTP": definition.target, "Method": definition.method}
        elif definition.kind.value == "tcp":
            spec = {"TCP": definition.target}
        if definition.interval:
            spec["Interval"] = format_duration(definition.interval)
            spec["Timeout"] = format_duration(definition.timeout)
        if definition.ttl:
            spec["TTL"] = format_duration(definition.ttl)
        if definition.deregister_after is not None:
            spec["DeregisterCriticalServiceAfter"] = format_duration(definition.deregister_after)
        return {
            "Node": NODE_NAME,
            "CheckID": definition.check_id,
            "Name": definition.name,
            "Status": check.status.value,
            "Notes": definition.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": owner.service.name if owner else "",
            "ServiceTags": list(owner.service.tags) if owner else [],
            "Type": definition.kind.value,
            "Interval": spec.get("Interval", ""),
            "Timeout": spec.get("Timeout", ""),
            "Definition": spec,
            "CreateIndex": check.create_index,
            "ModifyIndex": check.modify_index,
        }

    def _owner(self, check: CheckState) -> Instance | None:
        try:
            return self._catalog.instance(check.service_id)
        except UnknownServiceError:
            return None
