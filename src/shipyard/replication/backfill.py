"""Backfill a replica from the owner's HTTP API (paged JSON), never its database.

The owner serves ``GET {url}?after={cursor}&limit={n}`` answering
``{"items": [{"id": ..., "email": ..., "version": ...}, ...], "next": cursor-or-null}``
(key names configurable). Each page is written in one transaction with the same version
rule as events, so running a backfill while events flow (or twice) is safe: whichever of
the event or the page is newer wins.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from shipyard.core import validation
from shipyard.replication.errors import BackfillError
from shipyard.replication.replica import Replica


async def backfill(
    replica: Replica,
    url: str,
    *,
    page_size: int = 500,
    items_key: str = "items",
    next_key: str = "next",
    session: aiohttp.ClientSession | None = None,
    request_timeout: float = 10.0,
) -> int:
    """Copy every row the owner's API lists into ``replica``; returns rows written.

    Raises :class:`BackfillError` when a page cannot be fetched or has the wrong shape
    (pages written before it stay).
    """
    validation.at_least("page_size", page_size, 1)
    validation.positive("request_timeout", request_timeout)
    own = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout))
    written = 0
    cursor: Any = None
    try:
        while True:
            params: dict[str, str] = {"limit": str(page_size)}
            if cursor is not None:
                params["after"] = str(cursor)
            try:
                async with client.get(url, params=params) as response:
                    if response.status != 200:
                        raise BackfillError(url, f"HTTP {response.status}")
                    page = await response.json()
            except aiohttp.ClientError as error:
                raise BackfillError(url, repr(error)) from error
            items = page.get(items_key) if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise BackfillError(url, f"the page has no {items_key!r} list")
            try:
                written += await replica.upsert_rows(items)
            except (KeyError, TypeError, ValueError) as error:
                raise BackfillError(url, f"a row lacks a field: {error!r}") from error
            cursor = page.get(next_key)
            if cursor is None or not items:
                return written
    finally:
        if own:
            await client.close()
