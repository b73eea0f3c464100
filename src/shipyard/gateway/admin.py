"""The admin API: a separate listener, bearer-token protected, for operators and scrapers.

    GET  /frontends                      frontends, their listeners and routes
    GET  /routes                         every route: match, target, filters
    GET  /upstreams                      services: instances, breaker state, retry budget
    GET  /breakers                       breaker state per service
    GET  /strangler                      strangler routes: weight and traffic split
    PUT  /strangler/{frontend}/{route}   body {"weight": 25}: move traffic at run time
    POST /reload                         re-read the config file (400 and the error if bad)
    GET  /health                         liveness, without the token
    GET  /metrics                        Prometheus text format

Served by the same HTTP server as the frontends; the token check is a filter on its one
route. Without a configured token the admin API is not started at all.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from shipyard.core.errors import ConfigError
from shipyard.core.logging import get_logger
from shipyard.gateway.config import RouteConfig
from shipyard.gateway.filters import Chain, Exchange, Filter, Header, Reply, local_reply
from shipyard.gateway.metrics import exposition
from shipyard.gateway.routing import Router
from shipyard.gateway.runtime import Runtime
from shipyard.gateway.server import Frontend

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_log = get_logger("shipyard.gateway.admin")
_JSON: Header = (b"content-type", b"application/json")
_PROMETHEUS: Header = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")


class BearerToken(Filter):
    """401 unless ``Authorization: Bearer <token>`` matches (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self._expected = b"Bearer " + token.encode()

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """Check the token."""
        given = exchange.header_map.get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            return None
        return local_reply(
            401,
            "the admin API needs Authorization: Bearer <admin token>",
            [(b"www-authenticate", b'Bearer realm="shipyard-admin"')],
        )


class AdminApi:
    """Answers admin requests from the gateway's current runtime."""

    def __init__(
        self,
        token: str,
        runtime: Callable[[], Runtime],
        reload: Callable[[], Awaitable[str | None]],
        registry: CollectorRegistry,
        addresses: Callable[[], dict[str, tuple[str, int]]],
    ) -> None:
        self._token = token
        self._runtime = runtime
        self._reload = reload
        self._registry = registry
        self._addresses = addresses
        self._encode = msgspec.json.Encoder().encode

    def frontend(self) -> Frontend:
        """The admin frontend: ``GET /health`` open (for registry checks and supervisors,
        it reveals nothing), every other path behind the bearer-token filter."""
        health = RouteConfig(name="health", kind="exact", pattern="/health", service="")
        route = RouteConfig(name="admin", kind="prefix", pattern="/", service="")
        chain = Chain([BearerToken(self._token)], self.handle)
        return Frontend(
            "admin",
            "",
            Router([(health, ("health", Chain([], self.health))), (route, ("admin", chain))]),
        )

    async def health(self, ex: Exchange) -> Reply:
        """``GET /health``: the gateway process is up and serving."""
        return self._json({"status": "pass"})

    def _json(self, value: Any, status: int = 200) -> Reply:
        return Reply(status, [_JSON], self._encode(value))

    async def handle(self, ex: Exchange) -> Reply:
        """Dispatch on method and path."""
        method, path = ex.method, ex.path.rstrip(b"/") or b"/"
        runtime = self._runtime()
        if method == b"GET":
            if path == b"/metrics":
                return Reply(200, [_PROMETHEUS], exposition(self._registry))
            if path == b"/upstreams":
                return self._json(await self._upstreams(runtime))
            view = {
                b"/frontends": self._frontends,
                b"/routes": self._routes,
                b"/breakers": self._breakers,
                b"/strangler": self._stranglers,
            }.get(path)
            if view is not None:
                return self._json(view(runtime))
        elif method == b"PUT" and path.startswith(b"/strangler/"):
            return self._set_weight(runtime, ex)
        elif method == b"POST" and path == b"/reload":
            error = await self._reload()
            if error is not None:
                return self._json({"reloaded": False, "error": error}, 400)
            return self._json({"reloaded": True})
        return local_reply(404, "no such admin endpoint; see GET /routes, /metrics, ...")

    def _frontends(self, runtime: Runtime) -> list[dict[str, Any]]:
        addresses = self._addresses()
        return [
            {
                "name": fe.name,
                "listen": "{}:{}".format(*addresses[fe.name]) if fe.name in addresses else None,
                "prefix": fe.prefix,
                "routes": [route.name for route in fe.routes],
            }
            for fe in runtime.config.frontends
        ]

    def _routes(self, runtime: Runtime) -> list[dict[str, Any]]:
        out = []
        for fe in runtime.config.frontends:
            for route in fe.routes:
                target: dict[str, Any]
                if route.aggregate is not None:
                    target = {
                        "aggregate": [b.name for b in route.aggregate.backends],
                        "mode": "sequence" if route.aggregate.sequential else "parallel",
                    }
                elif route.strangler is not None:
                    target = {"legacy": route.strangler.legacy, "new": route.strangler.new}
                else:
                    target = {"service": route.service}
                out.append(
                    {
                        "frontend": fe.name,
                        "name": route.name,
                        "match": {route.kind: route.pattern},
                        "methods": sorted(route.methods) if route.methods else None,
                        "auth": route.auth,
                        "rate_limited": route.rate_limit is not None,
                        "cached": route.cache is not None,
                        "cors": route.cors is not None,
                        **target,
                    }
                )
        return out

    async def _upstreams(self, runtime: Runtime) -> dict[str, Any]:
        out = {}
        for name, upstream in runtime.upstreams.items():
            budget = upstream.retry_budget
            try:
                instances = await upstream.instances()
            except Exception as exc:  # a discovery outage is worth showing, not a 500
                instances = ()
                _log.warning("admin: resolving instances failed", service=name, error=str(exc))
            out[name] = {
                "instances": [f"{i.address}:{i.port}" for i in instances],
                "discovered": upstream.static is None,
                "breaker": str(upstream.breaker.state.value),
                "retries": upstream.config.retries,
                "retry_budget_available": None if budget is None else budget.available,
            }
        return out

    def _breakers(self, runtime: Runtime) -> dict[str, str]:
        return {name: str(u.breaker.state.value) for name, u in runtime.upstreams.items()}

    def _stranglers(self, runtime: Runtime) -> list[dict[str, Any]]:
        return [
            {
                "frontend": frontend,
                "route": route,
                "weight": strangler.weight,
                "legacy": strangler.config.legacy,
                "new": strangler.config.new,
                "to_legacy": strangler.to_legacy,
                "to_new": strangler.to_new,
                "shadow": None
                if strangler.shadow is None
                else {
                    "share": strangler.shadow.config.share,
                    "matches": strangler.shadow.matches,
                    "diffs": strangler.shadow.diffs,
                    "errors": strangler.shadow.errors,
                },
            }
            for (frontend, route), strangler in runtime.stranglers.items()
        ]

    def _set_weight(self, runtime: Runtime, ex: Exchange) -> Reply:
        parts = ex.path.decode("latin-1").strip("/").split("/")
        if len(parts) != 3:
            return local_reply(404, "use PUT /strangler/{frontend}/{route}")
        strangler = runtime.stranglers.get((parts[1], parts[2]))
        if strangler is None:
            return local_reply(404, f"no strangler route {parts[2]!r} on frontend {parts[1]!r}")
        try:
            body = msgspec.json.decode(ex.body)
            strangler.weight = body["weight"]
        except (msgspec.DecodeError, KeyError, TypeError, ConfigError) as exc:
            return local_reply(400, f'send {{"weight": <0-100>}} ({exc})')
        return self._json({"frontend": parts[1], "route": parts[2], "weight": strangler.weight})
