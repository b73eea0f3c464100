"""Following the registry the way a client does: with blocking queries, never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import consul

Entries = list[dict[str, Any]]


async def watch_health(
    client: consul.Consul,
    name: str,
    until: Callable[[Entries], bool],
    *,
    passing: bool = False,
    limit: float = 20.0,
) -> Entries:
    """Follow ``/v1/health/service/{name}`` with blocking queries until ``until(entries)``.

    ``limit`` only guards against a hung test; it is not an assertion about speed.
    """

    def query(index: str | None) -> tuple[str, Entries]:
        result: tuple[str, Entries] = client.health.service(
            name, index=index, wait="5s", passing=passing
        )
        return result

    async with asyncio.timeout(limit):
        index, entries = await asyncio.to_thread(query, None)
        while not until(entries):
            index, entries = await asyncio.to_thread(query, index)
        return entries


def check_status(entries: Entries, check_id: str) -> str | None:
    """The status of ``check_id`` among health entries (``None`` when absent)."""
    for entry in entries:
        for check in entry["Checks"]:
            if check["CheckID"] == check_id:
                status: str = check["Status"]
                return status
    return None
