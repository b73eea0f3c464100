"""etcd v3 backend, over etcd's JSON gRPC gateway (``/v3/…``) with aiohttp.

An instance is the key ``<prefix>/services/<service>/<id>`` holding the instance as JSON,
written with a lease. The registering client keeps the lease alive every ``ttl/3`` seconds,
so when the process dies its keys vanish as soon as the lease expires — the lease IS the
health check (etcd has no other notion of health, so every listed instance is passing).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from shipyard.core import cancel_and_wait, validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.core.logging import get_logger
from shipyard.discovery.errors import DiscoveryUnavailable
from shipyard.discovery.model import Instance, Registration

_log = get_logger("shipyard.discovery.etcd")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    # etcd's "every key starting with prefix": range_end is the prefix with its last byte + 1.
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdBackend:
    """Registry backend on etcd v3 (``etcd://host:port[/prefix]``, default prefix ``/shipyard``).

    ``default_ttl`` is the lease TTL for registrations without their own ``ttl``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2379,
        *,
        prefix: str = "/shipyard",
        default_ttl: float = 10.0,
        request_timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._base = f"http://{host}:{port}"
        self._url = f"etcd://{host}:{port}{prefix}"
        self._prefix = prefix.rstrip("/")
        self.default_ttl = validation.positive("default_ttl", default_ttl)
        self._timeout = validation.positive("request_timeout", request_timeout)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        # instance id -> (key, keep-alive task) for registrations made through this client
        self._owned: dict[str, tuple[str, asyncio.Task[None]]] = {}

    @classmethod
    def from_url(cls, url: str) -> EtcdBackend:
        """Parse ``etcd://host:port[/prefix]``."""
        parts = urlsplit(url)
        if parts.scheme != "etcd" or not parts.hostname:
            raise ConfigError("url", url, "must look like etcd://host:port[/prefix]")
        return cls(parts.hostname, parts.port or 2379, prefix=parts.path.rstrip("/") or "/shipyard")

    @property
    def url(self) -> str:
        """``etcd://host:port/prefix``."""
        return self._url

    def _service_prefix(self, service: str) -> str:
        return f"{self._prefix}/services/{service}/"

    async def register(self, registration: Registration) -> None:
        """Put the instance under a fresh lease and keep that lease alive until deregister."""
        await self._forget(registration.id, revoke=True)
        key = self._service_prefix(registration.name) + registration.id
        ttl = registration.ttl or self.default_ttl
        await self._put_with_lease(key, registration, ttl)
        task = asyncio.get_running_loop().create_task(
            self._keep_alive(key, registration, ttl), name=f"etcd-lease:{registration.id}"
        )
        self._owned[registration.id] = (key, task)

    async def deregister(self, instance_id: str) -> None:
        """Delete the instance's key (and revoke its lease if this client registered it)."""
        owned = await self._forget(instance_id, revoke=True)
        if owned is not None:
            return
        found = await self._post("/v3/kv/range", self._range(f"{self._prefix}/services/"))
        for kv in found.get("kvs", []):
            key = _unb64(kv["key"])
            if key.rsplit("/", 1)[-1] == instance_id:
                await self._post("/v3/kv/deleterange", {"key": kv["key"]})

    async def instances(self, service: str, *, passing_only: bool = True) -> list[Instance]:
        """Every instance with a live key (all are passing: the lease is the check)."""
        instances, _ = await self._read(service)
        return instances

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the instances now and after every change to the service's keys."""
        last, revision = await self._read(service)
        yield last
        prefix = self._service_prefix(service)
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _prefix_end(prefix),
                "start_revision": str(revision + 1),
            }
        }
        session = self._client()
        try:
            async with session.post(
                self._base + "/v3/watch",
                json=request,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
            ) as response:
                if response.status != 200:
                    raise DiscoveryUnavailable(self._url, f"watch answered {response.status}")
                while True:
                    line = await response.content.readline()
                    if not line:
                        raise DiscoveryUnavailable(self._url, "watch stream closed")
                    message = json.loads(line)
                    if "error" in message:
                        raise DiscoveryUnavailable(self._url, str(message["error"]))
                    if message.get("result", {}).get("canceled"):
                        # e.g. our start revision was compacted away: start a fresh watch.
                        reason = message["result"].get("cancel_reason", "compacted")
                        raise DiscoveryUnavailable(self._url, f"watch cancelled: {reason}")
                    if not message.get("result", {}).get("events"):
                        continue  # the "created" acknowledgement or a progress notice
                    current, _ = await self._read(service)
                    if current != last:
                        last = current
                        yield current
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise DiscoveryUnavailable(self._url, str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        """Stop keeping leases alive (their keys expire with them) and close the session."""
        for instance_id in list(self._owned):
            await self._forget(instance_id, revoke=False)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- internals ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._client().post(self._base + path, json=body) as response:
                payload: dict[str, Any] = await response.json(content_type=None)
                if response.status != 200:
                    detail = payload.get("message") or payload.get("error") or response.status
                    raise DiscoveryUnavailable(self._url, f"{path} answered {detail}")
                return payload
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise DiscoveryUnavailable(self._url, str(exc) or type(exc).__name__) from exc

    @staticmethod
    def _range(prefix: str) -> dict[str, Any]:
        return {"key": _b64(prefix), "range_end": _prefix_end(prefix)}

    async def _read(self, service: str) -> tuple[list[Instance], int]:
        found = await self._post("/v3/kv/range", self._range(self._service_prefix(service)))
        instances = []
        for kv in found.get("kvs", []):
            data = json.loads(_unb64(kv["value"]))
            instances.append(
                Instance(
                    id=data["id"],
                    service=data["service"],
                    address=data["address"],
                    port=int(data["port"]),
                    tags=tuple(data.get("tags", ())),
                    meta=dict(data.get("meta", {})),
                )
            )
        instances.sort(key=lambda i: i.id)
        return instances, int(found["header"]["revision"])

    async def _put_with_lease(self, key: str, registration: Registration, ttl: float) -> str:
        grant = await self._post("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})
        lease = str(grant["ID"])
        value = {
            "id": registration.id,
            "service": registration.name,
            "address": registration.address,
            "port": registration.port,
            "tags": list(registration.tags),
            "meta": dict(registration.meta),
        }
        await self._post(
            "/v3/kv/put", {"key": _b64(key), "value": _b64(json.dumps(value)), "lease": lease}
        )
        return lease

    async def _keep_alive(self, key: str, registration: Registration, ttl: float) -> None:
        lease: str | None = None
        while True:
            try:
                if lease is None:
                    found = await self._post("/v3/kv/range", {"key": _b64(key)})
                    kvs = found.get("kvs", [])
                    lease = kvs[0].get("lease") if kvs else None
                    if lease is None:
                        # The key is gone (etcd restarted or the lease lapsed): put it back.
                        lease = await self._put_with_lease(key, registration, ttl)
                await self._clock.sleep(ttl / 3)
                answer = await self._post("/v3/lease/keepalive", {"ID": lease})
                if int(answer.get("result", {}).get("TTL", 0)) <= 0:
                    lease = None  # expired: re-register on the next round
            except DiscoveryUnavailable as exc:
                _log.warning("etcd lease keep-alive failed", key=key, error=str(exc))
                lease = None
                await self._clock.sleep(min(1.0, ttl / 3))

    async def _forget(
        self, instance_id: str, *, revoke: bool
    ) -> tuple[str, asyncio.Task[None]] | None:
        owned = self._owned.pop(instance_id, None)
        if owned is None:
            return None
        key, task = owned
        await cancel_and_wait(task)
        if revoke:
            found = await self._post("/v3/kv/range", {"key": _b64(key)})
            for kv in found.get("kvs", []):
                if kv.get("lease"):
                    await self._post("/v3/lease/revoke", {"ID": kv["lease"]})
            await self._post("/v3/kv/deleterange", {"key": _b64(key)})
        return owned
