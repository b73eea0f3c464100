"""The gateway's YAML configuration, validated into typed, frozen models.

Every value is checked when the file is loaded; an error names the file, the line and the
dotted key, and says what is allowed. YAML line numbers come from ``yaml.compose`` marks.

Shape (every key except ``frontends`` is optional)::

    listen: 127.0.0.1:8080          # listener for frontends that use a path prefix
    trusted_proxies: [10.0.0.0/8]   # peers whose X-Forwarded-For is believed
    limits: {max_body_bytes: 1048576, max_header_bytes: 16384, max_headers: 100}
    access_log: {path: "-", sample: 1.0}
    rate_limit_store: memory://     # or redis://127.0.0.1:6379/0
    cache: {store: memory://, max_bytes: 67108864}   # or redis://…; routes opt in
    admin: {listen: 127.0.0.1:9901, token_env: GATEWAY_ADMIN_TOKEN}
    reload: {watch: true, interval: 2}  # re-read this file when it changes (also SIGHUP)
    services:
      users: {urls: [http://127.0.0.1:9001], timeout: 5, retries: 1, retry_on: [502, 503]}
      orders: {}                    # instances come from the resolver (discovery)
    frontends:
      web:
        listen: 127.0.0.1:8081      # or prefix: /web on the shared listener
        jwt: {keys: [{kid: k1, alg: HS256, secret: s3cret}], claim_headers: {sub: X-User-Id}}
        api_keys: {header: X-Api-Key, keys: [{consumer: acme, sha256: <hex>}]}
        rate_limit: {rate: 100, burst: 200, per: consumer}
        routes:
          - {name: user, template: "/users/{id}", methods: [GET], service: users}
          - {name: legacy, prefix: /old, strip_prefix: true, upstream: http://127.0.0.1:9000}
          - {name: item, prefix: /items, service: users, cache: {ttl: 30}}
          - name: page                # aggregation: fan out, merge JSON, partial on failure
            template: "/page/{id}"
            aggregate:
              budget: 1.5
              backends:
                - {name: user, service: users, path: "/users/{id}", timeout: 0.5}
                - {name: reviews, service: users, path: "/reviews?user={id}",
                   fallback: {value: []}}
          - name: shop                # strangler fig: 10% to the new service, shadowing
            prefix: /shop
            strangler: {legacy: users, new: orders, weight: 10, sticky: {cookie: uid},
                        shadow: {share: 0.05, ignore: [generated_at]}}
        cors: {origins: [https://app.example], methods: [GET, POST], max_age: 600}
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from shipyard.gateway.errors import GatewayConfigError

MatchKind = Literal["exact", "prefix", "template", "regex"]
AuthMode = Literal["none", "jwt", "api_key", "any"]
LimitKey = Literal["consumer", "ip", "header"]

_MATCH_KINDS: tuple[MatchKind, ...] = ("exact", "prefix", "template", "regex")
_ALGORITHMS = ("HS256", "RS256", "ES256")
MAX_LEEWAY = 300.0
"""Clock-skew allowance is capped: a large leeway would quietly accept expired tokens."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Request size limits; exceeding them answers 413 (body) or 431 (headers)."""

    max_body_bytes: int = 1 << 20
    max_header_bytes: int = 16 << 10
    max_headers: int = 100


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """Where access log lines go (``-`` for stdout, a file path, or off) and how many."""

    path: str | None = "-"
    sample: float = 1.0


@dataclass(frozen=True, slots=True)
class UpstreamURL:
    """A static upstream address taken from the configuration (``http://host:port``)."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """Retries allowed per window: ``min_per_second * window + ratio * requests``."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """An upstream service: static URLs or resolver lookups, and how calls to it behave."""

    name: str
    urls: tuple[UpstreamURL, ...] = ()
    timeout: float = 10.0
    retries: int = 0
    retry_on: frozenset[int] = frozenset({502, 503, 504})
    breaker_failure_rate: float = 0.5
    breaker_minimum_calls: int = 10
    breaker_reset: float = 10.0
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One verification key. The algorithm comes from here, never from the token header."""

    alg: str
    kid: str | None = None
    secret: bytes | None = None
    public_key_pem: bytes | None = None


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """JWT verification: keys (inline or JWKS), expected claims, forwarded claim headers."""

    keys: tuple[JwtKey, ...] = ()
    jwks_url: str | None = None
    jwks_min_refresh: float = 10.0
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    claim_headers: tuple[tuple[str, str], ...] = ()
    consumer_claim: str = "sub"
    cache_size: int = 10_000


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    """API keys looked up by SHA-256 digest; the consumer name is what limits key on."""

    header: str | None = "x-api-key"
    query: str | None = None
    keys: tuple[tuple[str, bytes], ...] = ()
    """(consumer, sha256 digest) pairs."""


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Token bucket: ``rate`` tokens per second, bucket size ``burst``, keyed by ``per``."""

    rate: float
    burst: int
    per: LimitKey = "ip"
    header: str | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A route's response cache: default TTL, entry size cap, stale-on-error window."""

    ttl: float
    max_entry_bytes: int = 1 << 20
    serve_stale_on_error: float = 0.0
    """Seconds past expiry an entry may still answer when the upstream fails (0: never)."""
    authenticated: bool = False
    """Also cache responses to authenticated requests (keyed by consumer)."""


@dataclass(frozen=True, slots=True)
class CacheStoreConfig:
    """Where cached responses live: ``memory://`` (an LRU bounded by bytes) or Redis."""

    store: str = "memory://"
    max_bytes: int = 64 << 20
    prefix: str = "shipyard:gw:cache"


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """Cross-origin rules; ``origins`` None allows any origin (``*``)."""

    origins: frozenset[str] | None
    methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age: int = 600
    credentials: bool = False


FallbackKind = Literal["omit", "value", "cached"]


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One backend of an aggregation route and how its JSON joins the response."""

    name: str
    service: str
    path: str
    """Path (and query) template: ``{param}`` from the route, ``{backend.field}`` from an
    earlier backend when the aggregation runs in sequence."""
    method: str = "GET"
    timeout: float | None = None
    key: str | None = None
    """Key the backend's JSON is merged under (default: its name); None with ``flatten``."""
    flatten: bool = False
    select: tuple[str, ...] | None = None
    rename: tuple[tuple[str, str], ...] = ()
    fallback: FallbackKind = "omit"
    fallback_value: Any = None


@dataclass(frozen=True, slots=True)
class AggregateConfig:
    """Fan out to ``backends`` (in parallel, or in sequence) within ``budget`` seconds."""

    backends: tuple[BackendConfig, ...]
    sequential: bool = False
    budget: float = 5.0


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """Copy a share of the legacy traffic to the new service and compare the answers."""

    share: float
    ignore: tuple[str, ...] = ()
    """Dotted JSON fields left out of the comparison (timestamps, generated ids)."""
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    timeout: float | None = None


StickyKind = Literal["none", "consumer", "ip", "header", "cookie"]


@dataclass(frozen=True, slots=True)
class StranglerConfig:
    """Split a route between ``legacy`` and ``new`` services (strangler fig)."""

    legacy: str
    new: str
    weight: float = 0.0
    """Percentage of requests sent to ``new`` (0-100); changeable through the admin API."""
    sticky: StickyKind = "none"
    sticky_name: str | None = None
    override_header: str | None = None
    override_cookie: str | None = None
    shadow: ShadowConfig | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API listener; disabled when no bearer token is configured."""

    listen: tuple[str, int]
    token: str | None = None


@dataclass(frozen=True, slots=True)
class ReloadConfig:
    """Whether to poll the config file's mtime and reload it when it changes."""

    watch: bool = False
    interval: float = 2.0


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One route: how a request is matched, rewritten, authenticated, limited and sent."""

    name: str
    kind: MatchKind
    pattern: str
    service: str
    methods: frozenset[str] | None = None
    hosts: frozenset[str] | None = None
    headers: tuple[tuple[str, str | None], ...] = ()
    strip_prefix: bool = False
    rewrite: str | None = None
    timeout: float | None = None
    auth: AuthMode = "none"
    rate_limit: RateLimitConfig | None = None
    line: int | None = None
    cache: CacheConfig | None = None
    cors: CorsConfig | None = None
    aggregate: AggregateConfig | None = None
    strangler: StranglerConfig | None = None


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    """A backend-for-frontend: its own listener or path prefix, routes, auth and limits."""

    name: str
    routes: tuple[RouteConfig, ...]
    listen: tuple[str, int] | None = None
    prefix: str = ""
    jwt: JwtConfig | None = None
    api_keys: ApiKeyConfig | None = None
    case_insensitive: bool = False
    cors: CorsConfig | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole gateway: frontends, upstream services, limits, logging, shared stores."""

    frontends: tuple[FrontendConfig, ...]
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    listen: tuple[str, int] | None = None
    limits: Limits = Limits()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    access_log: AccessLogConfig = AccessLogConfig()
    rate_limit_store: str = "memory://"
    rate_limit_prefix: str = "shipyard:gw"
    source: str = "<config>"
    cache: CacheStoreConfig = CacheStoreConfig()
    admin: AdminConfig | None = None
    reload: ReloadConfig = ReloadConfig()


# --------------------------------------------------------------------------- reading


class _Section:
    """A YAML mapping plus the line of each key, for errors that point at the file."""

    def __init__(self, reader: _Reader, node: yaml.Node, path: str) -> None:
        self.reader = reader
        self.path = path
        self.line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            reader.fail(node, path or "<root>", _kind(node), "must be a mapping (key: value)")
        self.nodes: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            self.nodes[str(key_node.value)] = value_node

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def only(self, *allowed: str) -> None:
        for name, node in self.nodes.items():
            if name not in allowed:
                self.reader.fail(
                    node, self.key(name), name, "unknown key; allowed: " + ", ".join(allowed)
                )

    def has(self, name: str) -> bool:
        return name in self.nodes

    def raw(self, name: str) -> Any:
        return self.reader.plain(self.nodes[name])

    def fail(self, name: str, value: object, allowed: str) -> None:
        node = self.nodes.get(name)
        self.reader.fail_line(
            node.start_mark.line + 1 if node else self.line, name, self, value, allowed
        )

    def section(self, name: str) -> _Section | None:
        node = self.nodes.get(name)
        return None if node is None else _Section(self.reader, node, self.key(name))

    def items(self, name: str) -> Iterator[tuple[str, yaml.Node]]:
        node = self.nodes.get(name)
        if node is None:
            return
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield f"{self.key(name)}[{index}]", item
        else:
            self.reader.fail(node, self.key(name), _kind(node), "must be a list")

    def string(self, name: str, default: str | None = None) -> str | None:
        if name not in self.nodes:
            return default
        value = self.raw(name)
        if not isinstance(value, str) or not value:
            self.fail(name, value, "must be a non-empty string")
        return str(value)

    def strings(self, name: str) -> tuple[str, ...] | None:
        if name not in self.nodes:
            return None
        value = self.raw(name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(name, value, "must be a string or a non-empty list of strings")
        return tuple(value)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
        strict: bool = True,
    ) -> float:
        if name not in self.nodes:
            return default
        value = self.raw(name)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            ok = value > minimum if strict else value >= minimum
            if maximum is not None and value > maximum:
                ok = False
        if not ok:
            rng = f"> {minimum:g}" if strict else f">= {minimum:g}"
            if maximum is not None:
                rng += f" and <= {maximum:g}"
            self.fail(name, value, f"must be a number {rng}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int = 1) -> int:
        if name not in self.nodes:
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(name, value, f"must be an integer >= {minimum}")
        return int(value)

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.nodes:
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            self.fail(name, value, "must be true or false")
        return bool(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        if name not in self.nodes:
            return default
        value = self.raw(name)
        if value not in choices:
            self.fail(name, value, "must be one of " + ", ".join(choices))
        return str(value)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "<mapping>"
    if isinstance(node, yaml.SequenceNode):
        return "<list>"
    return str(node.value)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node, key: str, value: object, allowed: str) -> None:
        raise GatewayConfigError(self.source, node.start_mark.line + 1, key, value, allowed)

    def fail_line(
        self, line: int, name: str, section: _Section, value: object, allowed: str
    ) -> None:
        raise GatewayConfigError(self.source, line, section.key(name), value, allowed)

    def plain(self, node: yaml.Node) -> Any:
        # Construct the plain Python value of one node with PyYAML's safe constructor.
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        finally:
            loader.dispose()


def parse_listen(text: str) -> tuple[str, int] | None:
    """``host:port`` → (host, port), or None when it does not parse."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host.strip("[]"), int(port)


def parse_upstream_url(text: str) -> UpstreamURL | None:
    """``http://host:port`` (no path, no credentials) → UpstreamURL, or None."""
    try:
        parts = urlsplit(text)
        port = parts.port or 80
    except ValueError:
        return None
    if (
        parts.scheme != "http"
        or not parts.hostname
        or parts.username
        or parts.path not in ("", "/")
    ):
        return None
    if parts.query or parts.fragment:
        return None
    return UpstreamURL(parts.hostname, port)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway YAML file."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> GatewayConfig:
    """Validate gateway YAML ``text``; errors name ``source``, the line and the key."""
    reader = _Reader(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise GatewayConfigError(source, line, "<yaml>", "", f"is not valid YAML: {exc}") from exc
    if node is None:
        raise GatewayConfigError(
            source, 1, "frontends", None, "the file is empty; define frontends"
        )
    root = _Section(reader, node, "")
    root.only(
        "listen",
        "trusted_proxies",
        "limits",
        "access_log",
        "rate_limit_store",
        "rate_limit_prefix",
        "services",
        "frontends",
        "cache",
        "admin",
        "reload",
    )
    listen = _listen(root, "listen")
    cache = _cache_store(root.section("cache"))
    admin = _admin(root.section("admin"))
    reload = _reload(root.section("reload"))
    limits = _limits(root.section("limits"))
    access_log = _access_log(root.section("access_log"))
    store = root.string("rate_limit_store", "memory://") or "memory://"
    if not store.startswith(("memory://", "redis://", "rediss://", "unix://")):
        root.fail("rate_limit_store", store, "must be memory:// or a redis:// URL")
    prefix = root.string("rate_limit_prefix", "shipyard:gw") or "shipyard:gw"
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text_net in root.strings("trusted_proxies") or ():
        try:
            proxies.append(ipaddress.ip_network(text_net, strict=False))
        except ValueError:
            root.fail("trusted_proxies", text_net, "must be IP addresses or CIDR networks")
    services = _services(root)
    if not root.has("frontends"):
        raise GatewayConfigError(
            source, root.line, "frontends", None, "is required: define at least one frontend"
        )
    frontends_section = root.section("frontends")
    assert frontends_section is not None
    if not frontends_section.nodes:
        root.fail("frontends", {}, "must define at least one frontend")
    frontends = []
    for name in frontends_section.nodes:
        sub = frontends_section.section(name)
        assert sub is not None
        frontends.append(_frontend(name, sub, services))
    for fe in frontends:
        if fe.listen is None and listen is None:
            raise GatewayConfigError(
                source,
                frontends_section.nodes[fe.name].start_mark.line + 1,
                f"frontends.{fe.name}.listen",
                None,
                "a frontend needs its own listen: host:port, or a top-level listen to share",
            )
    shared = [fe for fe in frontends if fe.listen is None]
    prefixes = [fe.prefix for fe in shared]
    if len(set(prefixes)) != len(prefixes):
        raise GatewayConfigError(
            source,
            frontends_section.line,
            "frontends",
            prefixes,
            "frontends sharing the top-level listener need distinct prefixes",
        )
    return GatewayConfig(
        frontends=tuple(frontends),
        services=services,
        listen=listen,
        limits=limits,
        trusted_proxies=tuple(proxies),
        access_log=access_log,
        rate_limit_store=store,
        rate_limit_prefix=prefix,
        source=source,
        cache=cache,
        admin=admin,
        reload=reload,
    )


def _listen(section: _Section, name: str) -> tuple[str, int] | None:
    text = section.string(name)
    if text is None:
        return None
    parsed = parse_listen(text)
    if parsed is None:
        section.fail(name, text, "must be host:port, e.g. 127.0.0.1:8080")
    return parsed


def _limits(section: _Section | None) -> Limits:
    if section is None:
        return Limits()
    section.only("max_body_bytes", "max_header_bytes", "max_headers")
    default = Limits()
    return Limits(
        max_body_bytes=section.integer("max_body_bytes", default.max_body_bytes, minimum=0),
        max_header_bytes=section.integer("max_header_bytes", default.max_header_bytes, minimum=256),
        max_headers=section.integer("max_headers", default.max_headers, minimum=1),
    )


def _access_log(section: _Section | None) -> AccessLogConfig:
    if section is None:
        return AccessLogConfig()
    section.only("path", "sample", "enabled")
    enabled = section.boolean("enabled", True)
    return AccessLogConfig(
        path=section.string("path", "-") if enabled else None,
        sample=section.number("sample", 1.0, minimum=0.0, maximum=1.0, strict=False),
    )


def _services(root: _Section) -> dict[str, ServiceConfig]:
    section = root.section("services")
    services: dict[str, ServiceConfig] = {}
    if section is None:
        return services
    for name in section.nodes:
        sub = section.section(name)
        assert sub is not None
        sub.only(
            "urls",
            "timeout",
            "retries",
            "retry_on",
            "breaker_failure_rate",
            "breaker_minimum_calls",
            "breaker_reset",
            "retry_budget",
        )
        urls = []
        for text in sub.strings("urls") or ():
            url = parse_upstream_url(text)
            if url is None:
                sub.fail("urls", text, "must be http://host:port URLs (no path, no credentials)")
            assert url is not None
            urls.append(url)
        retry_on = sub.raw("retry_on") if sub.has("retry_on") else [502, 503, 504]
        if not isinstance(retry_on, list) or not all(
            isinstance(s, int) and 500 <= s <= 599 for s in retry_on
        ):
            sub.fail("retry_on", retry_on, "must be a list of 5xx status codes")
        services[name] = ServiceConfig(
            name=name,
            urls=tuple(urls),
            timeout=sub.number("timeout", 10.0, maximum=3600),
            retries=sub.integer("retries", 0, minimum=0),
            retry_on=frozenset(retry_on),
            breaker_failure_rate=sub.number("breaker_failure_rate", 0.5, maximum=1.0),
            breaker_minimum_calls=sub.integer("breaker_minimum_calls", 10, minimum=1),
            breaker_reset=sub.number("breaker_reset", 10.0),
            retry_budget=_retry_budget(sub.section("retry_budget")),
        )
    return services


def _retry_budget(section: _Section | None) -> RetryBudgetConfig:
    if section is None:
        return RetryBudgetConfig()
    section.only("ratio", "min_per_second", "window")
    return RetryBudgetConfig(
        ratio=section.number("ratio", 0.2, maximum=1.0, strict=False),
        min_per_second=section.number("min_per_second", 10.0, strict=False),
        window=section.number("window", 10.0, maximum=3600),
    )


def _cache_store(section: _Section | None) -> CacheStoreConfig:
    if section is None:
        return CacheStoreConfig()
    section.only("store", "max_bytes", "prefix")
    store = section.string("store", "memory://") or "memory://"
    if not store.startswith(("memory://", "redis://", "rediss://", "unix://")):
        section.fail("store", store, "must be memory:// or a redis:// URL")
    return CacheStoreConfig(
        store=store,
        max_bytes=section.integer("max_bytes", 64 << 20, minimum=1024),
        prefix=section.string("prefix", "shipyard:gw:cache") or "shipyard:gw:cache",
    )


def _admin(section: _Section | None) -> AdminConfig | None:
    if section is None:
        return None
    section.only("listen", "token", "token_env")
    listen = _listen(section, "listen")
    if listen is None:
        section.fail("listen", None, "is required: host:port of the admin API")
    assert listen is not None
    token = section.string("token")
    env = section.string("token_env")
    if token is not None and env is not None:
        section.fail("token_env", env, "give token: or token_env:, not both")
    if env is not None:
        token = os.environ.get(env) or None
    return AdminConfig(listen=listen, token=token)


def _reload(section: _Section | None) -> ReloadConfig:
    if section is None:
        return ReloadConfig()
    section.only("watch", "interval")
    return ReloadConfig(
        watch=section.boolean("watch", False),
        interval=section.number("interval", 2.0, maximum=3600),
    )


def _frontend(name: str, section: _Section, services: dict[str, ServiceConfig]) -> FrontendConfig:
    section.only(
        "listen", "prefix", "routes", "jwt", "api_keys", "rate_limit", "case_insensitive", "cors"
    )
    cors = _cors(section.section("cors"))
    prefix = section.string("prefix", "") or ""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix):
        section.fail("prefix", prefix, "must look like /name (leading slash, no trailing slash)")
    jwt = _jwt(section.section("jwt"))
    api_keys = _api_keys(section.section("api_keys"))
    default_limit = _rate_limit(section.section("rate_limit"))
    default_auth: AuthMode = "any" if (jwt or api_keys) else "none"
    case_insensitive = section.boolean("case_insensitive", False)
    routes: list[RouteConfig] = []
    names: set[str] = set()
    for key, node in section.items("routes"):
        route = _route(
            _Section(section.reader, node, key), services, default_auth, default_limit, cors
        )
        if route.auth in ("jwt", "any") and jwt is None and route.auth == "jwt":
            section.reader.fail(node, f"{key}.auth", "jwt", "this frontend has no jwt: block")
        if route.auth == "api_key" and api_keys is None:
            section.reader.fail(
                node, f"{key}.auth", "api_key", "this frontend has no api_keys: block"
            )
        if route.name in names:
            section.reader.fail(node, f"{key}.name", route.name, "route names must be unique")
        names.add(route.name)
        routes.append(route)
    if not routes:
        section.fail("routes", None, "a frontend needs at least one route")
    return FrontendConfig(
        name=name,
        routes=tuple(routes),
        listen=_listen(section, "listen"),
        prefix=prefix,
        jwt=jwt,
        api_keys=api_keys,
        case_insensitive=case_insensitive,
        cors=cors,
    )


_TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _route(
    section: _Section,
    services: dict[str, ServiceConfig],
    default_auth: AuthMode,
    default_limit: RateLimitConfig | None,
    default_cors: CorsConfig | None = None,
) -> RouteConfig:
    section.only(
        "name",
        *_MATCH_KINDS,
        "methods",
        "hosts",
        "headers",
        "strip_prefix",
        "rewrite",
        "service",
        "upstream",
        "timeout",
        "auth",
        "rate_limit",
        "cache",
        "cors",
        "aggregate",
        "strangler",
    )
    kinds = [k for k in _MATCH_KINDS if section.has(k)]
    if len(kinds) != 1:
        # Point at the match key written last: that is usually the one added by mistake.
        latest = max(kinds, key=lambda k: section.nodes[k].start_mark.line, default="prefix")
        section.fail(
            latest,
            kinds,
            "a route needs exactly one of exact:, prefix:, template:, regex:",
        )
    kind: MatchKind = kinds[0]
    pattern = section.string(kind) or ""
    if kind == "regex":
        try:
            re.compile(pattern)
        except re.error as exc:
            section.fail(kind, pattern, f"must be a valid regular expression ({exc})")
    elif not pattern.startswith("/"):
        section.fail(kind, pattern, "must start with /")
    if kind == "template" and not _TEMPLATE_PARAM.search(pattern):
        section.fail(kind, pattern, "a template needs at least one {param}; use exact: otherwise")
    name = section.string("name", f"{kind}:{pattern}") or pattern
    methods = section.strings("methods")
    hosts = section.strings("hosts")
    headers: list[tuple[str, str | None]] = []
    header_section = section.section("headers")
    if header_section is not None:
        for header_name in header_section.nodes:
            value = header_section.raw(header_name)
            if value is not None and not isinstance(value, str):
                header_section.fail(
                    header_name, value, "must be a string value, or null for presence"
                )
            headers.append((header_name.lower(), value))
    service = section.string("service")
    upstream = section.string("upstream")
    targets = [k for k in ("service", "upstream", "aggregate", "strangler") if section.has(k)]
    if len(targets) != 1:
        section.fail(
            targets[-1] if targets else "service",
            targets,
            "a route needs exactly one of service:, upstream:, aggregate:, strangler:",
        )
    aggregate = _aggregate(section.section("aggregate"), services, pattern, kind)
    strangler = _strangler(section.section("strangler"), services)
    if upstream is not None:
        service = _service_ref(section, "upstream", services)
    elif service is not None:
        service = _service_ref(section, "service", services)
    elif strangler is not None:
        service = strangler.legacy
    else:
        service = ""
    strip = section.boolean("strip_prefix", False)
    if strip and kind != "prefix":
        section.fail("strip_prefix", True, "only prefix: routes can strip their prefix")
    rewrite = section.string("rewrite")
    if rewrite is not None and not rewrite.startswith("/"):
        section.fail("rewrite", rewrite, "must start with /")
    if rewrite is not None:
        known = set(_TEMPLATE_PARAM.findall(pattern)) if kind == "template" else set()
        if kind == "regex":
            known = set(re.compile(pattern).groupindex)
        unknown = set(_TEMPLATE_PARAM.findall(rewrite)) - known
        if unknown:
            section.fail("rewrite", rewrite, f"uses unknown parameters {sorted(unknown)}")
    auth = section.choice("auth", default_auth, ("none", "jwt", "api_key", "any"))
    limit = (
        _rate_limit(section.section("rate_limit")) if section.has("rate_limit") else default_limit
    )
    return RouteConfig(
        name=name,
        kind=kind,
        pattern=pattern,
        service=service,
        methods=frozenset(m.upper() for m in methods) if methods else None,
        hosts=frozenset(h.lower() for h in hosts) if hosts else None,
        headers=tuple(headers),
        strip_prefix=strip,
        rewrite=rewrite,
        timeout=section.number("timeout", 0.0, maximum=3600) if section.has("timeout") else None,
        auth=auth,  # type: ignore[arg-type]
        rate_limit=limit,
        line=section.line,
        cache=_cache(section.section("cache")),
        cors=_route_cors(section, default_cors),
        aggregate=aggregate,
        strangler=strangler,
    )


def _service_ref(section: _Section, name: str, services: dict[str, ServiceConfig]) -> str:
    """A service name, or an ``http://host:port`` URL that becomes an implicit service."""
    text = section.string(name) or ""
    if text.startswith("http://") or name == "upstream":
        url = parse_upstream_url(text)
        if url is None:
            section.fail(name, text, "must be http://host:port (no path, no credentials)")
        assert url is not None
        service = f"{url.address}:{url.port}"
        if service not in services:
            services[service] = ServiceConfig(name=service, urls=(url,))
        return service
    if text not in services:
        section.fail(
            name, text, "must name a service defined under services: (or http://host:port)"
        )
    return text


def _cache(section: _Section | None) -> CacheConfig | None:
    if section is None:
        return None
    section.only("ttl", "max_entry_bytes", "serve_stale_on_error", "authenticated")
    if not section.has("ttl"):
        section.fail("ttl", None, "is required: seconds a response stays fresh, e.g. ttl: 30")
    return CacheConfig(
        ttl=section.number("ttl", 0.0, maximum=365 * 86400),
        max_entry_bytes=section.integer("max_entry_bytes", 1 << 20, minimum=1),
        serve_stale_on_error=section.number(
            "serve_stale_on_error", 0.0, maximum=365 * 86400, strict=False
        ),
        authenticated=section.boolean("authenticated", False),
    )


def _cors(section: _Section | None) -> CorsConfig | None:
    if section is None:
        return None
    section.only("origins", "methods", "headers", "expose", "max_age", "credentials")
    origins = section.strings("origins")
    if origins is None:
        section.fail("origins", None, 'is required: a list of origins, or "*"')
    assert origins is not None
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            section.fail("origins", origin, 'must be scheme://host[:port] origins, or "*"')
    any_origin = "*" in origins
    credentials = section.boolean("credentials", False)
    if any_origin and credentials:
        section.fail("credentials", True, 'browsers refuse credentials with origins: "*"')
    return CorsConfig(
        origins=None if any_origin else frozenset(origins),
        methods=tuple(m.upper() for m in section.strings("methods") or ("GET", "HEAD", "POST")),
        headers=tuple(h.lower() for h in section.strings("headers") or ()),
        expose=tuple(h.lower() for h in section.strings("expose") or ()),
        max_age=section.integer("max_age", 600, minimum=0),
        credentials=credentials,
    )


def _route_cors(section: _Section, default: CorsConfig | None) -> CorsConfig | None:
    if not section.has("cors"):
        return default
    if section.raw("cors") is False:
        return None
    return _cors(section.section("cors"))


_REFERENCE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\}")


def _aggregate(
    section: _Section | None, services: dict[str, ServiceConfig], pattern: str, kind: str
) -> AggregateConfig | None:
    if section is None:
        return None
    section.only("backends", "mode", "budget")
    sequential = section.choice("mode", "parallel", ("parallel", "sequence")) == "sequence"
    params = set(_TEMPLATE_PARAM.findall(pattern)) if kind == "template" else set()
    if kind == "regex":
        params = set(re.compile(pattern).groupindex)
    backends: list[BackendConfig] = []
    for key, node in section.items("backends"):
        sub = _Section(section.reader, node, key)
        sub.only(
            "name",
            "service",
            "upstream",
            "path",
            "method",
            "timeout",
            "key",
            "flatten",
            "select",
            "rename",
            "fallback",
        )
        name = sub.string("name")
        if name is None:
            sub.fail("name", None, "is required: the backend's name (the merge key)")
        assert name is not None
        if any(b.name == name for b in backends):
            sub.fail("name", name, "backend names must be unique within the route")
        if sub.has("service") == sub.has("upstream"):
            sub.fail("service", None, "a backend needs exactly one of service: or upstream:")
        service = _service_ref(sub, "service" if sub.has("service") else "upstream", services)
        path = sub.string("path")
        if path is None or not path.startswith("/"):
            sub.fail("path", path, "is required and must start with / (e.g. /users/{id})")
        assert path is not None
        earlier = {b.name for b in backends}
        for ref, dotted in _REFERENCE.findall(path):
            if dotted:
                if not sequential or ref not in earlier:
                    sub.fail(
                        "path",
                        path,
                        f"{{{ref}{dotted}}} needs mode: sequence and an earlier backend {ref!r}",
                    )
            elif ref not in params:
                sub.fail("path", path, f"{{{ref}}} is not a parameter of the route's path")
        flatten = sub.boolean("flatten", False)
        select = sub.strings("select")
        rename: list[tuple[str, str]] = []
        rename_section = sub.section("rename")
        if rename_section is not None:
            for old in rename_section.nodes:
                new = rename_section.string(old)
                assert new is not None
                rename.append((old, new))
        fallback: FallbackKind = "omit"
        fallback_value: Any = None
        if sub.has("fallback"):
            raw = sub.raw("fallback")
            if raw in ("omit", "cached"):
                fallback = raw
            elif isinstance(raw, dict) and set(raw) == {"value"}:
                fallback, fallback_value = "value", raw["value"]
            else:
                sub.fail("fallback", raw, "must be omit, cached, or {value: <any JSON>}")
        backends.append(
            BackendConfig(
                name=name,
                service=service,
                path=path,
                method=(sub.choice("method", "GET", ("GET", "HEAD", "POST", "PUT"))),
                timeout=sub.number("timeout", 0.0, maximum=3600) if sub.has("timeout") else None,
                key=None if flatten else (sub.string("key", name) or name),
                flatten=flatten,
                select=select,
                rename=tuple(rename),
                fallback=fallback,
                fallback_value=fallback_value,
            )
        )
    if not backends:
        section.fail("backends", None, "an aggregation needs at least one backend")
    return AggregateConfig(
        backends=tuple(backends),
        sequential=sequential,
        budget=section.number("budget", 5.0, maximum=3600),
    )


def _strangler(
    section: _Section | None, services: dict[str, ServiceConfig]
) -> StranglerConfig | None:
    if section is None:
        return None
    section.only(
        "legacy", "new", "weight", "sticky", "override_header", "override_cookie", "shadow"
    )
    for required in ("legacy", "new"):
        if not section.has(required):
            section.fail(required, None, f"is required: the {required} service (or URL)")
    sticky: StickyKind = "none"
    sticky_name: str | None = None
    if section.has("sticky"):
        raw = section.raw("sticky")
        if raw in ("consumer", "ip"):
            sticky = raw
        elif isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in ("header", "cookie"):
            sticky = next(iter(raw))
            sticky_name = str(raw[sticky])
            if sticky == "header":
                sticky_name = sticky_name.lower()
        else:
            section.fail("sticky", raw, "must be consumer, ip, {header: Name} or {cookie: name}")
    override = section.string("override_header")
    shadow = None
    shadow_section = section.section("shadow")
    if shadow_section is not None:
        shadow_section.only("share", "ignore", "methods", "timeout")
        methods = shadow_section.strings("methods")
        shadow = ShadowConfig(
            share=shadow_section.number("share", 1.0, maximum=1.0, strict=False),
            ignore=shadow_section.strings("ignore") or (),
            methods=frozenset(m.upper() for m in methods)
            if methods
            else frozenset({"GET", "HEAD"}),
            timeout=shadow_section.number("timeout", 0.0, maximum=3600)
            if shadow_section.has("timeout")
            else None,
        )
    return StranglerConfig(
        legacy=_service_ref(section, "legacy", services),
        new=_service_ref(section, "new", services),
        weight=section.number("weight", 0.0, maximum=100.0, strict=False),
        sticky=sticky,
        sticky_name=sticky_name,
        override_header=override.lower() if override else None,
        override_cookie=section.string("override_cookie"),
        shadow=shadow,
    )


def _rate_limit(section: _Section | None) -> RateLimitConfig | None:
    if section is None:
        return None
    section.only("rate", "burst", "per", "header")
    if not section.has("rate"):
        section.fail("rate", None, "is required: tokens per second, e.g. rate: 100")
    rate = section.number("rate", 1.0)
    per = section.choice("per", "ip", ("consumer", "ip", "header"))
    header = section.string("header")
    if per == "header" and header is None:
        section.fail("header", None, "per: header needs header: <name>")
    return RateLimitConfig(
        rate=rate,
        burst=section.integer("burst", max(1, int(rate))),
        per=per,  # type: ignore[arg-type]
        header=header.lower() if header else None,
    )


def _jwt(section: _Section | None) -> JwtConfig | None:
    if section is None:
        return None
    section.only(
        "keys",
        "jwks_url",
        "jwks_min_refresh",
        "issuer",
        "audience",
        "leeway",
        "claim_headers",
        "consumer_claim",
        "cache_size",
    )
    keys = []
    for key, node in section.items("keys"):
        sub = _Section(section.reader, node, key)
        sub.only("kid", "alg", "secret", "public_key", "public_key_file")
        alg = sub.choice("alg", "", _ALGORITHMS)
        if not alg:
            sub.fail("alg", None, "is required: one of " + ", ".join(_ALGORITHMS))
        secret = sub.string("secret")
        pem = sub.string("public_key")
        pem_file = sub.string("public_key_file")
        if pem_file is not None:
            try:
                pem = Path(pem_file).read_text(encoding="ascii")
            except OSError as exc:
                sub.fail("public_key_file", pem_file, f"must be a readable PEM file ({exc})")
        if alg == "HS256" and (secret is None or pem is not None):
            sub.fail("secret", secret, "HS256 keys need secret: (and no public key)")
        if alg != "HS256" and (pem is None or secret is not None):
            sub.fail("public_key", pem, f"{alg} keys need public_key: PEM (and no secret)")
        keys.append(
            JwtKey(
                alg=alg,
                kid=sub.string("kid"),
                secret=secret.encode() if secret else None,
                public_key_pem=pem.encode() if pem else None,
            )
        )
    jwks_url = section.string("jwks_url")
    if jwks_url is not None and not (
        urlsplit(jwks_url).scheme in ("http", "https") and urlsplit(jwks_url).hostname
    ):
        section.fail("jwks_url", jwks_url, "must be an http:// URL")
    if not keys and jwks_url is None:
        section.fail("keys", None, "jwt needs keys: or jwks_url:")
    claim_headers = []
    headers_section = section.section("claim_headers")
    if headers_section is not None:
        for claim in headers_section.nodes:
            header = headers_section.string(claim)
            assert header is not None
            claim_headers.append((claim, header))
    return JwtConfig(
        keys=tuple(keys),
        jwks_url=jwks_url,
        jwks_min_refresh=section.number("jwks_min_refresh", 10.0, strict=False),
        issuer=section.string("issuer"),
        audience=section.string("audience"),
        leeway=section.number("leeway", 30.0, maximum=MAX_LEEWAY, strict=False),
        claim_headers=tuple(claim_headers),
        consumer_claim=section.string("consumer_claim", "sub") or "sub",
        cache_size=section.integer("cache_size", 10_000, minimum=0),
    )


def _api_keys(section: _Section | None) -> ApiKeyConfig | None:
    if section is None:
        return None
    section.only("header", "query", "keys")
    keys: list[tuple[str, bytes]] = []
    for key, node in section.items("keys"):
        sub = _Section(section.reader, node, key)
        sub.only("consumer", "key", "sha256")
        consumer = sub.string("consumer")
        if consumer is None:
            sub.fail("consumer", None, "is required: the consumer this key belongs to")
        plain = sub.string("key")
        digest_hex = sub.string("sha256")
        if (plain is None) == (digest_hex is None):
            sub.fail("sha256", digest_hex, "give exactly one of key: or sha256: (hex digest)")
        if digest_hex is not None:
            try:
                digest = bytes.fromhex(digest_hex)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                sub.fail("sha256", digest_hex, "must be 64 hex characters (a SHA-256 digest)")
        else:
            assert plain is not None
            digest = hashlib.sha256(plain.encode()).digest()
        assert consumer is not None
        keys.append((consumer, digest))
    if not keys:
        section.fail("keys", None, "api_keys needs at least one key")
    header = section.string("header", "x-api-key")
    query = section.string("query")
    return ApiKeyConfig(header=header.lower() if header else None, query=query, keys=tuple(keys))
