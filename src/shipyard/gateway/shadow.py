"""Shadow traffic: copy a share of a route's requests to the new service and compare.

The copy is sent after the client's response is ready, in a task the client never waits
for; its answer is compared with the legacy one (status, and the JSON body minus the
configured ignored fields) and a difference is logged as one structured line and counted.
Equal answers are counted, not logged. Only safe methods are copied by default, since a
copied POST would do its work twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import msgspec

from shipyard.core.logging import get_logger
from shipyard.gateway.config import ShadowConfig
from shipyard.gateway.errors import UpstreamError
from shipyard.gateway.filters import Exchange, Reply
from shipyard.gateway.proxy import Proxy

_log = get_logger("shipyard.gateway.shadow")
_MAX_DIFFERENCES = 20
_MISSING = object()


def _drop(value: Any, path: list[str]) -> None:
    """Remove the dotted ``path`` from ``value`` (in every item of a list)."""
    if isinstance(value, list):
        for item in value:
            _drop(item, path)
    elif isinstance(value, dict) and path:
        if len(path) == 1:
            value.pop(path[0], None)
        elif path[0] in value:
            _drop(value[path[0]], path[1:])


def differences(legacy: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (at most 20)."""
    found: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(found) >= _MAX_DIFFERENCES:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key, _MISSING), b.get(key, _MISSING), f"{where}.{key}" if where else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{index}]")
        elif a != b or type(a) is not type(b):
            found.append(where or "<body>")

    walk(legacy, new, prefix)
    return found


class Shadow:
    """Mirrors requests of one strangler route to its ``new`` service."""

    def __init__(
        self,
        config: ShadowConfig,
        target: Proxy,
        *,
        route: str,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._target = target
        self._route = route
        self._rng = rng
        self._methods = frozenset(m.encode() for m in config.methods)
        self._ignore = [field.split(".") for field in config.ignore]
        self._timeout = config.timeout or target.timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.matches = 0
        self.diffs = 0
        self.errors = 0

    def wants(self, ex: Exchange) -> bool:
        """Whether to copy this request (method allowed, and within the share)."""
        return ex.method in self._methods and self._rng() < self.config.share

    def mirror(self, ex: Exchange, legacy: Reply) -> None:
        """Send the copy in the background and compare with ``legacy`` (complete)."""
        self.sent += 1
        build = self._target.build(ex, b"x-shadow-request: 1\r\n")
        task = asyncio.get_running_loop().create_task(
            self._compare(build, legacy.status, legacy.body, ex.method, ex.path)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self,
        build: Callable[[bytes], bytes],
        legacy_status: int,
        legacy_body: bytes,
        method: bytes,
        path: bytes,
    ) -> None:
        try:
            status, _, body = await self._target.upstream.fetch(
                build, self._timeout, head_only=method == b"HEAD"
            )
        except (UpstreamError, TimeoutError, ConnectionError) as exc:
            self.errors += 1
            _log.info("shadow request failed", route=self._route, error=str(exc))
            return
        found = []
        if status != legacy_status:
            found.append("<status>")
        found += self._body_differences(legacy_body, body)
        if not found:
            self.matches += 1
            return
        self.diffs += 1
        _log.warning(
            "shadow response differs",
            route=self._route,
            method=method.decode("latin-1"),
            path=path.decode("latin-1"),
            legacy_status=legacy_status,
            new_status=status,
            differences=found,
        )

    def _body_differences(self, legacy: bytes, new: bytes) -> list[str]:
        try:
            a, b = msgspec.json.decode(legacy), msgspec.json.decode(new)
        except msgspec.DecodeError:
            return [] if legacy == new else ["<body>"]
        for path in self._ignore:
            _drop(a, path)
            _drop(b, path)
        return differences(a, b)

    def cancel(self) -> None:
        """Abandon copies still in flight (on shutdown)."""
        for task in list(self._tasks):
            task.cancel()

    async def drain(self) -> None:
        """Wait for copies still in flight (on shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
