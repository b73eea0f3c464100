"""What one loaded configuration became: the objects the admin API and metrics read.

The gateway builds a ``Runtime`` from a config at start-up and on every reload, then swaps
it in whole; readers always see one consistent generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.gateway.aggregate import Aggregator
from shipyard.gateway.cache import ResponseCache
from shipyard.gateway.config import GatewayConfig
from shipyard.gateway.proxy import Upstream
from shipyard.gateway.rate_limit import RateLimit
from shipyard.gateway.server import Frontend
from shipyard.gateway.shadow import Shadow
from shipyard.gateway.strangler import Strangler

RouteKey = tuple[str, str]
"""(frontend name, route name)."""


@dataclass
class Runtime:
    """One generation of the gateway's routing state."""

    config: GatewayConfig
    upstreams: dict[str, Upstream]
    groups: dict[object, tuple[tuple[str, int], list[Frontend]]] = field(default_factory=dict)
    """Frontends per listener key (shared address, or the frontend's own listener)."""
    rate_limits: dict[RouteKey, RateLimit] = field(default_factory=dict)
    caches: dict[RouteKey, ResponseCache] = field(default_factory=dict)
    stranglers: dict[RouteKey, Strangler] = field(default_factory=dict)
    aggregators: dict[RouteKey, Aggregator] = field(default_factory=dict)

    @property
    def shadows(self) -> dict[RouteKey, Shadow]:
        """The shadowing strangler routes."""
        return {k: s.shadow for k, s in self.stranglers.items() if s.shadow is not None}
