"""The router: the last filter of every chain, which sends the request upstream.

Per service there is one ``Upstream`` (instances, round robin, circuit breaker); per
route one ``Proxy`` with the header set to drop and the timeout decided at start-up.
The upstream is always chosen from the configuration: the request's Host header or an
absolute-form target never picks where the gateway connects (no open proxy, no SSRF).
Retries go to another instance, only for idempotent methods or requests that carry an
``Idempotency-Key``, only on connection failures or the service's ``retry_on`` codes, and
only while the service's retry budget lasts (so retries cannot multiply an outage).

``Proxy.answer_from_callbacks`` is the same request without a coroutine, for the common
case (one static instance, no retries, a closed breaker, an idle pooled connection): it
writes the request and returns; the connection tells the proxy (``upstream.Waiter``)
when the response head is in, and the proxy hands the reply to the waiting client
connection. The breaker counts the call exactly as its decorator would; a timeout or
failure answers 504/502 as ``__call__`` does, and a pooled connection found closed
resends on a fresh one, as ``_send`` does. Anything else takes ``__call__``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence

from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.gateway.config import ServiceConfig
from shipyard.gateway.errors import StaleConnectionError, UpstreamError, UpstreamTimeoutError
from shipyard.gateway.filters import (
    HOP_BY_HOP,
    Exchange,
    Header,
    Pending,
    Reply,
    Responder,
    local_reply,
)
from shipyard.gateway.upstream import (
    Address,
    RoundRobin,
    UpstreamConnection,
    UpstreamPool,
    UpstreamResolver,
)
from shipyard.resilience.breaker import CircuitBreaker
from shipyard.resilience.budget import RetryBudget
from shipyard.resilience.errors import CircuitOpenError

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Set by the gateway itself; the client's copies are replaced, never passed through.
_REGENERATED = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    }
)
# The gateway writes its own X-Request-Id on every response (the one it sent upstream), so
# an upstream's echo of it would only duplicate the header.
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"x-request-id"}

_HEAD_DROP = HOP_BY_HOP | {b"x-request-id"}

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Upstream:
    """A service's instances (static or resolved), its balancer and its breaker."""

    def __init__(
        self,
        config: ServiceConfig,
        resolver: UpstreamResolver | None,
        pool: UpstreamPool,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.name = config.name
        self._resolver = resolver
        self.static: tuple[Address, ...] | None = tuple(config.urls) if config.urls else None
        self.pool = pool
        self.balancer = RoundRobin()
        self.breaker = CircuitBreaker(
            f"upstream:{config.name}",
            failure_rate_threshold=config.breaker_failure_rate,
            minimum_calls=config.breaker_minimum_calls,
            reset_timeout=config.breaker_reset,
            record=(UpstreamError, UpstreamTimeoutError),
            clock=clock,
        )
        self._targets: dict[tuple[str, int], tuple[bytes, str]] = {}
        budget = config.retry_budget
        self.retry_budget: RetryBudget | None = (
            RetryBudget(budget.ratio, budget.min_per_second, budget.window, clock=clock)
            if config.retries
            else None
        )
        self.retries_denied = 0
        """Retries the budget refused (exported as a metric)."""

    async def instances(self) -> Sequence[Address]:
        """Where the service runs now (the static list, or the resolver's answer)."""
        if self.static is not None:
            return self.static
        if self._resolver is None:
            return ()
        return await self._resolver.instances(self.name)

    def target(self, instance: Address) -> tuple[bytes, str]:
        """The pre-encoded ``host:`` header line for ``instance`` and its ``host:port``."""
        key = (instance.address, instance.port)
        found = self._targets.get(key)
        if found is None:
            label = f"{key[0]}:{key[1]}"
            found = self._targets[key] = (f"host: {label}\r\n".encode(), label)
        return found

    def host_line(self, instance: Address) -> bytes:
        """The pre-encoded ``host:`` header line for ``instance``."""
        return self.target(instance)[0]

    async def fetch(
        self, build: Callable[[bytes], bytes], within: float, *, head_only: bool = False
    ) -> tuple[int, list[Header], bytes]:
        """Send the request ``build(host_line)`` makes and read the whole response.

        For callers that need the body before answering (aggregation, shadowing); the
        proxy path streams instead."""
        instances = self.static or await self.instances()
        if not instances:
            raise UpstreamError(f"no instance of service {self.name!r} is available")
        instance = self.balancer.pick(instances)
        conn = await self.pool.request(
            instance.address, instance.port, build(self.host_line(instance)), within, head_only
        )
        try:
            await conn.wait_done()
        except BaseException:
            conn.close()
            raise
        body = b"".join(conn.chunks)
        status, headers = conn.status, conn.headers
        conn.finish()
        return status, headers, body


# Per client address and per Host value the forwarding headers are the same every time:
# built once (bounded caches; both come from the client, so never unbounded).
@functools.lru_cache(maxsize=4096)
def _peer_fields(ip: str) -> tuple[bytes, bytes]:
    """``X-Forwarded-For`` and ``Forwarded: for=`` values for a client address."""
    return ip.encode(), (f'"[{ip}]"' if ":" in ip else ip).encode()


@functools.lru_cache(maxsize=1024)
def _host_fields(host: bytes) -> tuple[bytes, bytes]:
    """The ``X-Forwarded-Host`` line and ``Forwarded`` ``host=`` parameter for a Host."""
    if not host:
        return b"", b""
    return b"\r\nx-forwarded-host: " + host, b';host="' + host.replace(b'"', b"") + b'"'


_FORWARDING = (
    b"x-forwarded-for: %b\r\nx-forwarded-proto: http%b\r\nforwarded: for=%b;proto=http%b"
    b"\r\nx-request-id: "
)


@functools.lru_cache(maxsize=4096)
def _forwarding(peer: str, host: bytes) -> bytes:
    """The forwarding header lines for a client address and Host (no trusted XFF to
    extend), up to the request id's value."""
    xff, forwarded_for = _peer_fields(peer)
    forwarded_host, forwarded_host_param = _host_fields(host)
    return _FORWARDING % (xff, forwarded_host, forwarded_for, forwarded_host_param)


class Proxy:
    """The router filter of one route: send, retry, relay or stream the response."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        timeout: float,
        strips: frozenset[bytes],
        trusted: Sequence[Network],
    ) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._drop = HOP_BY_HOP | _REGENERATED | strips
        self._trusted = tuple(trusted)
        self._retries = upstream.config.retries
        self._retry_on = upstream.config.retry_on
        self._attempt = upstream.breaker(self._send)
        self._breaker = upstream.breaker
        self._retries_possible = upstream.retry_budget is not None
        # Static instances: only the gateway's own futures are awaited. A resolver (e.g.
        # discovery over HTTP) may need a current task, so such routes get one.
        self.runs_inline = upstream.static is not None
        # One static instance (the common case): nothing to pick per request.
        self._only: tuple[Address, bytes, str] | None = None
        if upstream.static is not None and len(upstream.static) == 1:
            only = upstream.static[0]
            self._only = (only, *upstream.target(only))

    def _trusted_peer(self, ip: str) -> bool:
        if not self._trusted:
            return False
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self._trusted)

    def _request_bytes(self, ex: Exchange, host_line: bytes) -> bytes:
        header_map = ex.header_map
        query = ex.query
        parts = [
            ex.method,
            b" ",
            ex.upstream_path,
            b"?" + query if query else b"",
            b" HTTP/1.1\r\n",
            host_line,
        ]
        drop = self._drop
        connection = header_map.get(b"connection")
        if connection is not None:
            # Headers the client named in Connection are hop-by-hop too (RFC 9110 7.6.1).
            drop = drop | {t.strip().lower() for t in connection.split(b",")}
        for name, value in ex.headers:
            if name not in drop:
                parts += (name, b": ", value, b"\r\n")
        peer = ex.peer_ip
        previous = header_map.get(b"x-forwarded-for")
        if previous is not None and self._trusted_peer(peer):
            xff, forwarded_for = _peer_fields(peer)
            forwarded_host, forwarded_host_param = _host_fields(ex.host)
            parts.append(
                _FORWARDING
                % (previous + b", " + xff, forwarded_host, forwarded_for, forwarded_host_param)
            )
        else:
            parts.append(_forwarding(peer, ex.host))
        parts += (ex.request_id, b"\r\n")
        for name, value in ex.upstream_headers:
            parts += (name, b": ", value, b"\r\n")
        body = ex.body
        if body or ex.method in _BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(body))
        parts += (b"\r\n", body)
        return b"".join(parts)

    async def _send(self, instance: Address, data: bytes, head_only: bool) -> UpstreamConnection:
        # UpstreamPool.request inlined: this runs for every proxied request.
        pool = self._upstream.pool
        conn = pool.take_idle(instance.address, instance.port)
        if conn is not None:
            try:
                await conn.send(data, self._timeout, head_only)
                return conn
            except StaleConnectionError:
                pass  # closed idle by the upstream; the request never reached it
        return await pool.send_fresh(
            instance.address, instance.port, data, self._timeout, head_only
        )

    def build(self, ex: Exchange, extra: bytes = b"") -> Callable[[bytes], bytes]:
        """A request builder for ``Upstream.fetch``: this route's request for ``ex``, with
        ``extra`` header lines (e.g. ``x-shadow: 1``) after the Host line."""
        return lambda host_line: self._request_bytes(ex, host_line + extra)

    @property
    def upstream(self) -> Upstream:
        """The service this route sends to."""
        return self._upstream

    @property
    def timeout(self) -> float:
        """The route's upstream timeout."""
        return self._timeout

    async def __call__(self, ex: Exchange) -> Reply:
        upstream = self._upstream
        instances = upstream.static or await upstream.instances()
        if not instances:
            return local_reply(503, f"no instance of service {upstream.name!r} is available")
        ex.service = upstream.name
        budget = upstream.retry_budget
        attempts = 1
        if budget is not None and (ex.method in IDEMPOTENT or b"idempotency-key" in ex.header_map):
            attempts += self._retries
            budget.deposit()
        head_only = ex.method == b"HEAD"
        failed: Address | None = None
        only = self._only
        for attempt in range(attempts):
            if only is not None:
                instance, host_line, ex.upstream = only
            else:
                instance = upstream.balancer.pick(instances, failed)
                host_line, ex.upstream = upstream.target(instance)
            data = self._request_bytes(ex, host_line)
            last = attempt == attempts - 1
            try:
                conn = await self._attempt(instance, data, head_only)
            except UpstreamTimeoutError:
                return self._timed_out()
            except UpstreamError as exc:
                if last or not self._may_retry(budget):
                    return self._failed(exc)
                failed = instance
                continue
            except CircuitOpenError as exc:
                retry_after = (
                    []
                    if exc.remaining is None
                    else [(b"retry-after", str(max(1, round(exc.remaining))).encode())]
                )
                return local_reply(
                    503, f"upstream {upstream.name!r} is failing; breaker open", retry_after
                )
            if not last and conn.status in self._retry_on and self._may_retry(budget):
                conn.close()
                failed = instance
                continue
            return self._relay(conn)
        raise AssertionError("unreachable: the last attempt always returns")

    def _timed_out(self) -> Reply:
        return local_reply(504, f"upstream {self._upstream.name!r} did not answer in time")

    def _failed(self, exc: Exception) -> Reply:
        return local_reply(502, f"upstream {self._upstream.name!r} failed: {exc}")

    # -- the callback path (see the module docstring)

    def answer_from_callbacks(self, ex: Exchange, client: Responder) -> Reply | Pending | None:
        """``__call__`` without a coroutine when the request is the common case: returns
        None and later calls ``client.resume`` (or ``resume_later``); else the coroutine."""
        only = self._only
        if only is None or self._retries_possible:
            return self(ex)
        upstream = self._upstream
        ticket = self._breaker.inline_ticket()
        if ticket < 0:
            return self(ex)  # open, half-open, timed or watched: the decorated path
        instance, host_line, label = only
        data = self._request_bytes(ex, host_line)
        conn = upstream.pool.take_idle(instance.address, instance.port)
        if conn is None:
            return self(ex)  # a new connection is awaited
        ex.service = upstream.name
        ex.upstream = label
        conn.caller = client
        conn.ticket = ticket
        conn.request = data
        conn.start(data, self._timeout, ex.method == b"HEAD", self)
        return None

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """The head is in: count a success (as the decorator does when ``_send``
        returns) and hand the reply over."""
        client: Responder = conn.caller
        conn.caller = None
        conn.request = b""
        self._breaker.inline_complete(conn.ticket)
        client.resume(self._relay(conn))

    def upstream_failed(self, conn: UpstreamConnection, error: Exception) -> None:
        """No head: 504/502 as ``__call__`` answers, or a resend as ``_send`` does."""
        client: Responder = conn.caller
        conn.caller = None
        if isinstance(error, StaleConnectionError):
            client.resume_later(self._resend(conn.key, conn.request, conn.head_only, conn.ticket))
            return
        self._breaker.inline_complete(conn.ticket, error)
        client.resume(
            self._timed_out() if isinstance(error, UpstreamTimeoutError) else self._failed(error)
        )

    async def _resend(
        self, key: tuple[str, int], data: bytes, head_only: bool, ticket: int
    ) -> Reply:
        """The request on a fresh connection, within the same breaker call (``_send``)."""
        try:
            conn = await self._upstream.pool.send_fresh(
                key[0], key[1], data, self._timeout, head_only
            )
        except BaseException as exc:
            self._breaker.inline_complete(ticket, exc)
            if isinstance(exc, UpstreamTimeoutError):
                return self._timed_out()
            if isinstance(exc, UpstreamError):
                return self._failed(exc)
            raise
        self._breaker.inline_complete(ticket)
        return self._relay(conn)

    def _may_retry(self, budget: RetryBudget | None) -> bool:
        if budget is None or budget.try_withdraw():
            return True
        self._upstream.retries_denied += 1
        return False

    def _relay(self, conn: UpstreamConnection) -> Reply:
        # A response to HEAD keeps the upstream's Content-Length: it describes the GET body.
        drop = _HEAD_DROP if conn.head_only else _RESPONSE_DROP
        headers: list[Header] = [h for h in conn.headers if h[0] not in drop]
        if conn.complete:
            body = b"".join(conn.chunks) if len(conn.chunks) != 1 else conn.chunks[0]
            status = conn.status
            conn.finish()
            return Reply(status, headers, body)
        return Reply(conn.status, headers, b"", conn)
