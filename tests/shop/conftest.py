"""Fixtures for the shop's end-to-end tests: a whole shop in real processes, on free
ports, in a temporary folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from examples.shop.supervisor import Supervisor

from tests.shop.driver import ShopDriver


def start_shop(folder: Path, **options: object) -> Supervisor:
    """A supervisor for a shop under ``folder`` on free ports (not started)."""
    return Supervisor(
        folder / "var",
        registry_port=0,
        gateway_port=0,
        base_port=None,
        start_timeout=60.0,
        **options,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Supervisor]:
    """A running shop shared by the tests of one module."""
    supervisor = start_shop(tmp_path_factory.mktemp("shop"))
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def driver(shop: Supervisor) -> AsyncIterator[ShopDriver]:
    """A driver over the module's shop."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield ShopDriver(shop, http)
