"""Consul backend, over Consul's HTTP API with aiohttp.

Works against a real Consul agent and against Shipyard's embedded registry
(``shipyard.discovery.registry.RegistryServer``), which speaks the same API. ``watch`` uses
blocking queries (``?index=<X-Consul-Index>&wait=…``), so changes arrive as they happen
without polling.

The embedded registry also offers live connections (``GET /v1/shipyard/attach/{id}`` as a
WebSocket): while one is open the instance's ``attach:<id>`` check passes, and it turns
critical the moment the socket drops — so a killed process leaves rotation within a second
instead of after its TTL. ``hold_attachment`` keeps one open; against real Consul the
endpoint is a 404 and it returns quietly (the TTL check still covers liveness).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.core.logging import get_logger
from shipyard.discovery.errors import DiscoveryUnavailable
from shipyard.discovery.model import CRITICAL, PASSING, WARNING, Instance, Registration, Status

_log = get_logger("shipyard.discovery.consul")

_SEVERITY: dict[str, int] = {PASSING: 0, WARNING: 1, CRITICAL: 2}
_STATUSES: tuple[Status, ...] = (PASSING, WARNING, CRITICAL)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:g}s"


class ConsulBackend:
    """Registry backend for Consul's HTTP API (``consul://host:port``).

    ``wait`` is how long one blocking query may hang before Consul answers unchanged.
    """

    ATTACH_HEARTBEAT = 0.5
    """Seconds between WebSocket pings on a live connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        *,
        wait: float = 30.0,
        request_timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._base = f"http://{host}:{port}"
        self._url = f"consul://{host}:{port}"
        self.wait = validation.positive("wait", wait)
        self._timeout = validation.positive("request_timeout", request_timeout)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_url(cls, url: str) -> ConsulBackend:
        """Parse ``consul://host:port``."""
        parts = urlsplit(url)
        if parts.scheme != "consul" or not parts.hostname:
            raise ConfigError("url", url, "must look like consul://host:port")
        return cls(parts.hostname, parts.port or 8500)

    @property
    def url(self) -> str:
        """``consul://host:port``."""
        return self._url

    async def register(self, registration: Registration) -> None:
        """``PUT /v1/agent/service/register`` with a TTL or HTTP check when one is set."""
        body: dict[str, Any] = {
            "Name": registration.name,
            "ID": registration.id,
            "Address": registration.address,
            "Port": registration.port,
            "Tags": list(registration.tags),
            "Meta": dict(registration.meta),
        }
        check: dict[str, Any] = {}
        if registration.ttl is not None:
            check = {"CheckID": self.check_id(registration.id), "TTL": _duration(registration.ttl)}
        elif registration.http_check is not None:
            check = {"HTTP": registration.http_check, "Interval": _duration(registration.interval)}
        if check:
            if registration.deregister_after is not None:
                check["DeregisterCriticalServiceAfter"] = _duration(registration.deregister_after)
            body["Check"] = check
        await self._request("PUT", "/v1/agent/service/register", json=body)

    async def deregister(self, instance_id: str) -> None:
        """``PUT /v1/agent/service/deregister/{id}``; unknown ids are ignored."""
        await self._request(
            "PUT", f"/v1/agent/service/deregister/{quote(instance_id, safe='')}", missing_ok=True
        )

    @staticmethod
    def check_id(instance_id: str) -> str:
        """Consul's id for the check embedded in a registration: ``service:<id>``."""
        return f"service:{instance_id}"

    async def heartbeat(self, instance_id: str) -> None:
        """Mark the instance's TTL check passing (``PUT /v1/agent/check/pass/service:<id>``)."""
        await self._request("PUT", f"/v1/agent/check/pass/{quote(self.check_id(instance_id))}")

    async def instances(self, service: str, *, passing_only: bool = True) -> list[Instance]:
        """``GET /v1/health/service/{name}`` (``?passing=1`` unless ``passing_only=False``)."""
        instances, _ = await self._health(service, passing_only=passing_only, index=None)
        return instances

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Blocking queries on the passing instances; yields when the list changes."""
        last, index = await self._health(service, passing_only=True, index=None)
        yield last
        while True:
            current, new_index = await self._health(service, passing_only=True, index=index)
            # An index that goes backwards means the registry restarted: start over at 0.
            index = new_index if new_index >= index else 0
            if current != last:
                last = current
                yield current

    async def hold_attachment(
        self,
        instance_id: str,
        *,
        ready: asyncio.Event | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        """Keep a live connection open for ``instance_id`` until cancelled.

        Reconnects with backoff when the socket drops while we are alive; returns at once
        (after a debug log) if the registry has no such endpoint, as real Consul does not.
        ``ready`` is set once the registry confirms the attachment (or once it is clear
        there is no such endpoint), so a caller can wait until liveness is in place.
        """
        path = f"/v1/shipyard/attach/{quote(instance_id, safe='')}"
        delay = 0.1
        supported = False
        while True:
            try:
                async with self._client().ws_connect(
                    self._base + path, heartbeat=self.ATTACH_HEARTBEAT, timeout=self._ws_timeout()
                ) as socket:
                    supported = True
                    delay = 0.1
                    async for _ in socket:
                        # The registry sends one "attached" frame, then only pings.
                        if ready is not None:
                            ready.set()
            except aiohttp.WSServerHandshakeError as exc:
                # Once attached, a 404 means "instance unknown" (a restarted registry, until
                # the heartbeat registers us again): keep trying. Before, it means no endpoint.
                if exc.status in (404, 405) and not supported:
                    _log.debug("registry has no live connections; TTL only", url=self._url)
                    if ready is not None:
                        ready.set()
                    return
                _log.warning("attach refused", url=self._url, status=exc.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                _log.debug("attach connection failed", url=self._url, error=str(exc))
            await self._clock.sleep(delay)
            delay = min(delay * 2, max_backoff)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- internals ------------------------------------------------------------------------

    def _ws_timeout(self) -> aiohttp.ClientWSTimeout:
        return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._timeout)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        limit: float | None = None,
        missing_ok: bool = False,
    ) -> tuple[Any, int]:
        try:
            async with self._client().request(
                method,
                self._base + path,
                json=json,
                params=params,
                timeout=aiohttp.ClientTimeout(total=limit or self._timeout),
            ) as response:
                if response.status == 404 and missing_ok:
                    return None, 0
                if response.status != 200:
                    text = (await response.text()).strip()
                    raise DiscoveryUnavailable(
                        self._url, f"{method} {path} answered {response.status}: {text}"
                    )
                index = int(response.headers.get("X-Consul-Index", "0"))
                body = (
                    await response.json(content_type=None) if response.content_length != 0 else None
                )
                return body, index
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise DiscoveryUnavailable(self._url, str(exc) or type(exc).__name__) from exc

    async def _health(
        self, service: str, *, passing_only: bool, index: int | None
    ) -> tuple[list[Instance], int]:
        params: dict[str, str] = {}
        if passing_only:
            params["passing"] = "1"
        limit = None
        if index is not None:
            params["index"] = str(index)
            params["wait"] = _duration(self.wait)
            # Consul may hold a blocking query up to wait + wait/16 (its jitter).
            limit = self.wait * 1.1 + self._timeout
        body, new_index = await self._request(
            "GET", f"/v1/health/service/{quote(service, safe='')}", params=params, limit=limit
        )
        instances = []
        for entry in body or []:
            svc = entry["Service"]
            worst = max(
                (_SEVERITY.get(str(c.get("Status")), 2) for c in entry.get("Checks") or []),
                default=0,
            )
            address = svc.get("Address") or (entry.get("Node") or {}).get("Address", "")
            instances.append(
                Instance(
                    id=svc["ID"],
                    service=svc["Service"],
                    address=address,
                    port=int(svc.get("Port") or 0),
                    tags=tuple(svc.get("Tags") or ()),
                    meta=dict(svc.get("Meta") or {}),
                    status=_STATUSES[worst],
                )
            )
        instances.sort(key=lambda i: i.id)
        return instances, new_index
