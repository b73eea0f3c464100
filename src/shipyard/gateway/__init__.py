"""A fast declarative API gateway: routing, JWT/API-key auth, rate limits, access logs.

One YAML file describes several frontends (backend-for-frontend); each route's filter
chain is composed once at start-up and served by an asyncio-protocol HTTP/1.1 server on
uvloop with httptools. Run it with ``shipyard gateway --config gateway.yaml``.
"""

from shipyard.gateway.access_log import AccessLog
from shipyard.gateway.api_key import ApiKeyAuth
from shipyard.gateway.auth import AnyAuth
from shipyard.gateway.auth_jwt import InvalidToken, JwtAuth, JwtVerifier
from shipyard.gateway.config import (
    AccessLogConfig,
    ApiKeyConfig,
    FrontendConfig,
    GatewayConfig,
    JwtConfig,
    JwtKey,
    Limits,
    RateLimitConfig,
    RouteConfig,
    ServiceConfig,
    load_config,
    parse_config,
)
from shipyard.gateway.errors import (
    GatewayConfigError,
    GatewayError,
    UpstreamError,
    UpstreamTimeoutError,
)
from shipyard.gateway.filters import Chain, Exchange, Filter, Reply, local_reply
from shipyard.gateway.gateway import Gateway, store_from_url
from shipyard.gateway.rate_limit import RateLimit
from shipyard.gateway.redis_ratelimit import RedisRateLimitStore
from shipyard.gateway.upstream import StaticResolver, UpstreamResolver

__all__ = [
    # running a gateway
    "Gateway",
    "load_config",
    "parse_config",
    # configuration models
    "GatewayConfig",
    "FrontendConfig",
    "RouteConfig",
    "ServiceConfig",
    "Limits",
    "AccessLogConfig",
    "JwtConfig",
    "JwtKey",
    "ApiKeyConfig",
    "RateLimitConfig",
    # the filter API (for custom filters and later phases)
    "Filter",
    "Chain",
    "Exchange",
    "Reply",
    "local_reply",
    # filters
    "JwtAuth",
    "JwtVerifier",
    "ApiKeyAuth",
    "AnyAuth",
    "RateLimit",
    "AccessLog",
    # upstreams and stores
    "UpstreamResolver",
    "StaticResolver",
    "RedisRateLimitStore",
    "store_from_url",
    # errors
    "GatewayError",
    "GatewayConfigError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "InvalidToken",
]
