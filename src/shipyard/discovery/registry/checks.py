"""The check runner: probes HTTP and TCP checks at their interval and reports to the catalog.

HTTP: a 2xx answer is passing, 429 is warning, anything else (or no answer within the
check's timeout) is critical. TCP: a connection accepted within the timeout is passing,
otherwise critical. TTL and attach checks need no probing; the catalog times them.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from shipyard.core import SYSTEM_CLOCK, Clock, get_logger
from shipyard.discovery.registry.catalog import (
    Catalog,
    CatalogChanged,
    CheckDefinition,
    CheckKind,
    Status,
    UnknownCheckError,
)

_log = get_logger("shipyard.discovery.registry")

_OUTPUT_LIMIT = 4096
"""Bytes of a probe's response body kept as the check's output (Consul keeps 4 KiB)."""


async def probe_http(
    session: aiohttp.ClientSession, definition: CheckDefinition
) -> tuple[Status, str]:
    """Run one HTTP check: the status and a Consul-like output line."""
    what = f"HTTP {definition.method} {definition.target}"
    try:
        async with asyncio.timeout(definition.timeout):
            async with session.request(
                definition.method,
                definition.target,
                headers=list(definition.headers),
                allow_redirects=True,
            ) as response:
                body = await response.content.read(_OUTPUT_LIMIT)
    except TimeoutError:
        return Status.CRITICAL, f"{what}: timed out after {definition.timeout:g}s"
    except (aiohttp.ClientError, OSError, ValueError) as error:
        return Status.CRITICAL, f"{what}: {type(error).__name__}: {error}"
    output = f"{what}: {response.status} {response.reason} Output: {body.decode(errors='replace')}"
    if 200 <= response.status < 300:
        return Status.PASSING, output
    if response.status == 429:
        return Status.WARNING, output
    return Status.CRITICAL, output


async def probe_tcp(definition: CheckDefinition) -> tuple[Status, str]:
    """Run one TCP check: connect and close."""
    host, _, port = definition.target.rpartition(":")
    host = host.strip("[]")
    try:
        async with asyncio.timeout(definition.timeout):
            _, writer = await asyncio.open_connection(host, int(port))
    except TimeoutError:
        return Status.CRITICAL, f"TCP connect {definition.target}: timed out"
    except OSError as error:
        return Status.CRITICAL, f"TCP connect {definition.target}: {error}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Status.PASSING, f"TCP connect {definition.target}: Success"


class CheckRunner:
    """Keeps one probing task per HTTP/TCP check in the catalog, following its changes."""

    def __init__(self, catalog: Catalog, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._catalog = catalog
        self._clock = clock
        self._tasks: dict[str, tuple[CheckDefinition, asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._unsubscribe: object = None

    async def start(self) -> None:
        """Start probing every HTTP/TCP check, now and as checks come and go."""
        # No keep-alive: a probe must open a fresh connection, as a real client would.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            headers={"User-Agent": "shipyard-registry health check"},
        )
        self._unsubscribe = self._catalog.events.subscribe(self._on_change)
        self._sync()

    async def stop(self) -> None:
        """Stop every probe."""
        if callable(self._unsubscribe):
            self._unsubscribe()
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _on_change(self, event: CatalogChanged) -> None:
        self._sync()

    def _sync(self) -> None:
        wanted = {
            c.definition.check_id: c.definition
            for c in self._catalog.checks()
            if c.definition.kind in (CheckKind.HTTP, CheckKind.TCP)
        }
        for check_id, (definition, task) in list(self._tasks.items()):
            # A re-registration with a changed definition restarts the probe.
            if wanted.get(check_id) != definition:
                task.cancel()
                del self._tasks[check_id]
        for check_id, definition in wanted.items():
            if check_id not in self._tasks:
                task = asyncio.create_task(self._probe_loop(definition), name=f"check {check_id}")
                self._tasks[check_id] = (definition, task)

    async def _probe_loop(self, definition: CheckDefinition) -> None:
        while True:
            status, output = await self._probe(definition)
            try:
                state = self._catalog.check(definition.check_id)
            except UnknownCheckError:
                return
            if state.definition is not definition:
                return
            # Like Consul's check_update_interval: output that changes on every probe
            # (timestamps, counters) must not wake every watcher at every interval, so a
            # steady status keeps its first output.
            if state.status is not status or not state.output:
                self._catalog.set_check_status(definition.check_id, status, output)
            await self._clock.sleep(definition.interval)

    async def _probe(self, definition: CheckDefinition) -> tuple[Status, str]:
        if definition.kind is CheckKind.HTTP:
            assert self._session is not None, "CheckRunner.start() was not awaited"
            return await probe_http(self._session, definition)
        return await probe_tcp(definition)
