"""A fast declarative API gateway: routing, JWT/API-key auth, rate limits, access logs,
response caching, aggregation (fan-out), strangler-fig splits with shadowing, CORS, an
admin API with Prometheus metrics, and hot reload.

One YAML file describes several frontends (backend-for-frontend); each route's filter
chain is composed once at start-up (and on each reload) and served by an asyncio-protocol
HTTP/1.1 server on uvloop with httptools. Run it with ``shipyard gateway --config
gateway.yaml``; SIGHUP, the file watch or ``POST /reload`` on the admin API reload it.
"""

from shipyard.gateway.access_log import AccessLog
from shipyard.gateway.admin import AdminApi, BearerToken
from shipyard.gateway.aggregate import Aggregator
from shipyard.gateway.api_key import ApiKeyAuth
from shipyard.gateway.auth import AnyAuth
from shipyard.gateway.auth_jwt import InvalidToken, JwtAuth, JwtVerifier
from shipyard.gateway.cache import (
    CachedResponse,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    ResponseCacheStore,
    cache_store_from_url,
)
from shipyard.gateway.config import (
    AccessLogConfig,
    AdminConfig,
    AggregateConfig,
    ApiKeyConfig,
    BackendConfig,
    CacheConfig,
    CacheStoreConfig,
    CorsConfig,
    FrontendConfig,
    GatewayConfig,
    JwtConfig,
    JwtKey,
    Limits,
    RateLimitConfig,
    ReloadConfig,
    RetryBudgetConfig,
    RouteConfig,
    ServiceConfig,
    ShadowConfig,
    StranglerConfig,
    load_config,
    parse_config,
)
from shipyard.gateway.cors import Cors
from shipyard.gateway.errors import (
    GatewayConfigError,
    GatewayError,
    StaleConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from shipyard.gateway.filters import Chain, Exchange, Filter, Reply, local_reply
from shipyard.gateway.gateway import Gateway, store_from_url
from shipyard.gateway.local_ratelimit import LocalRateLimitStore
from shipyard.gateway.metrics import GatewayCollector, GatewayMetrics
from shipyard.gateway.rate_limit import RateLimit
from shipyard.gateway.redis_ratelimit import RedisRateLimitStore
from shipyard.gateway.reload import ConfigWatcher
from shipyard.gateway.runtime import Runtime
from shipyard.gateway.shadow import Shadow
from shipyard.gateway.strangler import Strangler
from shipyard.gateway.upstream import StaticResolver, UpstreamResolver

__all__ = [
    # running a gateway
    "Gateway",
    "load_config",
    "parse_config",
    "Runtime",
    "ConfigWatcher",
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
    "CacheConfig",
    "CacheStoreConfig",
    "CorsConfig",
    "AggregateConfig",
    "BackendConfig",
    "StranglerConfig",
    "ShadowConfig",
    "AdminConfig",
    "ReloadConfig",
    "RetryBudgetConfig",
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
    "Cors",
    # routers beyond the plain proxy
    "ResponseCache",
    "Aggregator",
    "Strangler",
    "Shadow",
    # admin API and metrics
    "AdminApi",
    "BearerToken",
    "GatewayMetrics",
    "GatewayCollector",
    # upstreams and stores
    "UpstreamResolver",
    "StaticResolver",
    "LocalRateLimitStore",
    "RedisRateLimitStore",
    "store_from_url",
    "ResponseCacheStore",
    "MemoryCacheStore",
    "RedisCacheStore",
    "CachedResponse",
    "cache_store_from_url",
    # errors
    "GatewayError",
    "GatewayConfigError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "StaleConnectionError",
    "InvalidToken",
]
