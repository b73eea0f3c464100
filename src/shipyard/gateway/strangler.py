"""Strangler fig: one route split between a ``legacy`` and a ``new`` service.

Per request, in order: an override header or cookie (``legacy``/``new``) decides; else a
sticky key (consumer, client IP, a header or a cookie) hashes to a fixed point in 0-100,
so the same client stays on the same side while the weight only grows; else a random
draw. The weight (percentage to ``new``) moves at run time through the admin API.
Optionally a share of the legacy traffic is shadowed to ``new`` (see ``shadow``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

from shipyard.core.errors import ConfigError
from shipyard.gateway.config import StranglerConfig
from shipyard.gateway.filters import Exchange, Reply
from shipyard.gateway.proxy import Proxy
from shipyard.gateway.shadow import Shadow


def cookie(header: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    if not header:
        return None
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value
    return None


class Strangler:
    """The router of a strangler route (a ``Handler``)."""

    def __init__(
        self,
        config: StranglerConfig,
        legacy: Proxy,
        new: Proxy,
        *,
        route: str,
        shadow: Shadow | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.route = route
        self._legacy = legacy
        self._new = new
        self.shadow = shadow
        self._rng = rng
        self._weight = 0.0
        self._threshold = 0
        self.weight = config.weight
        self._salt = route.encode() + b"|"
        self._override_header = config.override_header.encode() if config.override_header else None
        self._override_cookie = config.override_cookie.encode() if config.override_cookie else None
        self._sticky_name = config.sticky_name.encode() if config.sticky_name else None
        self.to_legacy = 0
        self.to_new = 0

    @property
    def weight(self) -> float:
        """Percentage of requests sent to the new service (0-100)."""
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ConfigError("weight", value, "must be a percentage between 0 and 100")
        self._weight = float(value)
        self._threshold = round(value * 100)  # in 1/10,000ths, for the sticky hash

    def _sticky_key(self, ex: Exchange) -> bytes | None:
        kind = self.config.sticky
        if kind == "consumer":
            return ex.consumer.encode() if ex.consumer is not None else None
        if kind == "ip":
            return ex.client_ip.encode()
        if kind == "header":
            assert self._sticky_name is not None
            return ex.header_map.get(self._sticky_name)
        if kind == "cookie":
            assert self._sticky_name is not None
            return cookie(ex.header_map.get(b"cookie"), self._sticky_name)
        return None

    def chooses_new(self, ex: Exchange) -> bool:
        """Whether ``ex`` goes to the new service."""
        forced = None
        if self._override_header is not None:
            forced = ex.header_map.get(self._override_header)
        if forced is None and self._override_cookie is not None:
            forced = cookie(ex.header_map.get(b"cookie"), self._override_cookie)
        if forced == b"new":
            return True
        if forced == b"legacy":
            return False
        key = self._sticky_key(ex)
        if key is not None:
            return zlib.crc32(self._salt + key) % 10_000 < self._threshold
        return self._rng() * 100 < self._weight

    async def __call__(self, ex: Exchange) -> Reply:
        if self.chooses_new(ex):
            self.to_new += 1
            return await self._new(ex)
        self.to_legacy += 1
        reply = await self._legacy(ex)
        shadow = self.shadow
        if shadow is not None and shadow.wants(ex):
            if reply.stream is not None:
                # The comparison needs the whole legacy body; read it before answering.
                conn = reply.stream
                try:
                    await conn.wait_done()
                except Exception:
                    conn.close()
                    raise
                body = b"".join(conn.chunks)
                conn.finish()
                reply = Reply(reply.status, reply.headers, body)
            shadow.mirror(ex, reply)
        return reply
