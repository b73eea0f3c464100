"""Aggregation routes: fan out to several backends, merge their JSON into one response.

KrakenD-style: backends run in parallel (or in sequence, each path able to use fields of
an earlier answer: ``/users/{order.user_id}``), each with its own timeout, and the whole
route waits at most its ``budget``. A backend that fails, answers non-2xx or non-JSON, or
runs out of time yields its fallback (a static value, its last good value, or nothing)
and the response names it in ``X-Partial-Response`` instead of failing the whole page.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from shipyard.core.logging import get_logger
from shipyard.gateway.config import AggregateConfig, BackendConfig
from shipyard.gateway.filters import Exchange, Header, Reply, local_reply
from shipyard.gateway.proxy import Upstream
from shipyard.resilience.errors import CircuitOpenError

_log = get_logger("shipyard.gateway.aggregate")
_REFERENCE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\}")
_JSON: Header = (b"content-type", b"application/json")
_FORWARDED = (b"authorization", b"accept-language", b"traceparent", b"tracestate")


class BackendFailed(Exception):
    """A backend gave nothing usable (the reason is for logs and tests)."""


def _lookup(context: Mapping[str, Any], name: str, dotted: str) -> Any:
    value: Any = context[name]
    for part in dotted.split(".")[1:]:
        if isinstance(value, dict):
            value = value[part]
        elif isinstance(value, list):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def render(template: str, params: Mapping[str, str], context: Mapping[str, Any]) -> str:
    """Fill ``{param}`` from the route and ``{backend.field}`` from earlier answers.

    Values are percent-encoded, so a field can never add a path segment or a query key.
    A missing value raises ``BackendFailed``."""

    def fill(match: re.Match[str]) -> str:
        name, dotted = match.group(1), match.group(2)
        try:
            value = _lookup(context, name, dotted) if dotted else params[name]
        except (KeyError, IndexError, ValueError) as exc:
            raise BackendFailed(f"no value for {match.group(0)}") from exc
        if isinstance(value, dict | list) or value is None:
            raise BackendFailed(f"{match.group(0)} is not a scalar")
        if isinstance(value, bool):
            value = str(value).lower()
        return quote(str(value), safe="")

    return _REFERENCE.sub(fill, template)


def shape(value: Any, backend: BackendConfig) -> Any:
    """Apply the backend's ``select`` and ``rename`` (to an object, or each of a list)."""
    if isinstance(value, list):
        return [shape(item, backend) for item in value]
    if not isinstance(value, dict):
        return value
    if backend.select is not None:
        value = {k: value[k] for k in backend.select if k in value}
    if backend.rename:
        renames = dict(backend.rename)
        value = {renames.get(k, k): v for k, v in value.items()}
    return value


class _Backend:
    __slots__ = ("config", "fetch", "last_good", "method", "timeout", "upstream")

    def __init__(self, config: BackendConfig, upstream: Upstream) -> None:
        self.config = config
        self.upstream = upstream
        self.method = config.method.encode()
        self.timeout = config.timeout or upstream.config.timeout
        # Through the service's breaker: a dead backend stops costing its timeout.
        self.fetch = upstream.breaker(upstream.fetch)
        self.last_good: Any = None


class Aggregator:
    """The router of an aggregation route (a ``Handler``)."""

    def __init__(self, config: AggregateConfig, upstreams: Mapping[str, Upstream]) -> None:
        self.config = config
        self._backends = tuple(_Backend(b, upstreams[b.service]) for b in config.backends)
        self._decode = msgspec.json.decode
        self._encode = msgspec.json.Encoder().encode
        self.partials = 0
        """Responses that carried a fallback (exported as a metric)."""

    def _request(self, backend: _Backend, ex: Exchange, target: bytes) -> bytes:
        parts = [backend.method, b" ", target, b" HTTP/1.1\r\n"]
        # Host is filled in per instance by Upstream.fetch; only safe headers go along.
        for name in _FORWARDED:
            value = ex.header_map.get(name)
            if value is not None:
                parts += (name, b": ", value, b"\r\n")
        for name, value in ex.upstream_headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"accept: application/json\r\nx-request-id: ", ex.request_id, b"\r\n")
        body = ex.body if backend.method in (b"POST", b"PUT") else b""
        if backend.method in (b"POST", b"PUT"):
            parts += (b"content-length: ", b"%d" % len(body), b"\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)

    async def _call(
        self, backend: _Backend, ex: Exchange, context: Mapping[str, Any], within: float
    ) -> Any:
        target = render(backend.config.path, ex.params, context).encode()
        head, _, rest = self._request(backend, ex, target).partition(b"\r\n")
        try:
            status, _, body = await backend.fetch(
                lambda host_line: head + b"\r\n" + host_line + rest,
                min(backend.timeout, within),
                head_only=backend.method == b"HEAD",
            )
        except (ConnectionError, TimeoutError, CircuitOpenError) as exc:
            raise BackendFailed(str(exc)) from exc
        if not 200 <= status < 300:
            raise BackendFailed(f"status {status}")
        try:
            return self._decode(body) if body else None
        except msgspec.DecodeError as exc:
            raise BackendFailed("not JSON") from exc

    async def _parallel(self, ex: Exchange) -> dict[str, Any]:
        budget = self.config.budget
        tasks = {
            b.config.name: asyncio.ensure_future(self._call(b, ex, {}, budget))
            for b in self._backends
        }
        _, pending = await asyncio.wait(tasks.values(), timeout=budget)
        for task in pending:
            task.cancel()
        results: dict[str, Any] = {}
        for name, task in tasks.items():
            if task in pending or task.cancelled():
                continue
            error = task.exception()
            if error is None:
                results[name] = task.result()
            elif not isinstance(error, BackendFailed):
                _log.error("aggregation backend crashed", backend=name, error=repr(error))
        return results

    async def _sequence(self, ex: Exchange) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.budget
        results: dict[str, Any] = {}
        for backend in self._backends:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                results[backend.config.name] = await asyncio.wait_for(
                    self._call(backend, ex, results, remaining), remaining
                )
            except (BackendFailed, TimeoutError):
                continue  # later backends that need this one fail on their own
        return results

    async def __call__(self, ex: Exchange) -> Reply:
        ex.service = "aggregate"
        results = await (self._sequence(ex) if self.config.sequential else self._parallel(ex))
        merged: dict[str, Any] = {}
        failed: list[str] = []
        for backend in self._backends:
            config = backend.config
            if config.name in results:
                value = shape(results[config.name], config)
                backend.last_good = value
            else:
                failed.append(config.name)
                if config.fallback == "value":
                    value = config.fallback_value
                elif config.fallback == "cached" and backend.last_good is not None:
                    value = backend.last_good
                else:
                    continue
            if config.flatten and isinstance(value, dict):
                merged.update(value)
            else:
                merged[config.key or config.name] = value
        if len(failed) == len(self._backends) and not merged:
            return local_reply(
                502,
                "every backend of this aggregation failed",
                [(b"x-partial-response", ",".join(failed).encode())],
            )
        headers = [_JSON]
        if failed:
            self.partials += 1
            headers.append((b"x-partial-response", ",".join(failed).encode()))
        return Reply(200, headers, self._encode(merged))
