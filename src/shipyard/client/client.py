"""``ServiceClient``: call another service by name, resiliently.

One call: look the service up (a cached dict lookup once warm), drop ejected instances and
instances whose own breaker is open, let the balancer pick, then send through the service
chain built at construction (total timeout → service breaker → retry → bulkhead) and the
instance's guard (instance breaker → attempt timeout). A retry goes to an instance not yet
tried in this call when one exists. Every outcome feeds the outlier detector; a refused
connection ejects the instance at once.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

import aiohttp
import msgspec
from multidict import CIMultiDict

from shipyard.client.errors import (
    ClientClosedError,
    ConnectTimeoutError,
    HTTPStatusError,
    UpstreamConnectionError,
)
from shipyard.client.policy import Plan, build_plan, instance_breaker
from shipyard.client.response import Response
from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.discovery import (
    Balancer,
    Discovery,
    Instance,
    NoHealthyInstance,
    OutlierDetector,
    RoundRobin,
)
from shipyard.observability.tracing import (
    current_request_id,
    current_trace,
    new_span_id,
    new_trace_id,
)
from shipyard.resilience import (
    BreakerState,
    CallTimeoutError,
    CircuitBreaker,
    Fallback,
    Pipeline,
    Timeout,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""Methods whose repetition has no further effect (RFC 9110 §9.2.2): retried freely."""

IDEMPOTENCY_KEY = "Idempotency-Key"

_KEYED_METHODS = frozenset({"POST", "PATCH"})
_REJECTING = (BreakerState.OPEN, BreakerState.FORCED_OPEN)
_JSON_HEADERS = {"Content-Type": "application/json"}


Sender = Callable[["_Call", Instance, str], Awaitable[Response]]
_Request = Callable[..., Awaitable[aiohttp.ClientResponse]]


class _Guard:
    """One instance as the client knows it: where to send, its own breaker, and ``send``,
    the client's sender wrapped once in that breaker (and attempt timeout)."""

    __slots__ = ("address", "base", "breaker", "port", "send")

    def __init__(self, instance: Instance, breaker: CircuitBreaker | None, send: Sender) -> None:
        self.address = instance.address
        self.port = instance.port
        self.base = instance.url
        self.breaker = breaker
        self.send = send


class _Call:
    """One logical request across its attempts (the state a retry needs).

    ``trace_head``/``trace_tail`` are the fixed parts of its ``traceparent``
    (``00-<trace id>-`` and ``-<flags>``), so an attempt only adds its span id.
    """

    __slots__ = (
        "body",
        "headers",
        "last",
        "method",
        "params",
        "path",
        "trace_head",
        "trace_tail",
        "tried",
    )

    def __init__(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        headers: CIMultiDict[str],
        body: bytes | None,
        trace_head: str | None,
        trace_tail: str,
    ) -> None:
        self.method = method
        self.path = path
        self.params = params
        self.headers = headers
        self.body = body
        self.trace_head = trace_head
        self.trace_tail = trace_tail
        self.last: Instance | None = None
        self.tried: set[str] | None = None


class ServiceClient:
    """Resilient HTTP calls to the instances of one service.

    * ``discovery``: a ``Discovery`` (shared; not closed by the client) or a registry URL
      (``static://orders=127.0.0.1:8001``, ``consul://…``; the client owns and closes it).
    * ``policy``: ``None`` (``DEFAULT_POLICY``), a ``Pipeline``, or a mapping with the keys
      of ``Pipeline.from_dict`` plus ``instance_circuit_breaker``. With a mapping, ``timeout``
      is per attempt (inside each instance's breaker), ``retry`` retries only what
      ``is_retryable`` says unless given ``retry_on``, the service breaker sits outside the
      retry (it judges whole calls; instance breakers judge attempts), and breakers count
      only upstream faults (5xx, no answer, timeouts).
    * ``timeout``: seconds for the whole call, retries included (a mapping's
      ``total_timeout`` overrides it); ``connect_timeout``: seconds to open a connection.
    * ``balancer`` (default ``RoundRobin``); ``outlier``: an ``OutlierDetector``, ``True``
      for a default one, ``False`` for none.
    * ``idempotency_keys``: add a generated ``Idempotency-Key`` to POST/PATCH requests
      that lack one, so that they can be retried (only when the policy retries).
    * ``session``: a shared ``aiohttp.ClientSession`` (not closed by the client); by
      default the client opens its own keep-alive pool of ``pool_size`` connections.

    Use ``async with ServiceClient(...) as client:`` or call ``aclose()``.
    """

    def __init__(
        self,
        service: str,
        *,
        discovery: Discovery | str,
        policy: Pipeline | Mapping[str, Any] | None = None,
        balancer: Balancer | None = None,
        outlier: OutlierDetector | bool = True,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        idempotency_keys: bool = True,
        start_traces: bool = True,
        pool_size: int = 100,
        keepalive_timeout: float = 30.0,
        dns_cache_ttl: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise ConfigError("service", service, "must be a non-empty service name")
        self.service = service
        self.timeout = validation.positive("timeout", timeout)
        self.connect_timeout = validation.positive("connect_timeout", connect_timeout)
        self.pool_size = validation.at_least("pool_size", pool_size, 1)
        self.keepalive_timeout = validation.positive("keepalive_timeout", keepalive_timeout)
        self.dns_cache_ttl = validation.positive("dns_cache_ttl", dns_cache_ttl)
        if isinstance(discovery, str):
            self.discovery = Discovery(discovery, clock=clock)
            self._owns_discovery = True
        elif isinstance(discovery, Discovery):
            self.discovery = discovery
            self._owns_discovery = False
        else:
            raise ConfigError("discovery", discovery, "must be a Discovery or a registry URL")
        if balancer is not None and not isinstance(balancer, Balancer):
            raise ConfigError("balancer", balancer, "must have pick(instances) -> Instance")
        self.balancer: Balancer = balancer if balancer is not None else RoundRobin()
        # Least-outstanding style balancers count calls in flight; decided once here.
        self._acquire = getattr(self.balancer, "acquire", None)
        self._release = getattr(self.balancer, "release", None)
        if outlier is True:
            self.outlier: OutlierDetector | None = OutlierDetector(clock=clock)
        elif outlier is False:
            self.outlier = None
        elif isinstance(outlier, OutlierDetector):
            self.outlier = outlier
        else:
            raise ConfigError("outlier", outlier, "must be an OutlierDetector, True or False")
        self._clock = clock
        self._plan: Plan = build_plan(policy, service=service, timeout=timeout, clock=clock)
        # A CIMultiDict, as aiohttp wants it: passed a dict, aiohttp copies it into one on
        # every request. Case-insensitive, so a caller's header replaces ours whatever its
        # spelling, and the retry decision sees a caller's idempotency-key.
        self._headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._idempotency_keys = idempotency_keys and self._plan.retries
        self._start_traces = start_traces
        self._guards: dict[str, _Guard] = {}
        self._session = session
        self._owns_session = session is None
        self._request_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        # Our own session carries the connect timeout; a shared one gets it per request.
        self._request: _Request | None = (
            None
            if session is None
            else functools.partial(session.request, timeout=self._request_timeout)
        )
        self._cached_instances = self.discovery.instances_nowait
        # The service chain wrapped around _attempt once, as decorators: a call then makes
        # no sync/async checks and allocates no chain (Polly's "decide at build time").
        self._run = self._plan.chain(self._attempt)
        self._run_once = self._plan.chain_without_retry(self._attempt)
        self._breaker_watchers: list[Callable[[CircuitBreaker], object]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"ServiceClient({self.service!r}, {self._plan.chain!r})"

    # -- what dashboards and tests look at ------------------------------------------------

    @property
    def service_breaker(self) -> CircuitBreaker | None:
        """The breaker guarding the whole service (``None`` if the policy has none)."""
        return self._plan.service_breaker

    @property
    def instance_breakers(self) -> dict[str, CircuitBreaker]:
        """Each called instance's own breaker, by instance id (a snapshot)."""
        return {i: g.breaker for i, g in self._guards.items() if g.breaker is not None}

    def watch_breakers(self, watcher: Callable[[CircuitBreaker], object]) -> Callable[[], None]:
        """Call ``watcher`` with each breaker of this client: the service breaker and the
        instance breakers there are now, then each instance breaker as it is created (on
        the first call to that instance) — e.g. ``client.watch_breakers(service.watch)``
        exports them all on ``/metrics`` from their first call. Returns the way to stop."""
        if not callable(watcher):
            raise ConfigError("watcher", watcher, "must be callable with a CircuitBreaker")
        self._breaker_watchers.append(watcher)
        if self._plan.service_breaker is not None:
            watcher(self._plan.service_breaker)
        for breaker in self.instance_breakers.values():
            watcher(breaker)

        def stop() -> None:
            if watcher in self._breaker_watchers:
                self._breaker_watchers.remove(watcher)

        return stop

    # -- the verbs ------------------------------------------------------------------------

    @overload
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = ...,
        headers: Mapping[str, str] | None = ...,
        json: Any = ...,
        data: bytes | None = ...,
        fallback: None = ...,
    ) -> Response: ...

    @overload
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = ...,
        headers: Mapping[str, str] | None = ...,
        json: Any = ...,
        data: bytes | None = ...,
        fallback: Fallback,
    ) -> Any: ...

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """Send ``method path`` to an instance of the service and read the whole answer.

        A 4xx/5xx raises ``HTTPStatusError`` (after any retries). With ``fallback``, its
        tiers are called with ``path`` when the call fails and their value is returned.
        """
        call = self._prepare(method.upper(), path, params, headers, json, data)
        run = self._chain_for(call)
        if fallback is None:
            return await run(call)

        async def primary(path: str) -> Response:
            return await run(call)

        return await fallback.call(primary, path)

    @overload
    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = ...,
        headers: Mapping[str, str] | None = ...,
        fallback: None = ...,
    ) -> Response: ...

    @overload
    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = ...,
        headers: Mapping[str, str] | None = ...,
        fallback: Fallback,
    ) -> Any: ...

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """``GET path``; with ``fallback``, a tier's value when the call fails."""
        if fallback is None:
            # The hot path: straight into the chain, one coroutine frame less than request().
            return await self._run(self._prepare("GET", path, params, headers, None, None))
        return await self.request("GET", path, params=params, headers=headers, fallback=fallback)

    async def post(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """``POST path`` (retried only with an ``Idempotency-Key``, given or generated)."""
        call = self._prepare("POST", path, None, headers, json, data)
        return await self._chain_for(call)(call)

    async def put(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """``PUT path``."""
        call = self._prepare("PUT", path, None, headers, json, data)
        return await self._chain_for(call)(call)

    async def patch(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """``PATCH path`` (retried only with an ``Idempotency-Key``, given or generated)."""
        call = self._prepare("PATCH", path, None, headers, json, data)
        return await self._chain_for(call)(call)

    async def delete(self, path: str, *, headers: Mapping[str, str] | None = None) -> Response:
        """``DELETE path``."""
        call = self._prepare("DELETE", path, None, headers, None, None)
        return await self._chain_for(call)(call)

    async def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """``GET path`` and decode the JSON body; fallback tiers return decoded values."""
        if fallback is None:
            response = await self._run(self._prepare("GET", path, params, headers, None, None))
            return response.json()

        async def primary(path: str) -> Any:
            response = await self.request("GET", path, params=params, headers=headers)
            return response.json()

        return await fallback.call(primary, path)

    async def post_json(
        self,
        path: str,
        json: Any,
        *,
        headers: Mapping[str, str] | None = None,
        fallback: Fallback | None = None,
    ) -> Any:
        """``POST path`` with a JSON body and decode the JSON answer (``None`` if empty)."""

        async def primary(path: str) -> Any:
            call = self._prepare("POST", path, None, headers, json, None)
            response = await self._chain_for(call)(call)
            return response.json() if response.body else None

        if fallback is None:
            return await primary(path)
        return await fallback.call(primary, path)

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool and the discovery client, if this client opened them."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._request = None
        if self._owns_discovery:
            await self.discovery.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- one call -------------------------------------------------------------------------

    def _prepare(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        json: Any,
        data: bytes | None,
    ) -> _Call:
        if self._closed:
            raise ClientClosedError(self.service)
        merged = self._headers.copy()
        if headers:
            merged.update(headers)
        if json is not None:
            if data is not None:
                raise ConfigError("json", json, "give either json or data, not both")
            data = msgspec.json.encode(json)
            merged.update(_JSON_HEADERS)
        if self._idempotency_keys and method in _KEYED_METHODS and IDEMPOTENCY_KEY not in merged:
            # Generated once per call, so every attempt carries the same key and the
            # upstream's idempotency store sees one operation.
            merged[IDEMPOTENCY_KEY] = str(uuid.uuid4())
        request_id = current_request_id.get()
        if request_id is not None:
            merged["X-Request-Id"] = request_id
        trace = current_trace.get()
        if trace is not None:
            if trace.tracestate:
                merged["tracestate"] = trace.tracestate
            head = f"00-{trace.trace_id}-"
            return _Call(method, path, params, merged, data, head, f"-{trace.flags}")
        if self._start_traces:
            return _Call(method, path, params, merged, data, f"00-{new_trace_id()}-", "-00")
        return _Call(method, path, params, merged, data, None, "")

    def _chain_for(self, call: _Call) -> Callable[[_Call], Awaitable[Response]]:
        """The service chain for ``call``: with retries only if repeating it is safe."""
        if call.method in SAFE_METHODS or IDEMPOTENCY_KEY in call.headers:
            return self._run
        return self._run_once

    async def _attempt(self, call: _Call) -> Response:
        instances = self._cached_instances(self.service)
        if instances is None:
            instances = await self.discovery.instances(self.service)
        if not instances:
            raise NoHealthyInstance(self.service)
        outlier = self.outlier
        candidates = instances if outlier is None else outlier.filter(instances)
        instance = self.balancer.pick(candidates)
        guard = self._guards.get(instance.id)
        if guard is None or guard.port != instance.port or guard.address != instance.address:
            guard = self._new_guard(instance)  # _guard_for, inlined on the hot path
        tried = call.tried
        last = call.last
        if last is not None:
            if tried is None:
                tried = call.tried = {last.id}
            else:
                tried.add(last.id)
        breaker = guard.breaker
        if len(candidates) > 1 and (
            (tried is not None and instance.id in tried)
            or (breaker is not None and breaker.state in _REJECTING)
        ):
            instance = self._next_usable(candidates, instance, tried)
            guard = self._guard_for(instance)
        call.last = instance
        trace_head = call.trace_head
        if trace_head is not None:
            # A fresh span id per outgoing attempt, under the caller's trace.
            call.headers["traceparent"] = f"{trace_head}{new_span_id()}{call.trace_tail}"
        acquire = self._acquire
        if acquire is not None:
            acquire(instance)
        try:
            response = await guard.send(call, instance, guard.base)
        except HTTPStatusError as exc:
            if outlier is not None:
                if exc.status >= 500:
                    outlier.record_failure(instance)
                else:
                    outlier.record_success(instance)
            raise
        except UpstreamConnectionError as exc:
            if outlier is not None:
                outlier.record_failure(instance, connection_refused=exc.refused)
            raise
        except CallTimeoutError:
            if outlier is not None:
                outlier.record_failure(instance)
            raise
        finally:
            release = self._release
            if release is not None:
                release(instance)
        if outlier is not None:
            outlier.record_success(instance)
        return response

    def _next_usable(
        self, candidates: Sequence[Instance], picked: Instance, tried: set[str] | None
    ) -> Instance:
        """The first instance after ``picked`` (cyclically) that this call has not tried and
        whose breaker admits calls; else the first that admits calls; else ``picked``.

        Walking the list, rather than asking the balancer again with a shorter list, keeps a
        round-robin's rotation over the full list intact.
        """
        count = len(candidates)
        start = next((i for i, c in enumerate(candidates) if c.id == picked.id), 0)
        admitting = None
        for step in range(1, count + 1):
            candidate = candidates[(start + step) % count]
            if self._rejecting(candidate):
                continue
            if tried is None or candidate.id not in tried:
                return candidate
            if admitting is None:
                admitting = candidate
        return admitting or picked

    def _rejecting(self, instance: Instance) -> bool:
        guard = self._guards.get(instance.id)
        return guard is not None and guard.breaker is not None and guard.breaker.state in _REJECTING

    def _guard_for(self, instance: Instance) -> _Guard:
        guard = self._guards.get(instance.id)
        if guard is None or guard.port != instance.port or guard.address != instance.address:
            # New, or re-registered at another address: a fresh guard and breaker.
            guard = self._new_guard(instance)
        return guard

    def _new_guard(self, instance: Instance) -> _Guard:
        plan = self._plan
        breaker = None
        if plan.instance_breaker is not None:
            name = f"{self.service}/{instance.id}"
            breaker = instance_breaker(plan.instance_breaker, name, self._clock)
            for watcher in self._breaker_watchers:
                watcher(breaker)
        stages: list[Any] = [breaker] if breaker is not None else []
        if plan.attempt_timeout is not None:
            stages.append(Timeout(plan.attempt_timeout, clock=self._clock))
        send: Sender = Pipeline(*stages)(self._send) if stages else self._send
        guard = _Guard(instance, breaker, send)
        self._guards[instance.id] = guard
        return guard

    async def _send(self, call: _Call, instance: Instance, base: str) -> Response:
        request = self._request
        if request is None:
            request = self._open_session()
        url = base + call.path
        method = call.method
        try:
            # Awaited rather than ``async with``: read() returns the connection to the pool
            # once the whole body is in (and closes it if reading fails), so the context
            # manager's exit (release, wait_for_close: six calls) would only repeat that.
            answer = await request(
                method, url, params=call.params, headers=call.headers, data=call.body
            )
            body = await answer.read()
        except aiohttp.ConnectionTimeoutError:
            raise ConnectTimeoutError(self.connect_timeout, base) from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            raise UpstreamConnectionError(method, url, str(exc), refused=refused) from exc
        except aiohttp.ClientError as exc:
            detail = str(exc) or type(exc).__name__
            raise UpstreamConnectionError(method, url, detail) from exc
        response = Response(
            answer.status, answer.headers, body, method=method, url=url, instance=instance
        )
        if answer.status >= 400:
            raise response.error(self._clock.now())
        return response

    def _open_session(self) -> _Request:
        # Opened on first use: aiohttp needs the running loop, which __init__ may not have.
        connector = aiohttp.TCPConnector(
            limit=self.pool_size,
            keepalive_timeout=self.keepalive_timeout,
            ttl_dns_cache=int(self.dns_cache_ttl),
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._request_timeout)
        self._request = self._session.request
        return self._request
